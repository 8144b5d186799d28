"""Seed sweeps: the summary statistics, paired differences and the early errors."""
import json
import math
import re

import pytest
import yaml
from conftest import run_cli

from distill.core import params, paths
from distill.pipeline import dvc
from distill.report import sweeps
from distill.study import layout, sweep

# `base` writes pipelines/_sweep_check/ inside the project tree: these tests share one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("project_tree")


def record(sweep_name, variant, seed, loss, f1, spread=4.0):
    """A scored student: F1 `f1` on average over three questions, f1 - spread, f1, f1 + spread."""
    return {"sweep": sweep_name, "variant": variant, "seed": seed, "answer_loss": loss, "top1_accuracy": 0.5,
            "exact_match": f1 / 2, "f1": f1, "n_examples": 10, "answer_tokens": 30, "overrides": "{}",
            "f1_per_question": {"q1": f1 - spread, "q2": f1, "q3": f1 + spread}}


RECORDS = [record("default", "ce_baseline", 0, 2.0, 10.0), record("default", "ce_baseline", 1, 3.0, 20.0),
           record("default", "distilled", 0, 1.5, 14.0), record("default", "distilled", 1, 3.1, 22.0),
           record("default", "distilled", 2, 9.0, 99.0),  # no baseline for seed 2: not paired
           record("reference", "teacher", 0, 1.0, 50.0)]


def test_summary_means_and_sample_sd():
    s = sweeps.summarize(RECORDS).set_index(["sweep", "variant"])
    base = s.loc[("default", "ce_baseline")]
    assert base["seeds"] == 2 and base["answer_loss_mean"] == pytest.approx(2.5)
    assert base["answer_loss_sd"] == pytest.approx(math.sqrt(0.5))  # sample sd of (2, 3)
    assert math.isnan(s.loc[("reference", "teacher")]["f1_sd"])  # one seed: no spread


def test_paired_differences_use_common_seeds_only():
    d = sweeps.paired_differences(RECORDS, ("default", "ce_baseline"))
    assert list(zip(d["sweep"], d["variant"])) == [("default", "distilled")]
    row = d.iloc[0]
    assert row["paired_seeds"] == 2
    assert row["answer_loss_diff_mean"] == pytest.approx((-0.5 + 0.1) / 2)
    assert row["f1_diff_mean"] == pytest.approx(3.0) and row["f1_diff_sd"] == pytest.approx(math.sqrt(2.0))
    assert row["answer_loss_better_in"] == "1/2" and row["f1_better_in"] == "2/2"  # lower loss, higher F1 win
    text = sweeps.summary_text(sweeps.summarize(RECORDS), d)
    half = 12.706 * math.sqrt(0.18) / math.sqrt(2)  # t(0.975, 1 df) x sd / sqrt(n); diffs -0.5 and +0.1
    assert row["answer_loss_diff_ci95_low"] == pytest.approx(-0.2 - half, abs=1e-3)
    assert row["answer_loss_diff_ci95_high"] == pytest.approx(-0.2 + half, abs=1e-3)
    assert "default/distilled" in text and "-0.200 [-4.012, +3.612] 1/2" in text


def test_the_f1_difference_is_also_paired_question_by_question_over_the_common_seeds():
    recs = [record("default", "ce_baseline", 0, 2.0, 10.0), record("default", "ce_baseline", 1, 3.0, 20.0),
            record("default", "distilled", 0, 1.5, 14.0, spread=2.0), record("default", "distilled", 1, 3.1, 22.0,
                                                                               spread=2.0),
            record("default", "distilled", 2, 9.0, 99.0)]  # no baseline for seed 2: left out here too
    row = sweeps.paired_differences(recs, ("default", "ce_baseline")).iloc[0]
    # per question, averaged over seeds 0 and 1: 3 + (2, 0, -2); mean 3, sd 2, t(0.975, 2 df) = 4.303
    half = 4.3027 * 2.0 / math.sqrt(3)
    assert row["f1_q_gain"] == pytest.approx(3.0) and row["f1_q_questions"] == 3
    assert row["f1_q_ci95_low"] == pytest.approx(3.0 - half, abs=1e-3)
    assert row["f1_q_ci95_high"] == pytest.approx(3.0 + half, abs=1e-3) and not row["f1_q_resolved"]
    text = sweeps.summary_text(sweeps.summarize(recs), sweeps.paired_differences(recs, ("default", "ce_baseline")))
    assert f"+3.0 [{3.0 - half:+.1f}, {3.0 + half:+.1f}]" in text


