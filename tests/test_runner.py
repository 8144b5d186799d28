"""The runner: a failing cell stops the run, exits non-zero, names the cell, and still renders its HTML."""
import json

from distill.core import params, paths
from distill.pipeline import dvc, runner, stage
from distill.report import render
from distill.study import layout


def test_failing_cell_is_reported_and_rendered(tmp_path, monkeypatch, capsys):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    (nb_dir / "00_teacher.py").write_text(
        '# %% tags=["parameters"]\nrun_name: str = "x"  # the run\n\n# %%\nprint("first cell ran")\n\n'
        '# %%\nraise ValueError("deliberate failure for the test")\n')
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    p = params.from_mapping({"run_name": "failing", "output_dir": str(tmp_path / "artifacts")})
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    spec = dvc.Stage("teacher", ["teacher"], [], notebook="00_teacher", report="00_teacher", title="t")
    code = stage.run_notebook_stage(p, spec)
    assert code == 1
    report = tmp_path / "reports" / "failing"
    html = (report / "00_teacher.html").read_text()
    assert "deliberate failure for the test" in html and "first cell ran" in html
    printed = capsys.readouterr().out
    assert any(line.startswith("FAILED: notebook 00_teacher") and "ValueError" in line and "cell" in line
               for line in printed.splitlines())
    record = json.loads(runner.record_file(p, "00_teacher").read_text())
    assert record["status"] == "failed" and "deliberate failure" in record["failure"]
    assert "x" * 34 not in html


def test_a_dead_kernel_ends_with_the_failed_line_and_a_failed_record(tmp_path, monkeypatch, capsys):
    """An out-of-memory kill of the kernel (SIGKILL) mid-notebook: the usual FAILED line, never a traceback or "ok"."""
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    (nb_dir / "01_distill.py").write_text(
        '# %% tags=["parameters"]\nrun_name: str = "x"  # the run\n\n# %%\nprint("training")\n\n'
        '# %%\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n\n# %%\nprint("never")\n')
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    p = params.from_mapping({"run_name": "killed", "output_dir": str(tmp_path / "artifacts")})
    record = runner.record_file(p, "01_distill")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"status": "ok"}))  # an earlier run's record
    spec = dvc.Stage("train-distilled", ["train"], [], notebook="01_distill", report="01_distill", title="t")
    assert stage.run_notebook_stage(p, spec) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAILED: notebook 01_distill")]
    assert failed and "kernel died" in failed[0] and "run the same command again" in failed[0], failed
    assert json.loads(record.read_text())["status"] == "failed"
    executed = p.run_dir / "executed"
    assert (executed / "01_distill.ipynb").exists() and not list(executed.glob(".*.partial.ipynb"))


def test_index_says_the_run_failed_and_names_the_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "y" * 34)
    p = params.from_mapping({"run_name": "failing"})
    manifest = {"run_name": "failing", "status": "failed", "start": "s", "end": "e", "wall_s": 1.0,
                "git": {"commit": "abc", "dirty": False}, "failure": "notebook 01 failed, token hf_" + "y" * 34,
                "steps": [{"name": "00_teacher", "title": "t", "status": "ok", "wall_s": 2.0},
                          {"name": "01_distill", "title": "d", "status": "failed", "wall_s": 1.0}]}
    index = runner.write_index(p, manifest).read_text()
    assert "Status: <b>failed</b>" in index and "y" * 34 not in index
    assert json.loads((tmp_path / "reports" / "failing" / "manifest.json").read_text())["status"] == "failed"


def test_index_says_what_the_profile_of_its_name_can_and_cannot_show(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(paths, "PARAMS_DIR", tmp_path / "params")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "big_vocab.yaml").write_text(
        "# A profile with a 262k-word teacher.\n# What it does not show: a small student.\n# Run: make x\n"
        "# Results: reports/big_vocab/index.html\nseed: 0  # not a description\n# later comment\n")
    manifest = {"run_name": "big_vocab", "status": "ok", "start": "s", "end": "e", "wall_s": 1.0,
                "git": {"commit": "abc", "dirty": False}, "steps": []}
    index = runner.write_index(params.from_mapping({"run_name": "big_vocab"}), manifest).read_text()
    about = index[index.index("<section id='about'>"):]
    about = about[:about.index("</section>")]
    assert "A profile with a 262k-word teacher. What it does not show: a small student." in about
    assert "make x" not in about and "later comment" not in about and "not a description" not in about
    other = runner.write_index(params.from_mapping({"run_name": "renamed"}), {**manifest, "run_name": "renamed"})
    assert "id='about'" not in other.read_text()  # no profile of that name: no claim about it
    # a grid run without a benchmark opens with its grid's headline
    folder = tmp_path / "reports" / "renamed"
    (folder / "signal.json").write_text(json.dumps({"headline": ["20 layers: combined scores highest."]}))
    page = runner.write_index(params.from_mapping({"run_name": "renamed"}), {**manifest, "run_name": "renamed"}).read_text()
    summary = page[page.index("<section id='summary'>"):]
    assert "20 layers: combined scores highest." in summary[:summary.index("</section>")]


