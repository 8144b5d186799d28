"""Seed sweeps: the summary statistics, paired differences and the early errors."""
import json
import math
import re
import shutil

import pytest

from conftest import run_cli
from distill import params, sweep


def record(sweep_name, variant, seed, loss, f1):
    return {"sweep": sweep_name, "variant": variant, "seed": seed, "answer_loss": loss, "top1_accuracy": 0.5,
            "exact_match": f1 / 2, "f1": f1, "n_examples": 10, "answer_tokens": 30, "overrides": "{}"}


RECORDS = [record("default", "ce_baseline", 0, 2.0, 10.0), record("default", "ce_baseline", 1, 3.0, 20.0),
           record("default", "distilled", 0, 1.5, 14.0), record("default", "distilled", 1, 3.1, 22.0),
           record("default", "distilled", 2, 9.0, 99.0),  # no baseline for seed 2: not paired
           record("reference", "teacher", 0, 1.0, 50.0)]


def test_summary_means_and_sample_sd():
    s = sweep.summarize(RECORDS).set_index(["sweep", "variant"])
    base = s.loc[("default", "ce_baseline")]
    assert base["seeds"] == 2 and base["answer_loss_mean"] == pytest.approx(2.5)
    assert base["answer_loss_sd"] == pytest.approx(math.sqrt(0.5))  # sample sd of (2, 3)
    assert math.isnan(s.loc[("reference", "teacher")]["f1_sd"])  # one seed: no spread


def test_paired_differences_use_common_seeds_only():
    d = sweep.paired_differences(RECORDS, ("default", "ce_baseline"))
    assert list(zip(d["sweep"], d["variant"])) == [("default", "distilled")]
    row = d.iloc[0]
    assert row["paired_seeds"] == 2
    assert row["answer_loss_diff_mean"] == pytest.approx((-0.5 + 0.1) / 2)
    assert row["f1_diff_mean"] == pytest.approx(3.0) and row["f1_diff_sd"] == pytest.approx(math.sqrt(2.0))
    assert row["answer_loss_better_in"] == "1/2" and row["f1_better_in"] == "2/2"  # lower loss, higher F1 win
    text = sweep.summary_text(sweep.summarize(RECORDS), d)
    half = 12.706 * math.sqrt(0.18) / math.sqrt(2)  # t(0.975, 1 df) x sd / sqrt(n); diffs -0.5 and +0.1
    assert row["answer_loss_diff_ci95_low"] == pytest.approx(-0.2 - half, abs=1e-3)
    assert row["answer_loss_diff_ci95_high"] == pytest.approx(-0.2 + half, abs=1e-3)
    assert "default/distilled" in text and "-0.200 [-4.012, +3.612] 1/2" in text


def test_a_sweep_with_both_students_is_also_paired_within_itself():
    steps = [record("steps40", "ce_baseline", 0, 1.8, 12.0), record("steps40", "distilled", 0, 1.6, 15.0),
             record("steps40", "ce_baseline", 1, 2.6, 21.0), record("steps40", "distilled", 1, 2.2, 25.0)]
    d = sweep.paired_differences(RECORDS + steps, ("default", "ce_baseline")).set_index(["sweep", "variant", "vs"])
    within = d.loc[("steps40", "distilled", "steps40/ce_baseline")]
    assert within["answer_loss_diff_mean"] == pytest.approx((-0.2 - 0.4) / 2) and within["f1_better_in"] == "2/2"
    across = d.loc[("steps40", "ce_baseline", "default/ce_baseline")]  # more steps alone, no teacher
    assert across["answer_loss_diff_mean"] == pytest.approx((-0.2 - 0.4) / 2)
    setting = d.loc[("steps40", "distilled", "default/distilled")]  # what more steps change in the distillation
    assert setting["answer_loss_diff_mean"] == pytest.approx((1.6 - 1.5 + 2.2 - 3.1) / 2)
    assert ("default", "distilled", "default/ce_baseline") in d.index and len(d) == 5
    text = sweep.summary_text(sweep.summarize(RECORDS + steps), d.reset_index())
    assert re.search(r"^steps40/distilled +steps40/ce_baseline +2 ", text, re.M)