def test_a_sweep_with_both_students_is_also_paired_within_itself():
    steps = [record("steps40", "ce_baseline", 0, 1.8, 12.0), record("steps40", "distilled", 0, 1.6, 15.0),
             record("steps40", "ce_baseline", 1, 2.6, 21.0), record("steps40", "distilled", 1, 2.2, 25.0)]
    d = sweeps.paired_differences(RECORDS + steps, ("default", "ce_baseline")).set_index(["sweep", "variant", "vs"])
    within = d.loc[("steps40", "distilled", "steps40/ce_baseline")]
    assert within["answer_loss_diff_mean"] == pytest.approx((-0.2 - 0.4) / 2) and within["f1_better_in"] == "2/2"
    across = d.loc[("steps40", "ce_baseline", "default/ce_baseline")]  # more steps alone, no teacher
    assert across["answer_loss_diff_mean"] == pytest.approx((-0.2 - 0.4) / 2)
    setting = d.loc[("steps40", "distilled", "default/distilled")]  # what more steps change in the distillation
    assert setting["answer_loss_diff_mean"] == pytest.approx((1.6 - 1.5 + 2.2 - 3.1) / 2)
    assert ("default", "distilled", "default/ce_baseline") in d.index and len(d) == 5
    text = sweeps.summary_text(sweeps.summarize(RECORDS + steps), d.reset_index())
    assert re.search(r"^steps40/distilled +steps40/ce_baseline +2 ", text, re.M)


@pytest.fixture
def base(tmp_path, monkeypatch):
    """The smoke run with its pipeline folder in tmp_path and its outputs inside the project tree's layout."""
    import shutil

    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")  # reports/_*/ is git-ignored
    p = params.load("params/smoke.yaml").replace(run_name="_sweep_check", output_dir="artifacts/_sweep_check")
    for folder in (p.report_dir, layout.pipeline_dir(p)):
        shutil.rmtree(folder, ignore_errors=True)
    yield p
    for folder in (p.report_dir, layout.pipeline_dir(p)):
        shutil.rmtree(folder, ignore_errors=True)


def test_seed_params_name_the_seed_run_and_reject_odd_settings(base):
    p = sweep.seed_params(base, "answer", 3, {"distill_positions": "answer"})
    assert p.run_name == "__sweep_check_answer_seed3" and p.seed == 3 and p.distill_positions == "answer"
    assert p.output_dir == "artifacts/_sweep_check/sweeps/answer/seed3"
    assert p.base_run_dir == "artifacts/_sweep_check"  # trains from the base run's teacher and pruned student
    with pytest.raises(params.ParamsError, match="--name"):
        sweep.seed_params(base, "a/b", 0, {})
    with pytest.raises(params.ParamsError, match="unknown params key"):
        sweep.seed_params(base, "x", 0, {"temprature": 1.0})
    with pytest.raises(params.ParamsError, match="--set seed: the sweep sets it"):
        sweep.seed_params(base, "x", 0, {"seed": 4})
    for key in ("teacher", "teacher_finetune_steps", "prune_keep", "student"):
        with pytest.raises(params.ParamsError, match=f"--set {key}: a sweep reuses the base run's teacher"):
            sweep.seed_params(base, "x", 0, {key: 1})


