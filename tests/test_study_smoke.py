"""End to end: the smoke profile through the DVC pipeline, as `make smoke` runs it, in a fresh copy of the project.

The study, a seed sweep of it and a capacity grid are built once per test run (conftest's `smoke_build`, shared by
pytest-xdist's workers); the tests that read them share them, and every test that runs something (kills, a cache, two
processes, a sweep's next call) works on a snapshot, so it re-runs only the stages its claim needs."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml
from conftest import SMOKE_SWEEP, project_env, run_in_project
from transformers import AutoModelForCausalLM

from distill.report import results
from distill.study import training

pytestmark = pytest.mark.slow
RUN = re.compile(r"^Running stage 'pipelines/[^/]+/dvc.yaml:([\w-]+)'", re.M)


@pytest.fixture(scope="module")
def smoke_run(smoke_build):
    return smoke_build.result, smoke_build


def test_runner_succeeds(smoke_run):
    res, _ = smoke_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = RUN.findall(res.stdout)
    assert ran[0] == "teacher" and ran[-1] == "report" and len(ran) == 13


def test_reports_exist_with_embedded_charts_and_no_errors(smoke_run):
    _, p = smoke_run
    index = (p.report_dir / "index.html").read_text()
    for name in ("00_teacher", "01_distill", "01_distill_ce_baseline", "02_merge", "03_benchmark"):
        assert f'href="{name}.html"' in index
        page = (p.report_dir / f"{name}.html").read_text()
        assert re.search(r'<img[^>]+src="data:image/png;base64,', page), f"{name}.html embeds no chart"
        assert "Traceback" not in page, f"{name}.html shows an error"
        executed = nbformat.read(p.run_dir / "executed" / f"{name}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, f"{name}: {errors[:1]}"
    manifest = json.loads((p.report_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["params"]["run_name"] == "smoke"
    assert {"torch", "transformers", "peft"} <= set(manifest["packages"]) and manifest["git"]["commit"]
    assert all(s["wall_s"] > 0 and s["status"] == "ok" for s in manifest["steps"])
    assert len(manifest["steps"]) == 5


def test_training_logged_every_component(smoke_run):
    _, p = smoke_run
    history = json.loads((p.report_dir / "log_history_distilled.json").read_text())
    train = [e for e in history if "loss" in e]
    evals = [e for e in history if "eval_loss" in e]
    assert train and evals
    for key in ("train_ce", "train_kd", "train_hidden", "train_total"):
        assert all(key in e for e in train), key
    for key in ("eval_ce", "eval_kd", "eval_hidden", "eval_total"):
        assert all(key in e for e in evals), key
    baseline = json.loads((p.report_dir / "log_history_ce_baseline.json").read_text())
    assert all("train_kd" not in e for e in baseline)  # no teacher term, no teacher forward
    assert (p.run_dir / "students" / "distilled" / "best" / "hidden_projection.safetensors").exists()


def test_deploy_folder_loads_alone(smoke_run):
    _, p = smoke_run
    model = AutoModelForCausalLM.from_pretrained(p.run_dir / "deploy")
    assert not any("lora" in n for n, _ in model.named_parameters())
    merge = json.loads((p.report_dir / "merge.json").read_text())
    assert all(m["max_abs_logit_diff"] <= m["tolerance"] for m in merge)


def test_results_hold_all_four_models(smoke_run):
    _, p = smoke_run
    data = json.loads((p.report_dir / "results.json").read_text())
    assert list(data["models"]) == [results.TEACHER, results.BEFORE, results.BASELINE, results.DISTILLED]
    for name, row in data["models"].items():
        for col, _, _ in results.METRICS:
            assert isinstance(row[col], (int, float)), (name, col)
        assert row["peak_memory_mb"] > row["runtime_rss_mb"] * 0.5
    assert data["models"][results.TEACHER]["disk_kind"] == "4-bit quantised footprint"
    text = (p.report_dir / "results.txt").read_text()
    assert "SQuAD F1" in text and "distilled vs teacher" in text
    assert (p.report_dir / "results.csv").read_text().startswith("model,")


def test_terminal_streams_progress_without_kernel_noise(smoke_run):
    res, _ = smoke_run
    printed = res.stdout + res.stderr
    assert re.search(r"^\[smoke distilled\] step \d+/4 \(\d+%\): loss \d+\.\d+, \d+:\d\d elapsed, ~\d+:\d\d left$",
                     printed, re.M), printed[-3000:]
    assert re.search(r"^\[smoke ce_baseline\] step 4/4: eval loss", printed, re.M)
    assert re.search(r"^\[smoke score teacher\] generated batch 2/2", printed, re.M)
    assert "without encryption" not in printed and "Executing:" not in printed and "{'loss':" not in printed


def test_predictions_are_official_squad_files_for_the_scored_ids(smoke_run):
    _, p = smoke_run
    data = json.loads((p.report_dir / "results.json").read_text())
    ids = data["meta"]["question_ids"]
    assert len(ids) == data["models"][results.TEACHER]["n_examples"] == len(set(ids))
    for key, name in results.MODEL_KEYS.items():
        predictions = json.loads((p.report_dir / f"predictions_{name}.json").read_text())
        assert list(predictions) == ids == data["models"][key]["question_ids"]
        assert list(predictions.values()) == data["models"][key]["predictions"]


def test_reports_read_right_in_a_real_browser(smoke_run):
    """Headless Chromium at 1280 px: the summary on the first screen, every chart loads, nothing too wide, and the
    page asks the network for nothing."""
    from browser import inspect_page

    _, p = smoke_run
    for name in ("index", "03_benchmark"):
        facts = inspect_page(p.report_dir / f"{name}.html", width=1280, height=800)
        summary = facts["element_tops"]["summary"]
        assert summary["top"] < 800 and "distilled student is" in summary["text"], (name, summary)
        assert "distilled student is" in facts["first_screen_text"], name
        assert facts["images"] and not facts["broken_images"], (name, facts["broken_images"])
        assert not facts["too_wide"], (name, facts["too_wide"][:5])
        assert facts["requests"] == [], (name, facts["requests"])


def _ran(project, *args):
    res = run_in_project(project, "run", "params/smoke.yaml", *args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return set(RUN.findall(res.stdout))


def _dvc(project, *args):
    exe = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([exe, *args], cwd=project, env=project_env(project), capture_output=True, text=True)


def _lock(project, run="smoke"):
    return yaml.safe_load((project / "pipelines" / run / "dvc.lock").read_text())["stages"]


def test_an_unchanged_study_reruns_nothing_and_dvc_status_is_clean(smoke_run, tmp_path):
    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")  # the build itself stays as made: other workers copy it meanwhile
    assert _ran(project) == set()
    status = _dvc(project, "status", "pipelines/smoke/dvc.yaml")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    lock = _lock(project)
    assert len([s for s in lock if not s.startswith("sweep-")]) == 13 and len(lock) == 13 + 7  # the study, its sweep
    for name, entry in lock.items():
        assert entry.get("outs"), name
        assert all(o.get("md5") for o in entry["outs"]), name
        assert entry["deps"] and entry["params"], name


def _stale(said: str) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return set(re.findall(r"^(?:\S+dvc\.yaml:)?([\w-]+):\s*$", said, re.M))


def test_a_loss_key_puts_only_the_distilled_students_training_out_of_date(smoke_run, tmp_path):
    """The key reaches the distilled students' training and nothing else. What reads a student (the merge, its
    score and timing, the report) depends on its folder, so DVC re-makes those in turn and nothing more."""
    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")
    said = run_in_project(project, "status", "params/smoke.yaml", "--set", "temperature=3")
    assert said.returncode == 0, said.stdout[-2000:] + said.stderr[-2000:]
    # (the sweep's distilled student too: its setting leaves the temperature to the run)
    assert _stale(said.stdout) == {"train-distilled", "sweep-t-seed1-distilled"}, said.stdout
    assert "temperature" in said.stdout


def _wait_for(predicate, proc, timeout=600):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended before the kill (rc {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        assert time.time() - start < timeout
        time.sleep(0.05)


def _start(project, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "distill", "run", "params/smoke.yaml", *args], cwd=project,
                            env=env or project_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _holds_the_lock(project, proc):
    lock = project / ".dvc" / "tmp" / "distill-run-smoke.lock"
    return lambda: lock.exists() and lock.read_text().startswith(f"pid {proc.pid},")


def _kill_all(proc) -> str:
    """kill -9 the run and everything under it (the notebook's kernel runs in a session of its own, so the run's
    process group alone would leave it training for up to a second); returns what the run printed."""
    below = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return proc.communicate()[0]


def test_kill_during_training_resumes_to_the_same_result_and_a_second_run_is_refused(smoke_run, tmp_path):
    """kill -9 the whole run as the distilled student's first checkpoint lands; run it again, and while that runs
    a second run is refused. The uninterrupted run it must equal trains meanwhile in a copy of its own."""
    _, p = smoke_run
    project, whole = p.snapshot(tmp_path / "project"), p.snapshot(tmp_path / "whole")
    args = ["--set", "max_steps=12", "--set", "recovery_steps=0", "--only", "train-distilled"]
    students = project / "artifacts" / "smoke" / "students" / "distilled"
    for folder in (project, whole):  # the build's 4-step student: these runs train their own from step 0
        shutil.rmtree(folder / "artifacts" / "smoke" / "students" / "distilled")
    uninterrupted = _start(whole, *args)
    proc = _start(project, *args)
    # killed once checkpoint-2 is whole: a kill while its trainer_state.json is being written leaves nothing to
    # resume from, and the run rightly starts over
    _wait_for(lambda: training.complete_checkpoint(students / "checkpoint-2", needs_projection=False), proc)
    _kill_all(proc)
    assert not (students / "best").exists(), "training finished before the kill: the test proves nothing"
    manifest = project / "reports" / "smoke" / "manifest.json"
    assert json.loads(manifest.read_text())["status"] == "running"  # never a stale "ok"
    # what a kill during a checkpoint save leaves: a later checkpoint without its state and with a 0-byte optimizer
    half = students / "checkpoint-900"
    complete = max((c for c in students.glob("checkpoint-*") if training.complete_checkpoint(c, False)),
                   key=lambda c: int(c.name.split("-")[1]))  # the Trainer keeps the latest and the best only
    shutil.copytree(complete, half)
    (half / "trainer_state.json").unlink()
    (half / "optimizer.pt").write_bytes(b"")

    resumed = _start(project, *args)
    _wait_for(_holds_the_lock(project, resumed), resumed)
    second = run_in_project(project, "run", "params/smoke.yaml", *args, timeout=120)
    assert second.returncode == 2 and "run smoke is already running" in second.stderr, second.stderr
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:] + err[-3000:]
    assert set(RUN.findall(out)) == {"train-distilled"}
    executed = (project / "artifacts" / "smoke" / "executed" / "01_distill.ipynb").read_text()
    assert "resuming distilled from checkpoint-" in executed and "checkpoint-900" not in executed
    assert not half.exists()
    assert json.loads(manifest.read_text())["status"] == "ok"
    history = json.loads((project / "reports" / "smoke" / "log_history_distilled.json").read_text())

    out, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, out[-3000:] + err[-3000:]
    again = json.loads((whole / "reports" / "smoke" / "log_history_distilled.json").read_text())
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    fresh_evals = [(e["step"], e["eval_loss"]) for e in again if "eval_loss" in e]
    assert [s for s, _ in evals] == [s for s, _ in fresh_evals] == list(range(2, 13, 2))
    for (_, a), (_, b) in zip(evals, fresh_evals):
        assert a == pytest.approx(b, abs=1e-5)


QUALITY = ("exact_match", "f1", "answer_loss", "top1_accuracy", "params_m", "n_examples")


POINTS = {"teacher": "00_teacher", "merge": "02_merge", "report": "03_benchmark"}  # a stage and its notebook


def _kill_during_then_rerun(p, tmp_path, killed: tuple[str, ...]):
    """kill -9 the run during each stage of `killed` in turn (their outputs removed first, so each must be made
    again), each time running the same command again, then once to the end. The stages start from an empty model
    cache (the build found the tiny models built). Every re-made model, checkpoint and score must be byte for byte
    the build's, so DVC re-runs nothing downstream, and the results equal the uninterrupted run's."""
    project = p.snapshot(tmp_path / "project")
    for stage in killed:  # their outputs gone: the run must make them again
        for out in p.lock[stage]["outs"]:
            target = project / out["path"]
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    env = {**project_env(project), "DISTILL_MODELS_DIR": str(tmp_path / "cold_models")}
    report_dir, executed = project / "reports" / "smoke", project / "artifacts" / "smoke" / "executed"
    for stage in killed:
        partial = executed / f".{POINTS[stage]}.partial.ipynb"  # the notebook under way
        proc = _start(project, env=env)
        _wait_for(partial.exists, proc)
        time.sleep(1.0)
        out = _kill_all(proc)
        assert set(RUN.findall(out)) <= set(killed), out[-2000:]
        manifest = json.loads((report_dir / "manifest.json").read_text())
        assert manifest["status"] == "running", f"after a kill during {stage}: {manifest['status']}"
        assert "index.html" in os.listdir(report_dir)
    final = subprocess.run([sys.executable, "-m", "distill", "run", "params/smoke.yaml"],
                           cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert set(RUN.findall(final.stdout)) <= set(killed), final.stdout[-2000:]
    assert json.loads((report_dir / "manifest.json").read_text())["status"] == "ok"
    lock = _lock(project)
    kept = lambda outs: {o["path"]: o["md5"] for o in outs  # noqa: E731 (models, checkpoints, scores; not pages)
                         if o["path"].startswith("artifacts/") and "/executed/" not in o["path"]}
    for stage, entry in p.lock.items():  # the same bytes as the build's
        assert kept(lock[stage]["outs"]) == kept(entry["outs"]), stage
    ours = json.loads((report_dir / "results.json").read_text())["models"]
    for model, row in p.results["models"].items():
        for key in QUALITY:
            assert ours[model][key] == row[key], (model, key)
        assert ours[model]["raw_generations"] == row["raw_generations"], model
    leftovers = [f for f in (project / "artifacts" / "smoke").rglob(".*") if f.is_dir() and re.search(r"\.\d+\.", f.name)]
    assert not leftovers, f"temporary folders of killed builds were left: {leftovers}"
    assert not list(executed.glob(".*.partial.ipynb"))
    assert list((tmp_path / "cold_models").iterdir()), "the stages did not use the empty model cache"


def test_a_kill_during_teacher_preparation_then_the_same_command_from_a_cold_cache_equals_the_uninterrupted_run(
        smoke_run, tmp_path):
    _kill_during_then_rerun(smoke_run[1], tmp_path, ("teacher",))


def test_kills_during_the_merge_and_the_report_then_the_same_command_equal_the_uninterrupted_run(smoke_run, tmp_path):
    _kill_during_then_rerun(smoke_run[1], tmp_path, ("merge", "report"))


def _register_seed(project, seed: int) -> None:
    """One more seed of the build's sweep `t`, written into its registry as `distill sweep` writes it."""
    registry = project / "pipelines" / "smoke" / "sweeps.yaml"
    reg = yaml.safe_load(registry.read_text())
    reg["sweeps"]["t"]["seeds"].append(seed)
    registry.write_text(yaml.safe_dump(reg, sort_keys=False))