def test_seed_run_names_stay_out_of_git_and_reject_odd_names():
    base = params.load("params/smoke.yaml")
    p = sweep.seed_params(base, "answer", 3, {"distill_positions": "answer"})
    assert p.run_name == "_smoke_answer_seed3" and p.seed == 3 and p.distill_positions == "answer"
    with pytest.raises(params.ParamsError, match="--name"):
        sweep.seed_params(base, "a/b", 0, {})
    with pytest.raises(params.ParamsError, match="unknown params key"):
        sweep.seed_params(base, "x", 0, {"temprature": 1.0})
    with pytest.raises(params.ParamsError, match="--set seed: the sweep sets it"):
        sweep.seed_params(base, "x", 0, {"seed": 4})
    for key in ("teacher", "teacher_finetune_steps", "prune_keep", "student"):
        with pytest.raises(params.ParamsError, match=f"--set {key}: a sweep reuses the base run's teacher"):
            sweep.seed_params(base, "x", 0, {key: 1})


def test_missing_base_teacher_is_named(tmp_path):
    base = params.load("params/smoke.yaml").replace(output_dir=str(tmp_path / "base"))
    p = sweep.seed_params(base, "x", 1, {})
    with pytest.raises(FileNotFoundError, match="--only 00_teacher"):
        sweep.share_base_models(base, p)


def test_cli_rejects_a_bad_variant_before_any_work():
    res = run_cli("sweep", "params/smoke.yaml", "--name", "x", "--variants", "distiled")
    assert res.returncode == 2 and "unknown ['distiled']" in res.stderr


def test_report_note_says_when_there_is_no_sweep_and_shows_one_when_there_is():
    base = params.load("params/smoke.yaml").replace(run_name="_note_check")
    assert "No seed sweep for this run yet" in sweep.report_note(base)
    sweep.save_records(base, "default", RECORDS)
    sweep.write_summary(base)
    note = sweep.report_note(base)
    assert "default/distilled" in note and "Paired by seed" in note
    assert (sweep.sweeps_dir(base) / "paired_differences.png").stat().st_size > 0
    assert "NOTE: its students were trained from other base models (unrecorded)" in note


def test_report_note_tells_whether_the_sweep_came_from_this_runs_models(tmp_path):
    base = make_base_models(tmp_path)
    shutil.rmtree(sweep.sweeps_dir(base), ignore_errors=True)
    fingerprint = sweep.base_fingerprint(base)
    sweep.save_records(base, "default", [{**r, "base_models": fingerprint} for r in RECORDS])
    sweep.write_summary(base)
    assert f"trained from this run's teacher and pruned student (base models {fingerprint})" in sweep.report_note(base)
    remade = make_base_models(tmp_path, b"a teacher re-made elsewhere")
    note = sweep.report_note(remade)
    assert f"other base models ({fingerprint}) than this run has now ({sweep.base_fingerprint(remade)})" in note


def test_a_sweep_scores_the_questions_the_recorded_sweeps_scored():
    base = params.load("params/smoke.yaml").replace(run_name="_questions_check")
    shutil.rmtree(sweep.sweeps_dir(base), ignore_errors=True)
    assert sweep.sweep_questions(base, 0) == base.bench_size  # nothing recorded yet
    assert sweep.sweep_questions(base, 7) == 7
    sweep.save_records(base, "default", RECORDS)  # 10 questions each (no "questions" field: older records)
    assert sweep.sweep_questions(base, 0) == 10 and sweep.sweep_questions(base, 10) == 10
    with pytest.raises(params.ParamsError, match="--questions 20: the sweeps in .* scored 10 questions"):
        sweep.sweep_questions(base, 20)
    sweep.save_records(base, "other", [{**RECORDS[0], "sweep": "other", "questions": 20}])
    with pytest.raises(params.ParamsError, match=r"different numbers of questions \[10, 20\]"):
        sweep.sweep_questions(base, 0)