def test_secrets_are_redacted(monkeypatch):
    token = "hf_" + "A1b2" * 9
    monkeypatch.setenv("HF_TOKEN", token)
    assert token not in render.redact(f"token={token} and {token[:10]}")
    assert "***redacted***" in render.redact(f"token={token}")


def test_manifest_bits():
    versions = runner.package_versions()
    assert versions["torch"] != "not installed" and versions["papermill"] != "not installed"
    commit = runner.git_commit()["commit"]
    assert len(commit) == 40 and int(commit, 16) >= 0, commit  # a real hash, not the "unknown" fallback
    assert runner.device_info()["cpu_cores"] >= 1


def test_the_manifest_calls_a_checkout_dirty_for_changed_code_not_for_what_runs_write(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("lib/distill/x.py", "reports/run/index.html", "pipelines/run/dvc.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    (tmp_path / "reports/run/index.html").write_text("b")  # a run's own outputs
    (tmp_path / "pipelines/run/dvc.lock").write_text("b")
    (tmp_path / "notes.txt").write_text("untracked")
    assert runner.git_commit()["dirty"] is False
    (tmp_path / "lib/distill/x.py").write_text("b")
    assert runner.git_commit()["dirty"] is True


def test_notebook_stages_cover_both_students(monkeypatch):
    monkeypatch.setattr(paths, "ARTIFACTS_DIR", paths.PROJECT_ROOT / "artifacts")  # DVC tracks only the project
    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")
    pages = {s.name: s.report for s in dvc.run_pages(params.StudyParams(capacity_keep=[2], student="prune",
                                                                        prune_keep=2))}
    assert pages == {"teacher": "00_teacher", "train-distilled": "01_distill", "train-ce_baseline": "01_distill_ce_baseline",
                     "merge": "02_merge", "report": "03_benchmark", "capacity-report": "04_capacity"}
    baseline = dvc.stage_params(params.StudyParams(), "train-ce_baseline")
    assert baseline.variant == "ce_baseline" and not baseline.uses_teacher
    assert dvc.stage_params(params.StudyParams(), "train-distilled").uses_teacher


def test_a_run_under_way_says_running_not_an_earlier_ok(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    p = params.from_mapping({"run_name": "underway"})
    manifest = {"run_name": "underway", "status": "running", "start": "s", "end": None, "wall_s": None,
                "git": {"commit": "abc", "dirty": False}, "failure": "under way since s (process 1 on h)",
                "steps": [{"name": "00_teacher", "title": "t", "status": "running", "wall_s": None}]}
    index = runner.write_index(p, manifest).read_text()
    assert "Status: <b>running</b>: under way since s" in index and "Ended" not in index


def test_ctrl_c_leaves_a_manifest_that_says_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(paths, "ARTIFACTS_DIR", tmp_path / "artifacts")
    monkeypatch.setattr(layout, "PIPELINES_DIR", tmp_path / "pipelines")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("")
    p = params.from_mapping({"run_name": "ctrl_c_test_run"})
    seen = []

    def interrupted(*args, **kwargs):
        seen.append(json.loads((p.report_dir / "manifest.json").read_text())["status"])
        raise KeyboardInterrupt
    monkeypatch.setattr(dvc, "dvc", interrupted)
    assert runner.run_study(p, log=lambda *a: None) == 130
    assert seen == ["running"]  # said from the start, before DVC ran anything
    manifest = json.loads((p.report_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "interrupted (Ctrl-C)" in manifest["failure"]
    assert manifest["machine"]["cpu_model"]
    assert "Status: <b>failed</b>: interrupted" in (p.report_dir / "index.html").read_text()


def test_kernel_socket_folders_of_killed_stages_are_removed_at_the_next_stage(tmp_path):
    import os
    import subprocess
    import time

    from distill.pipeline import runner

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftovers = [tmp_path / f"{runner.KERNEL_PREFIX}{dead.pid}-abc", tmp_path / f"{runner.KERNEL_PREFIX}old"]
    mine = tmp_path / f"{runner.KERNEL_PREFIX}{os.getpid()}-def"
    recent_old = tmp_path / f"{runner.KERNEL_PREFIX}recent"
    for folder in (*leftovers, mine, recent_old):
        (folder / "kernel-1").mkdir(parents=True)
    day_ago = time.time() - 2 * 86400
    os.utime(leftovers[1], (day_ago, day_ago))
    assert sorted(runner.clean_kernel_leftovers(tmp_path)) == sorted(leftovers)
    assert mine.exists() and recent_old.exists() and not any(f.exists() for f in leftovers)