def test_seed_sweep_trains_scores_and_summarises_from_the_runs_models(smoke_run, tmp_path):
    """The build's sweep (conftest's SMOKE_SWEEP: seed 1 of both students on 4 questions, beside the run's seed 0);
    then, on a copy, the same call again and one more seed."""
    _, p = smoke_run
    run_dir, report_dir = p.run_dir, p.report_dir
    out = p.sweep
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = set(RUN.findall(out.stdout))
    assert {"sweep-t-seed1-distilled", "sweep-t-seed1-ce_baseline", "sweep-score-teacher", "sweep-summary"} <= ran
    study = set(RUN.findall(p.result.stdout))
    assert not ran & (study - {"report"}), "a sweep re-ran a stage of the base run (its page shows the sweep)"
    scores = {v: json.loads((run_dir / "sweeps" / "t" / "seed1" / "scores" / f"{v}_4q.json").read_text())
              for v in ("distilled", "ce_baseline")}
    assert all(s["n_examples"] == 4 and s["answer_loss"] > 0 for s in scores.values())
    # the seed moves training: seed 1's student differs from the base run's (seed 0, the same setting)
    adapter = "students/distilled/best/adapter_model.safetensors"
    assert (run_dir / "sweeps" / "t" / "seed1" / adapter).read_bytes() != (run_dir / adapter).read_bytes()
    summary = (report_dir / "sweeps" / "summary.txt").read_text()
    assert re.search(r"^t/distilled +t/ce_baseline +1 ", summary, re.M) and "reference/teacher" in summary
    assert (report_dir / "sweeps" / "seed_scores.png").stat().st_size > 5000
    teacher_md5 = next(o["md5"] for o in p.lock["teacher"]["outs"] if o["path"].endswith("/teacher"))
    assert f"Base models (tuned teacher and pruned student, from dvc.lock): {teacher_md5[:8]}" in summary
    assert json.loads((report_dir / "sweeps" / "summary.json").read_text())["base_models"] == teacher_md5[:8]
    project = p.snapshot(tmp_path / "project")
    # a second call trains and scores nothing
    again = run_in_project(project, *SMOKE_SWEEP)
    assert again.returncode == 0 and not RUN.findall(again.stdout), again.stdout[-2000:] + again.stderr[-2000:]
    # one more seed: DVC finds only that seed's stages (and the summary) out of date (running them is the same
    # `dvc repro` as above)
    _register_seed(project, 2)  # (the stages of seed 2, as those of seed 1 that ran above)
    written = run_in_project(project, "pipeline", "pipelines/smoke/params.yaml")  # the run as its sweeps have it
    assert written.returncode == 0, written.stderr[-2000:]
    status = _dvc(project, "status", "pipelines/smoke/dvc.yaml")
    assert _stale(status.stdout) == {"sweep-t-seed2-distilled", "sweep-t-seed2-ce_baseline", "sweep-score-t-seed2-distilled",
                     "sweep-score-t-seed2-ce_baseline", "sweep-summary"}, status.stdout


