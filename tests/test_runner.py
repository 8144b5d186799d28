"""The runner: a failing cell stops the run, exits non-zero, names the cell, and still renders its HTML."""
import json

from distill import params, paths, pipeline, runner, stage


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
    spec = pipeline.Stage("teacher", ["teacher"], [], notebook="00_teacher", title="t")
    code = stage.run_notebook_stage(p, spec, "00_teacher")
    assert code == 1
    report = tmp_path / "reports" / "failing"
    html = (report / "00_teacher.html").read_text()
    assert "deliberate failure for the test" in html and "first cell ran" in html
    printed = capsys.readouterr().out
    assert any(line.startswith("FAILED: notebook 00_teacher") and "ValueError" in line and "cell" in line
               for line in printed.splitlines())
    record = json.loads(stage.record_file(p, "00_teacher").read_text())
    assert record["status"] == "failed" and "deliberate failure" in record["failure"]
    assert "x" * 34 not in html


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


def test_secrets_are_redacted(monkeypatch):
    token = "hf_" + "A1b2" * 9
    monkeypatch.setenv("HF_TOKEN", token)
    assert token not in runner.redact(f"token={token} and {token[:10]}")
    assert "***redacted***" in runner.redact(f"token={token}")


def test_manifest_bits():
    versions = runner.package_versions()
    assert versions["torch"] != "not installed" and versions["papermill"] != "not installed"
    commit = runner.git_commit()["commit"]
    assert len(commit) == 40 and int(commit, 16) >= 0, commit  # a real hash, not the "unknown" fallback
    assert runner.device_info()["cpu_cores"] >= 1


def test_notebook_stages_cover_both_students():
    assert list(stage.NOTEBOOK_REPORTS) == ["teacher", "train-distilled", "train-ce_baseline", "merge", "report",
                                           "capacity-report"]
    baseline = pipeline.stage_params(params.StudyParams(), "train-ce_baseline")
    assert baseline.variant == "ce_baseline" and not baseline.uses_teacher
    assert pipeline.stage_params(params.StudyParams(), "train-distilled").uses_teacher
