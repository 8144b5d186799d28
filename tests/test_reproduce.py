"""Two runs' reports side by side (identical, float noise, seed spread, a real difference, what the manifests record
differently), and the machine record a reader judges bit-identity by. Fake report folders in the real layout."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from distill.report import reproduce
from distill.report.reproduce import DIFFER, IDENTICAL, SPREAD, TOLERANCE

QIDS = ["q1", "q2", "q3", "q4"]
MODELS = {  # results.json name -> (the model's key, EM, F1, answer loss, top-1)
    "teacher": ("teacher", 25.0, 40.47844516594517, 1.0027897514431634, 0.803088803088803),
    "student (before training)": ("student_before", 0.0, 0.925925925925926, 3.6007348137932853, 0.43243243243243246),
    "CE-only student": ("ce_baseline", 27.083333333333332, 35.27972027972027, 1.1571361291362512, 0.7722007722007722),
    "distilled student": ("distilled", 33.333333333333336, 38.63636363636363, 1.2263145299491736, 0.7644787644787645),
}


def results_json() -> dict:
    """results.json as lib/distill/results.py writes it: meta, then one entry per model (scores, measurements,
    answers by question id)."""
    models = {}
    for name, (key, em, f1, loss, top1) in MODELS.items():
        models[name] = {
            "n_examples": 4, "latency_ms_per_example": 460.15, "throughput_examples_per_s": 2.17,
            "generation_seconds": 22.08, "latency_batch1_prompts": 4, "latency_batch1_ms_median": 490.15,
            "latency_batch1_ms_p90": 754.69, "latency_batch1_fixed_ms_median": 989.4, "latency_batch1_fixed_ms_p90": 1029.7,
            "params_m": 134.515008, "memory_footprint_mb": 538.060288, "disk_mb": 541.614978,
            "disk_kind": "safetensors folder", "runtime_rss_mb": 390.6, "peak_memory_mb": 1225.04,
            "peak_memory_kind": "peak RSS of a process running only this model", "model": key, "device": "cpu",
            "exact_match": em, "f1": f1, "answer_loss": loss, "top1_accuracy": top1, "answer_tokens": 20,
            "dropped": 0, "windowed": 2, "raw_generations": ["Dane", "1749", "Tesla", "oxygen"],
            "predictions": ["Dane", "1749", "Tesla", "oxygen"], "question_ids": list(QIDS), "wall_s": 37.5}
    meta = {"run_name": "run", "n_examples": 4, "max_new_tokens": 12, "batch_size": 8, "latency_prompts": 4,
            "device": "cpu", "memory_kind": "peak RSS of a process running only this model",
            "teacher_disk_kind": "safetensors folder", "runtime_rss_mb": {"teacher": 390.6}, "question_ids": list(QIDS)}
    return {"meta": meta, "models": models}


def manifest_json(run: str) -> dict:
    """manifest.json as runner.write_run_index writes it (the fields compare_runs reads)."""
    return {"run_name": run, "status": "ok", "start": "2026-11-26T17:54:04+00:00", "seed": 0,
            "params": {"run_name": run, "seed": 0, "device": "auto", "output_dir": f"artifacts/{run}",
                       "deploy_dir": "", "base_run_dir": "", "max_steps": 60, "temperature": 2.0,
                       "capacity_seeds": [0, 1, 2]},
            "pipeline": f"pipelines/{run}/dvc.yaml", "git": {"commit": "5ec5b22e", "dirty": False},
            "packages": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0"},
            "device": {"platform": "Linux-6.18-x86_64", "cpu_cores": 2, "torch_threads": 2, "cuda": False},
            "machine": {"cpu_model": "AMD EPYC", "logical_cores": 2, "cpu_flags": ["avx", "avx2", "fma", "avx512f"],
                        "torch_cpu_capability": "AVX512", "torch_threads": 2, "torch_interop_threads": 2,
                        "mkldnn": True, "mkl": True, "platform": "Linux-6.18-x86_64", "cuda": False},
            "steps": []}


def sweep_summary() -> dict:
    """sweeps/summary.json as sweep.write_summary writes it: mean and sd over seeds per (sweep, variant), NaN sd
    for the single-seed references; no per-seed values."""
    nan = float("nan")
    rows = [("default", "distilled", 3, 0.0193, 0.00669, 3.18, 2.28),
            ("default", "ce_baseline", 3, 0.0722, 0.0194, 1.20, 0.0874),
            ("reference", "teacher", 1, nan, nan, nan, nan), ("reference", "student_before", 1, nan, nan, nan, nan)]
    summary = [{"sweep": sw, "variant": v, "seeds": n, "questions": 4, "overrides": "{}",
                "answer_loss_mean": 1.0, "answer_loss_sd": loss, "top1_accuracy_mean": 0.7, "top1_accuracy_sd": top1,
                "exact_match_mean": 30.0, "exact_match_sd": em, "f1_mean": 37.0, "f1_sd": f1}
               for sw, v, n, loss, top1, em, f1 in rows]
    return {"base_models": "dee08d06-4db3128f", "reference": "default/ce_baseline", "summary": summary,
            "paired_differences": []}


def make_run(root: Path, run: str, results: dict | None = None, manifest: dict | None = None,
             summary: dict | None = None) -> Path:
    folder = root / run
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results or results_json(), indent=1))
    (folder / "manifest.json").write_text(json.dumps(manifest or manifest_json(run), indent=1))
    if summary is not None:
        (folder / "sweeps").mkdir()
        (folder / "sweeps" / "summary.json").write_text(json.dumps(summary, indent=1))  # NaN as NaN, as pandas does
    return folder


def with_change(model: str, metric: str, fn) -> dict:
    r = results_json()
    r["models"][model][metric] = fn(r["models"][model][metric])
    return r


def row(c, model, metric):
    return next(r for r in c.rows if (r.model, r.metric) == (model, metric))


def test_identical_runs(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    c = reproduce.compare_runs(a, b)
    assert c.verdict == IDENTICAL and reproduce.exit_code(c) == 0
    n = len(c.scored)
    assert n == 4 * 12 and len(c.measured) == 4 * 10  # 12 scored numbers and 10 timings per model
    assert {r.metric for r in c.measured} >= {"latency_batch1_ms_median", "peak_memory_mb", "wall_s"}
    assert all(x.differ == 0 and x.compared == 4 for x in c.answers)
    text = reproduce.format_comparison(c)
    assert text.splitlines()[0] == f"runs a and b agree exactly: {n} of {n} numbers identical, 16 of 16 answers the same"
    # run name and output folder differ, but are not listed: they explain nothing
    assert c.environment == []
    assert "nothing" in text.splitlines()[-1]


def test_timing_differences_do_not_change_the_verdict(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", with_change("teacher", "latency_batch1_ms_median", lambda v: v * 1.3))
    c = reproduce.compare_runs(a, b)
    assert c.verdict == IDENTICAL
    assert row(c, "teacher", "latency_batch1_ms_median").status == DIFFER
    assert "1 of 40 differ, largest +30.0% (latency_batch1_ms_median of teacher)" in reproduce.format_comparison(c)


def test_float_noise(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", with_change("distilled student", "answer_loss", lambda v: v * (1 + 3e-12)))
    c = reproduce.compare_runs(a, b)
    assert c.verdict == TOLERANCE and reproduce.exit_code(c) == 0
    r = row(c, "distilled student", "answer_loss")
    assert r.status == TOLERANCE and r.a != r.b
    text = reproduce.format_comparison(c)
    assert text.startswith(f"runs a and b agree within float tolerance: {len(c.scored) - 1} of {len(c.scored)} "
                           "numbers identical, 1 within rel 1e-09")
    assert "answer_loss of distilled student" in text.splitlines()[0]
    assert "float noise" in text


def test_within_seed_spread_of_a_sweep(tmp_path):
    # distilled F1 sd 2.28 over 3 seeds: +3.0 lies within 2 sqrt(2) sd = 6.45
    changed = with_change("distilled student", "f1", lambda v: v + 3.0)
    a = make_run(tmp_path, "a", summary=sweep_summary())
    b = make_run(tmp_path, "b", changed)
    c = reproduce.compare_runs(a, b)
    r = row(c, "distilled student", "f1")
    assert r.status == SPREAD and r.sd == pytest.approx(2.28)
    assert c.verdict == SPREAD and reproduce.exit_code(c) == 1
    first = reproduce.format_comparison(c).splitlines()[0]
    assert first.startswith("runs a and b differ, but within the seed spread:")
    assert "3-seed sweep 'default' of run A" in first
    # the sweep may sit in either run
    c2 = reproduce.compare_runs(make_run(tmp_path, "c", changed), make_run(tmp_path, "d", summary=sweep_summary()))
    assert c2.verdict == SPREAD and "of run B" in c2.spread
    # the same difference with no sweep on record: nothing to judge it by
    c3 = reproduce.compare_runs(make_run(tmp_path, "e"), make_run(tmp_path, "f", changed))
    assert c3.verdict == DIFFER and reproduce.exit_code(c3) == 3
    assert "no seed sweep on record" in reproduce.format_comparison(c3).splitlines()[0]


def test_a_real_difference(tmp_path):
    a = make_run(tmp_path, "a", summary=sweep_summary())
    # CE-only F1 sd 0.087: +1.0 is far outside its spread; the teacher has one seed, so no spread at all
    r = with_change("CE-only student", "f1", lambda v: v + 1.0)
    r["models"]["teacher"]["top1_accuracy"] += 0.01
    b = make_run(tmp_path, "b", r)
    c = reproduce.compare_runs(a, b)
    assert c.verdict == DIFFER and reproduce.exit_code(c) == 3
    assert row(c, "CE-only student", "f1").status == DIFFER
    assert row(c, "teacher", "top1_accuracy").sd is None
    lines = reproduce.format_comparison(c).splitlines()
    assert lines[0].startswith(f"runs a and b differ: 2 of {len(c.scored)} numbers differ beyond float noise and the "
                               "seed spread")
    table = [line for line in lines if line.startswith("CE-only student") and " f1 " in line]
    assert len(table) == 1 and "+1" in table[0] and table[0].endswith("differs") and "0.0874" in table[0]


def test_same_scores_from_other_answers_is_a_difference(tmp_path):
    r = results_json()
    r["models"]["distilled student"]["predictions"][2] = "Nikola Tesla"
    c = reproduce.compare_runs(make_run(tmp_path, "a"), make_run(tmp_path, "b", r))
    assert c.verdict == DIFFER
    diff = next(x for x in c.answers if x.model == "distilled student")
    assert (diff.differ, diff.compared, diff.examples) == (1, 4, [("q3", "Tesla", "Nikola Tesla")])
    text = reproduce.format_comparison(c)
    assert "1 of 4" in text and "'Nikola Tesla'" in text


def test_environment_differences_are_listed(tmp_path):
    mb = manifest_json("b")
    mb["packages"]["torch"] = "2.12.0+cpu"
    mb["machine"]["cpu_model"] = "Intel(R) Xeon(R) Platinum 8480+"
    mb["machine"]["torch_cpu_capability"] = "AVX2"
    mb["params"]["temperature"] = 4.0
    mb["git"] = {"commit": "6a56f86", "dirty": False}
    c = reproduce.compare_runs(make_run(tmp_path, "a"), make_run(tmp_path, "b", manifest=mb))
    found = {(e.section, e.key): (e.a, e.b) for e in c.environment}
    assert found == {("packages", "torch"): ("2.13.0+cpu", "2.12.0+cpu"),
                     ("machine", "cpu_model"): ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8480+"),
                     ("machine", "torch_cpu_capability"): ("AVX512", "AVX2"),
                     ("params", "temperature"): (2.0, 4.0), ("git", "commit"): ("5ec5b22e", "6a56f86")}
    text = reproduce.format_comparison(c)
    assert "packages.torch: 2.13.0+cpu -> 2.12.0+cpu" in text
    assert "machine.cpu_model: AMD EPYC -> Intel(R) Xeon(R) Platinum 8480+" in text
    assert "run_name" not in text and "output_dir" not in text


def test_an_old_manifest_without_machine_info_says_so(tmp_path):
    ma = manifest_json("a")
    del ma["machine"]
    c = reproduce.compare_runs(make_run(tmp_path, "a", manifest=ma), make_run(tmp_path, "b"))
    assert [str(e) for e in c.environment] == ["machine: (not recorded) -> recorded"]


def test_missing_results_or_folder_is_one_line_with_the_fix(tmp_path):
    good = make_run(tmp_path, "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty/results\.json not found \(nor a capacity grid's capacity\.json\): run `make study` first") as err:
        reproduce.compare_runs(good, empty)
    assert "\n" not in str(err.value) and str(err.value).startswith("run B:")
    with pytest.raises(ValueError, match=r"nowhere does not exist; give reports/<run> folders"):
        reproduce.compare_runs(tmp_path / "nowhere", good)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="has no 'models'"):
        reproduce.compare_runs(good, tmp_path / "bad")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "capacity.json").write_text('{"curve": []}')
    with pytest.raises(ValueError, match="has no 'records'; it is not a capacity grid's capacity.json"):
        reproduce.compare_runs(good, tmp_path / "grid")


def test_seed_spread_reads_the_default_setting_and_skips_single_seeds():
    spread = reproduce.seed_spread(json.loads(json.dumps(sweep_summary())))
    assert spread[("distilled", "f1")] == (2.28, 3, "default")
    assert ("teacher", "f1") not in spread
    other = copy.deepcopy(sweep_summary())
    other["summary"].insert(0, {**other["summary"][0], "sweep": "more_steps", "f1_sd": 9.0,
                                "overrides": '{"max_steps": 120}'})
    assert reproduce.seed_spread(other)[("distilled", "f1")][0] == 2.28  # a setting with overrides is another run


def test_machine_info_on_this_machine():
    info = reproduce.machine_info()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"].strip()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["torch_cpu_capability"], str) and info["torch_cpu_capability"]
    assert info["torch_threads"] == torch.get_num_threads() >= 1
    assert info["logical_cores"] >= 1 and set(info["cpu_flags"]) <= set(reproduce.CPU_FLAGS)
    if info["torch_cpu_capability"] in ("AVX2", "AVX512"):  # torch only picks them where the CPU has them
        assert "avx2" in info["cpu_flags"]
    assert info["cuda"] == torch.cuda.is_available()
    json.dumps(info)  # goes into manifest.json as it is
    assert not any(isinstance(v, float) and math.isnan(v) for v in info.values())


def _broken(change) -> dict:
    r = results_json()
    change(r)
    return r


@pytest.mark.parametrize("change, gap", [
    (lambda r: r["models"]["teacher"].update(f1="high"), 'teacher: f1 is "high" in run B, not a number'),
    (lambda r: r["models"].update({"teacher": None}), "teacher: null in run B, not a model's record"),
    (lambda r: r.update(models={}), "run B records no models"),
    (lambda r: r["models"].pop("distilled student"), "model 'distilled student' only in run A"),
    (lambda r: r["models"]["teacher"].pop("answer_loss"), "teacher: answer_loss only in run A"),
    (lambda r: r["models"]["teacher"].update(predictions=None), "teacher: predictions is null in run B, not a list"),
    (lambda r: r["models"]["teacher"].update(f1=None), "teacher: f1 is null in run B, not a number"),
    (lambda r: r.pop("meta"), "run B's results.json has no scoring setup"),
])
def test_what_was_not_compared_is_a_difference_named_in_the_first_line(tmp_path, change, gap):
    """A run with a model, a number or a part missing or not a number never 'agrees', whatever the rest says."""
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", results=_broken(change))
    c = reproduce.compare_runs(a, b)
    assert c.verdict == DIFFER and reproduce.exit_code(c) == 3 and any(gap in g for g in c.gaps), c.gaps
    first = reproduce.format_comparison(c).splitlines()[0]
    assert first.startswith("runs a and b cannot be said to agree") and gap in first and "agree exactly" not in first


@pytest.mark.parametrize("text, why", [('{"run_name": "b", "status": "o', "unreadable"), ("null", "not a JSON object")])
def test_a_corrupt_manifest_is_a_difference_not_an_unrecorded_one(tmp_path, text, why):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    (b / "manifest.json").write_text(text)
    c = reproduce.compare_runs(a, b)
    assert c.verdict == DIFFER and reproduce.exit_code(c) == 3
    assert any(g.startswith(f"run B's manifest.json is {why}") for g in c.gaps), c.gaps
    assert "manifest.json is" in reproduce.format_comparison(c).splitlines()[0]


def test_an_unreadable_sweep_summary_is_a_difference(tmp_path):
    a, b = make_run(tmp_path, "a", summary=sweep_summary()), make_run(tmp_path, "b", summary=sweep_summary())
    (b / "sweeps" / "summary.json").write_text("{")
    c = reproduce.compare_runs(a, b)
    assert c.verdict == DIFFER and any("sweeps/summary.json is unreadable" in g for g in c.gaps)


def capacity_run(root: Path, run: str, change=None) -> Path:
    """A capacity grid's report folder: capacity.json (records per variant, size and seed) and its manifest."""
    records = [{"variant": "teacher", "layers": 30, "params_m": 134.5, "seed": 0, "n_questions": 3,
                "exact_match": 40.0, "f1": 50.0, "answer_loss": 0.8, "top1_accuracy": 0.8,
                "latency_batch1_ms_median": 370.0}]
    records += [{"variant": v, "layers": 22, "params_m": 106.2, "seed": s, "n_questions": 3, "exact_match": 10.0 + s,
                 "f1": 20.0 + s + (v == "distilled") * 6, "answer_loss": 1.4, "top1_accuracy": 0.7,
                 "latency_batch1_ms_median": 300.0 + s, "predictions": {"q1": "Paris", "q2": v, "q3": str(s)}}
                for v in ("ce_baseline", "distilled") for s in (0, 1)]
    if change:
        change(records)
    folder = root / run
    folder.mkdir(parents=True)
    (folder / "capacity.json").write_text(json.dumps({"records": records, "question_ids": ["q1", "q2", "q3"],
                                                      "n_questions": 3, "curve": [], "gains": []}))
    (folder / "manifest.json").write_text(json.dumps(manifest_json(run), indent=1))
    return folder