def test_a_seed_run_from_an_older_teacher_is_refused(tmp_path):
    base = params.load("params/smoke.yaml").replace(output_dir=str(tmp_path / "base"), teacher_finetune=True)
    teacher = base.run_dir / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"old")
    p = sweep.seed_params(base, "x", 1, {})
    sweep.share_base_models(base, p)
    assert (p.run_dir / "teacher" / "model.safetensors").read_bytes() == b"old"
    sweep.share_base_models(base, p)  # unchanged base: fine
    (teacher / "model.safetensors").unlink()
    (teacher / "model.safetensors").write_bytes(b"new weights")  # the base run made a new teacher
    with pytest.raises(sweep.StaleSeedRun, match="model.safetensors"):
        sweep.share_base_models(base, p)


def test_extending_a_sweep_keeps_its_earlier_seeds():
    base = params.load("params/smoke.yaml").replace(run_name="_extend_check")
    shutil.rmtree(sweep.sweeps_dir(base), ignore_errors=True)
    sweep.save_records(base, "default", RECORDS[:4])  # seeds 0 and 1
    rescored = {**RECORDS[2], "answer_loss": 1.4}  # seed 0 distilled scored again
    sweep.save_records(base, "default", [rescored, RECORDS[4]])  # ... and seed 2 added
    saved = json.loads((sweep.sweeps_dir(base) / "default.json").read_text())
    assert [(r["seed"], r["variant"]) for r in saved] == [(0, "ce_baseline"), (0, "distilled"), (1, "ce_baseline"),
                                                          (1, "distilled"), (2, "distilled")]
    assert saved[1]["answer_loss"] == 1.4


def make_base_models(tmp_path, teacher_bytes=b"teacher"):
    base = params.load("params/smoke.yaml").replace(output_dir=str(tmp_path / "base"), teacher_finetune=True,
                                                    run_name="_fingerprint_check")
    for name, content in (("teacher", teacher_bytes), ("student_init", b"student")):
        (base.run_dir / name).mkdir(parents=True, exist_ok=True)
        (base.run_dir / name / "config.json").write_text("{}")
        (base.run_dir / name / "model.safetensors").write_bytes(content)
    return base


def test_records_from_other_base_models_are_refused_before_training(tmp_path):
    base = make_base_models(tmp_path)
    shutil.rmtree(sweep.sweeps_dir(base), ignore_errors=True)
    fingerprint = sweep.base_fingerprint(base)
    assert fingerprint == sweep.base_fingerprint(base)  # content, not time
    sweep.check_recorded_base(base, fingerprint)  # nothing recorded: fine
    sweep.save_records(base, "default", [{**r, "base_models": fingerprint} for r in RECORDS[:4]])
    sweep.check_recorded_base(base, fingerprint)  # same models: fine
    remade = make_base_models(tmp_path, b"a retrained teacher")
    assert sweep.base_fingerprint(remade) != fingerprint
    with pytest.raises(sweep.StaleSeedRun, match="its recorded students were trained from other base models"):
        sweep.run_sweep(remade, "more", [3], ["distilled"], {}, 4)
    sweep.save_records(base, "old", [RECORDS[0]])  # a record that never said which models it came from
    with pytest.raises(sweep.StaleSeedRun, match=r"\(unrecorded\)"):
        sweep.check_recorded_base(base, fingerprint)


def test_a_sweep_name_keeps_one_setting(tmp_path):
    base = make_base_models(tmp_path)
    shutil.rmtree(sweep.sweeps_dir(base), ignore_errors=True)
    sweep.save_records(base, "t1", [{**RECORDS[2], "sweep": "t1", "overrides": '{"temperature": 1.0}'}])
    with pytest.raises(params.ParamsError, match="--name t1: .* other settings"):
        sweep.run_sweep(base, "t1", [1], ["distilled"], {"temperature": 4.0}, 4)