def test_a_cached_teacher_is_paid_once_per_example(smoke_run, tmp_path):
    """The cache stage computes each example once; a sweep's new seed reuses what earlier runs cached."""
    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")
    args = ["--set", "teacher_cache=topk", "--set", "recovery_steps=0", "--set", "beta_mse=0"]
    first = run_in_project(project, "run", "params/smoke.yaml", *args, "--only", "train-distilled")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "teacher" not in RUN.findall(first.stdout)  # the cache is filled from the run's own tuned teacher
    line = next(x for x in first.stdout.splitlines() if "teacher cache:" in x)
    assert re.search(r": 0 from the cache, [1-9]\d* computed by the teacher", line), line
    nb = nbformat.read(project / "artifacts" / "smoke" / "executed" / "01_distill.ipynb", as_version=4)
    printed = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])])
    assert "teacher targets: topk (k = 16)" in printed and "teacher (as loaded)" not in printed  # no live teacher
    # one more seed of the build's sweep registered (as `distill sweep` writes it): the cache stage alone is out of
    # date, and it computes only the examples the new seed meets that no run cached before
    _register_seed(project, 2)
    more = run_in_project(project, "run", "pipelines/smoke/params.yaml", "--only", "teacher-cache")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert RUN.findall(more.stdout) == ["teacher-cache"]
    line = next(x for x in more.stdout.splitlines() if "teacher cache:" in x)
    cached, computed = map(int, re.search(r"(\d+) from the cache, (\d+) computed", line).groups())
    assert cached > 0, line  # the examples of seed 0 (the run) and seed 1, and those seed 2 meets again