def test_two_capacity_grids_are_compared_record_by_record(tmp_path):
    a, b = capacity_run(tmp_path, "a"), capacity_run(tmp_path, "b")
    c = reproduce.compare_runs(a, b)
    assert c.verdict == IDENTICAL and not c.gaps
    assert len(c.scored) == 5 * 8 and len(c.measured) == 5  # layers, seed, params, n, EM, F1, loss, top-1; a timing
    assert row(c, "distilled 22 layers seed 1", "f1").a == 27.0
    assert [(x.differ, x.compared) for x in c.answers] == [(0, 3)] * 4  # the cells' answers by question id

    def moved(records):
        records[-1]["f1"] += 0.5  # one seed of the distilled 22-layer student, one answer
        records[-1]["predictions"]["q2"] = "other"
    c = reproduce.compare_runs(a, capacity_run(tmp_path, "moved", moved))
    assert c.verdict == DIFFER and row(c, "distilled 22 layers seed 1", "f1").status == DIFFER
    assert [r.model for r in c.scored if r.status != IDENTICAL] == ["distilled 22 layers seed 1"]
    assert [(x.model, x.differ) for x in c.answers if x.differ] == [("distilled 22 layers seed 1", 1)]

    def lost(records):
        del records[1]
    assert "model 'ce_baseline 22 layers seed 0' only in run A" in reproduce.compare_runs(
        a, capacity_run(tmp_path, "lost", lost)).gaps