def test_extending_a_sweep_keeps_its_seeds_and_a_name_keeps_its_setting(base):
    sweep.register(base, "default", [0, 1], ["distilled", "ce_baseline"], {}, 0)
    reg = sweep.register(base, "default", [2], ["distilled"], {}, 0)
    assert reg["sweeps"]["default"]["seeds"] == [0, 1, 2] and reg["questions"] == base.bench_size
    assert reg["sweeps"]["default"]["variants"] == ["distilled", "ce_baseline"]
    with pytest.raises(params.ParamsError, match=r"--name default: it holds seeds trained with \{\}"):
        sweep.register(base, "default", [3], ["distilled"], {"temperature": 1.0}, 0)
    with pytest.raises(params.ParamsError, match="--questions 20: the sweeps of _sweep_check score 8 questions"):
        sweep.register(base, "t1", [0], ["distilled"], {"temperature": 1.0}, 20)
    with pytest.raises(params.ParamsError, match="unknown \\['distiled'\\]"):
        sweep.register(base, "t1", [0], ["distiled"], {}, 0)
    with pytest.raises(params.ParamsError, match="--reference nope/ce_baseline"):
        sweep.register(base, "t1", [0], ["distilled"], {"temperature": 1.0}, 0, reference="nope/ce_baseline")


def test_sweep_stages_follow_the_registry(base):

    assert not [s for s in dvc.stages(base) if s.name.startswith("sweep")]
    sweep.register(base, "default", [0, 1], ["distilled", "ce_baseline"], {}, 6)
    sweep.register(base, "t1", [0], ["distilled"], {"temperature": 1.0}, 0)
    st = {s.name: s for s in dvc.stages(base)}
    names = [n for n in st if n.startswith("sweep")]
    assert names == ["sweep-score-teacher", "sweep-score-student_before",
                     "sweep-default-seed0-distilled", "sweep-score-default-seed0-distilled",
                     "sweep-default-seed0-ce_baseline", "sweep-score-default-seed0-ce_baseline",
                     "sweep-default-seed1-distilled", "sweep-score-default-seed1-distilled",
                     "sweep-default-seed1-ce_baseline", "sweep-score-default-seed1-ce_baseline",
                     "sweep-t1-seed0-distilled", "sweep-score-t1-seed0-distilled", "sweep-summary"]
    t1 = st["sweep-t1-seed0-distilled"]
    assert "temperature" not in t1.params and "seed" not in t1.params and "gamma_kl" in t1.params
    assert list(t1.extra_params.values()) == [["sweeps.t1.set"]]
    assert "artifacts/_sweep_check/teacher" in t1.deps  # the base run's models: DVC re-trains when they change
    assert t1.persist == ["artifacts/_sweep_check/sweeps/t1/seed0/students/distilled"]
    assert "temperature" not in st["sweep-default-seed0-ce_baseline"].params
    score = st["sweep-score-t1-seed0-distilled"]
    assert score.args == ["sweep-score", "t1", "0", "distilled", "6"] and t1.persist[0] in score.deps
    assert len([d for d in st["sweep-summary"].deps if d.endswith("q.json")]) == 2 + 4 + 1


def test_paired_gain_is_given_only_for_this_runs_own_base_models(base, monkeypatch):
    pair, why = sweeps.paired_gain(base)
    assert pair is None and "no seed sweep of this run yet" in why
    folder = sweeps.sweeps_dir(base)
    folder.mkdir(parents=True)
    row = {"sweep": "default", "variant": "distilled", "vs": "default/ce_baseline", "f1_diff_mean": -3.3}
    (folder / "summary.json").write_text(json.dumps({"base_models": "aaaa1111", "paired_differences": [row]}))
    monkeypatch.setattr(sweep, "base_models_digest", lambda b: "aaaa1111")
    assert sweeps.paired_gain(base) == (row, "")
    assert sweeps.paired_gain(base, "other")[0] is None
    monkeypatch.setattr(sweep, "base_models_digest", lambda b: "bbbb2222")
    pair, why = sweeps.paired_gain(base)
    assert pair is None and "other base models" in why


def test_base_models_come_from_dvc_lock(base):

    lock = layout.pipeline_dir(base) / "dvc.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"teacher": {"outs": [
        {"path": "artifacts/x/teacher", "md5": "0123456789abcdef.dir"},
        {"path": "reports/x/00_teacher.html", "md5": "ffff"},
        {"path": "artifacts/x/student_init", "md5": "fedcba9876543210.dir"}]}}}))
    assert sweep.base_models_digest(base) == "01234567-fedcba98"


def test_cli_rejects_a_bad_variant_before_any_work():
    res = run_cli("sweep", "params/smoke.yaml", "--name", "x", "--variants", "distiled")
    assert res.returncode == 2 and "unknown ['distiled']" in res.stderr