def test_the_notebook_trains_on_two_launched_processes_through_the_pipeline(smoke_run, tmp_path):
    """01_distill with num_processes 2: the DVC stage's kernel launches the ranks, streams their progress and draws
    the page from rank 0's record (the equality with one process is tests/test_distributed.py's)."""
    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")
    args = ["--set", "num_processes=2", "--set", "recovery_steps=0"]
    ran = run_in_project(project, "run", "params/smoke.yaml", *args, "--only", "train-distilled")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert RUN.findall(ran.stdout) == ["train-distilled"]  # the teacher stage's keys are unchanged
    said = ran.stdout + ran.stderr
    assert "launching 2 processes: accelerate launch --config_file configs/accelerate/ddp_cpu.yaml" in said
    assert len(re.findall(r"\[smoke distilled\] step 4/4: eval loss", said)) == 1  # streamed, once per step
    nb = nbformat.read(project / "artifacts" / "smoke" / "executed" / "01_distill.ipynb", as_version=4)
    printed = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])])
    assert "trained on 2 processes" in printed and "the live teacher, loaded by each of the 2 processes" in printed
    history = json.loads((project / "reports" / "smoke" / "log_history_distilled.json").read_text())
    assert [e["step"] for e in history if "eval_loss" in e] == [2, 4]
    page = (project / "reports" / "smoke" / "01_distill.html").read_text()
    assert "per process on 2 processes (8 examples per step)" in page and "kept checkpoint" in page