def test_finished_cells_of_two_grids_are_put_together_and_compared(tmp_path):
    """benchmarks/capacity_cells.py: the score files of the cells two grids both finished, as capacity.json."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "capacity_cells.py"
    for run, answer in (("a", "Paris"), ("b", "Paris"), ("c", "Lyon")):
        for cell in ("teacher/scores_3q.json", "keep22/seed0/scores/distilled_3q.json"):
            f = tmp_path / run / "grid" / cell
            f.parent.mkdir(parents=True)
            f.write_text(json.dumps({"variant": cell.split("/")[0], "layers": 22, "seed": 0, "f1": 50.0,
                                     "question_ids": ["q1", "q2"], "predictions": {"q1": answer, "q2": "x"},
                                     "f1_per_question": [1.0, 0.0], "latency_batch1_ms_median": 9.0}))
        said = subprocess.run([sys.executable, str(script), str(tmp_path / run / "grid"), str(tmp_path / run / "out"),
                               "--cells", "teacher/scores_3q.json", "keep22/seed0/scores/distilled_3q.json"],
                              capture_output=True, text=True)
        assert said.returncode == 0, said.stderr
    same = reproduce.compare_runs(tmp_path / "a" / "out", tmp_path / "b" / "out")
    assert same.verdict == IDENTICAL
    text = reproduce.format_comparison(same)  # no manifests: nothing is said to be the same that was not compared
    assert "neither run has a manifest.json" in text and "all the same" not in text
    c = reproduce.compare_runs(tmp_path / "a" / "out", tmp_path / "c" / "out")
    assert c.verdict == DIFFER and sum(x.differ for x in c.answers) == 2
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "a" / "grid"), str(tmp_path / "x"), "--cells",
                          "nope.json"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such cell score file" in bad.stderr
