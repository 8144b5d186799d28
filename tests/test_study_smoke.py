"""End to end: the smoke profile through the runner, as `make smoke` runs it."""
import json
import re
import shutil

import nbformat
import pytest
from transformers import AutoModelForCausalLM

from conftest import run_cli
from distill import params, results, study, sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run():
    res = run_cli("run", "params/smoke.yaml", timeout=900)
    p = params.load("params/smoke.yaml")
    return res, p


def test_runner_succeeds(smoke_run):
    res, _ = smoke_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[5/5] 03_benchmark" in res.stdout


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
    assert all(s["wall_s"] > 0 for s in manifest["steps"])


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
    assert (study.variant_dir(p, "distilled") / "best" / "hidden_projection.safetensors").exists()


def test_deploy_folder_loads_alone(smoke_run):
    _, p = smoke_run
    model = AutoModelForCausalLM.from_pretrained(study.merged_dir(p, "distilled"))
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


def test_seed_sweep_trains_scores_and_summarises(smoke_run):
    res, p = smoke_run
    assert res.returncode == 0
    # a fresh sweep: an earlier session's seed runs and records were made from an earlier base run
    shutil.rmtree(p.report_dir / "sweeps", ignore_errors=True)
    for seed in (0, 1):
        shutil.rmtree(sweep.seed_params(p, "t", seed, {}).run_dir, ignore_errors=True)
    out = run_cli("sweep", "params/smoke.yaml", "--name", "t", "--seeds", "0,1", "--questions", "4",
                  "--reference", "t/ce_baseline", timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = json.loads((p.report_dir / "sweeps" / "t.json").read_text())
    assert sorted((r["seed"], r["variant"]) for r in records) == [
        (0, "ce_baseline"), (0, "distilled"), (1, "ce_baseline"), (1, "distilled")]
    assert all(r["n_examples"] == 4 and r["answer_loss"] > 0 for r in records)
    assert len({r["base_models"] for r in records}) == 1 and records[0]["base_models"] == sweep.base_fingerprint(p)
    # the seed moves training: the two seeds' students differ
    by = {(r["seed"], r["variant"]): r["answer_loss"] for r in records}
    assert by[(0, "distilled")] != by[(1, "distilled")]
    summary = (p.report_dir / "sweeps" / "summary.txt").read_text()
    assert re.search(r"^t/distilled +t/ce_baseline +2 ", summary, re.M) and "reference/teacher" in summary
    assert "reference/student_before" in summary
    assert (p.report_dir / "sweeps" / "seed_scores.png").stat().st_size > 5000
    # a second call trains nothing and reuses the scores
    again = run_cli("sweep", "params/smoke.yaml", "--name", "t", "--seeds", "0,1", "--questions", "4",
                    "--reference", "t/ce_baseline", timeout=300)
    assert again.returncode == 0 and "already trained" in again.stdout
    assert json.loads((p.report_dir / "sweeps" / "t.json").read_text()) == records