def test_another_squad_copy_is_named_by_status_and_the_same_bytes_elsewhere_are_not(smoke_run, tmp_path):
    """The data is an input: status names the changed fingerprint for every stage; a copy of the same files under
    another path is up to date."""
    import gzip

    from conftest import SQUAD_DIR

    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")
    same = shutil.copytree(SQUAD_DIR, tmp_path / "same")
    env = {**project_env(project), "SQUAD_DIR": str(same)}
    said = subprocess.run([sys.executable, "-m", "distill", "status", "params/smoke.yaml"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert said.returncode == 0 and "up to date" in said.stdout, said.stdout + said.stderr
    with gzip.open(same / "train.jsonl.gz", "at", encoding="utf-8") as fh:
        fh.write('{"id": "x", "title": "t", "context": "c d", "question": "q", "answers": {"text": ["d"], '
                 '"answer_start": [2]}}\n')
    said = subprocess.run([sys.executable, "-m", "distill", "status", "params/smoke.yaml"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert _stale(said.stdout) == set(p.lock) and "pipelines/smoke/inputs.json" in said.stdout, said.stdout


def test_an_output_edited_in_place_leaves_the_cache_whole_and_the_run_restores_it(smoke_run, tmp_path):
    import hashlib

    _, p = smoke_run
    project = p.snapshot(tmp_path / "project")
    out = next(o for o in p.lock["score-teacher"]["outs"] if o["path"].endswith("scores/teacher.json"))
    with open(project / out["path"], "a", encoding="utf-8") as fh:  # in place, as an editor or a script would
        fh.write(" ")
    cached = project / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
    assert hashlib.md5(cached.read_bytes()).hexdigest() == out["md5"], "the edit reached DVC's cache"
    ran = _ran(project)
    assert ran <= {"score-teacher", "report"}, ran  # restored from DVC's run cache or re-run, nothing else
    assert hashlib.md5((project / out["path"]).read_bytes()).hexdigest() == out["md5"]
