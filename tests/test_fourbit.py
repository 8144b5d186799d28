"""A 4-bit teacher: precision names, its stages, its fidelity measured on the tiny teacher, and the paired analysis
of the students it teaches."""
import json

import numpy as np
import pytest
from test_capacity import grid_params, score

from distill.core import params, paths
from distill.pipeline import dvc
from distill.report import fourbit_report, plots, stats
from distill.study import capacity, scoring, sweep

ARMS = {"ce_only": {"variant": "ce_baseline"}, "kd": {},
        "kd_nf4": {"teacher_load_in_4bit": True}, "kd_nf4dq": {"teacher_load_in_4bit": True, "bnb_double_quant": True}}


@pytest.mark.parametrize("name", ["nf4-float32", "nf4dq-bfloat16", "nf4-float16"])
def test_a_precision_name_reads_back_as_the_params_that_name_it(name):
    assert params.StudyParams().replace(**params.precision_settings(name)).teacher_precision == name


@pytest.mark.parametrize("bad", ["nf4", "int8-float32", "nf4-float64", "NF4-float32"])
def test_a_bad_precision_is_refused_naming_the_forms_accepted(bad):
    with pytest.raises(params.ParamsError, match=r"fidelity_precisions: got .*nf4-<dtype> or nf4dq-<dtype>"):
        grid_params(fidelity_precisions=[bad], teacher_load_in_4bit=False)
    with pytest.raises(params.ParamsError, match="set teacher_load_in_4bit: false"):
        grid_params(fidelity_precisions=["nf4-float32"], teacher_load_in_4bit=True)
    with pytest.raises(params.ParamsError, match="names a precision twice"):
        grid_params(fidelity_precisions=["nf4-float32", "nf4-float32"], teacher_load_in_4bit=False)
    with pytest.raises(params.ParamsError, match="latency_prompts: 7 exceeds capacity_questions"):
        grid_params(fidelity_precisions=["nf4-float32"], teacher_load_in_4bit=False, capacity_keep=[],
                    capacity_questions=6, latency_prompts=7)


def test_each_precision_gets_a_score_and_a_fidelity_stage_and_the_page_reads_them(monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")
    monkeypatch.setattr(sweep, "load_registry", lambda base: {"questions": 0, "sweeps": {}})
    p = grid_params(capacity_arms=ARMS, fidelity_precisions=["nf4-float32", "nf4dq-float32"], teacher_load_in_4bit=False)
    s = {x.name: x for x in dvc.stages(p)}
    q = p.capacity_questions
    for precision in p.fidelity_precisions:
        assert s[f"capacity-score-teacher-{precision}"].outs == [
            f"artifacts/smoke_grid/capacity/teacher/scores_{q}q-{precision}.json"]
        assert s[f"fidelity-{precision}"].outs == [f"artifacts/smoke_grid/capacity/teacher/fidelity_{q}q-{precision}.json"]
        assert set(s[f"capacity-score-teacher-{precision}"].outs + s[f"fidelity-{precision}"].outs) <= set(
            s["fourbit-report"].deps)
    assert s["capacity-score-teacher"].outs == [f"artifacts/smoke_grid/capacity/teacher/scores_{q}q.json"]
    assert s["fourbit-report"].notebook == "06_fourbit"
    assert fourbit_report.twin(p, "kd_nf4") == "kd" and fourbit_report.twin(p, "kd_nf4dq") == "kd"
    assert fourbit_report.arm_teacher(p, "ce_only") == "none"
    assert fourbit_report.arm_teacher(p, "kd_nf4dq") == "nf4dq-float32"
    assert "fourbit-report" not in {x.name for x in dvc.stages(grid_params(capacity_arms=ARMS))}
    # without a grid: the teacher in each precision and the page, no students
    alone = {x.name: x for x in dvc.stages(grid_params(fidelity_precisions=["nf4-float32"], teacher_load_in_4bit=False,
                                                       capacity_keep=[]))}
    assert {n for n in alone if n.startswith(("capacity", "fidelity", "score-capacity", "fourbit"))} == {
        "capacity-score-teacher", "capacity-score-teacher-nf4-float32", "fidelity-nf4-float32", "fourbit-report"}
    assert set(alone["fourbit-report"].deps) >= {*alone["fidelity-nf4-float32"].outs,
                                                 *alone["capacity-score-teacher"].outs}


def test_the_fidelity_stage_measures_the_4bit_teacher_against_float32(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "ARTIFACTS_DIR", tmp_path)
    p = grid_params(output_dir="", teacher_finetune=False, teacher_load_in_4bit=False, capacity_questions=6,
                    torch_threads=1, temperature=2.0)
    got = scoring.measure_fidelity(p, "nf4-float32")
    stored = json.loads(capacity.fidelity_file(p, "nf4-float32").read_text())
    assert stored["kl"].keys() == {"1.0", "2.0"} and stored["rows"] == got["rows"] > 0
    assert 0 < stored["kl"]["2.0"]["mean"] < stored["kl"]["1.0"]["mean"]  # NF4 moves it; a softer T moves it less
    assert 0.5 < stored["top1_agreement"] <= 1.0
    assert stored["cache_k"] == p.teacher_cache_k and stored["n_questions"] == 6


def fourbit_scores(shift=-0.05):
    """A float32 teacher and its NF4 copy; per seed a CE-only, a float32-taught and an NF4-taught student."""
    rng = np.random.default_rng(3)
    teacher_q = rng.uniform(0.3, 1.0, 120)
    out = [score("teacher", 4, 0, teacher_q, 10.0)]
    for seed in (0, 1, 2):
        kd = np.clip(teacher_q * 0.6 + rng.normal(0, 0.05, 120), 0, 1)
        out += [score("ce_only", 2, seed, kd * 0.9, 6.0, 2.0), score("kd", 2, seed, kd, 6.0, 1.5),
                score("kd_nf4", 2, seed, np.clip(kd + shift + rng.normal(0, 0.02, 120), 0, 1), 6.0, 1.6)]
    return out, teacher_q


def test_the_students_of_the_4bit_teacher_are_paired_with_their_float32_twins(monkeypatch, tmp_path):
    arms = {k: v for k, v in ARMS.items() if k != "kd_nf4dq"}
    p = grid_params(capacity_arms=arms, capacity_keep=[2], capacity_seeds=[0, 1, 2], capacity_questions=120,
                    fidelity_precisions=["nf4-float32"], teacher_load_in_4bit=False)
    score_file, fidelity_file = capacity.score_file, capacity.fidelity_file  # the grid's files, under tmp_path
    monkeypatch.setattr(capacity, "score_file", lambda *a: tmp_path / score_file(*a).relative_to(paths.PROJECT_ROOT))
    monkeypatch.setattr(capacity, "fidelity_file", lambda *a: tmp_path / fidelity_file(*a).relative_to(paths.PROJECT_ROOT))
    scores, teacher_q = fourbit_scores()
    nf4_teacher = {**score("teacher", 4, 0, np.clip(teacher_q - 0.01, 0, 1), 10.0), "load_s": 2.0,
                   "peak_rss_mb": 500.0}
    scores[0].update(load_s=1.0, peak_rss_mb=900.0, answer_tokens=40)
    monkeypatch.setattr(fourbit_report, "load_scores", lambda base: scores)
    files = {capacity.score_file(capacity.teacher_held(p, "nf4-float32"), "teacher"):
             json.dumps(nf4_teacher),
             capacity.fidelity_file(p, "nf4-float32"): json.dumps({
                 "rows": 40, "kl": {"1.0": {"mean": 0.03, "p90": 0.07}, "2.0": {"mean": 0.01, "p90": 0.02}},
                 "top1_agreement": 0.93, "cache_distance": {"mean": 0.2, "p90": 0.4},
                 "cache_noise_floor": {"mean": 0.18, "p90": 0.35}})}
    for f, text in files.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    fourbit = fourbit_report.collect(p)
    assert [(r["teacher"], r["temperature"]) for r in fourbit["fidelity"]] == [
        ("float32", 1.0), ("float32", 2.0), ("nf4-float32", 1.0), ("nf4-float32", 2.0)]
    nf4 = fourbit["fidelity"][2]
    assert (nf4["kl_mean"], nf4["kl_p90"], nf4["top1_agreement"], nf4["peak_rss_mb"]) == (0.03, 0.07, 0.93, 500.0)
    assert {(s["arm"], s["teacher"]) for s in fourbit["students"]} == {
        ("ce_only", "none"), ("kd", "float32"), ("kd_nf4", "nf4-float32")}
    assert all(len(s["f1_per_question"]) == 120 for s in fourbit["students"])
    [diff] = fourbit_report.analyse(fourbit)
    by = {(s["variant"], s["seed"]): np.array(s["f1_per_question"]) for s in scores[1:]}
    d = 100 * np.array([by[("kd_nf4", s)] - by[("kd", s)] for s in (0, 1, 2)])
    low, high = stats.ci95(list(d.mean(axis=0)))
    assert diff["f1_diff"] == pytest.approx(d.mean()) and (diff["f1_diff_ci95_low"], diff["f1_diff_ci95_high"]) == \
        pytest.approx((low, high))
    assert diff["f1_diff_resolved"] and diff["f1_diff"] < 0 and diff["reference_arm"] == "kd"
    assert diff["answer_loss_diff"] == pytest.approx(0.1)
    # every arm against CE-only, the baseline first
    arms = fourbit_report.arms_summary(fourbit)
    assert [a["arm"] for a in arms] == ["ce_only", "kd", "kd_nf4"] and "f1_vs_baseline" not in arms[0]
    d_ce = 100 * np.array([by[("kd", s)] - by[("ce_only", s)] for s in (0, 1, 2)])
    assert arms[1]["f1_vs_baseline"] == pytest.approx(d_ce.mean())
    assert (arms[1]["f1_vs_baseline_ci95_low"], arms[1]["f1_vs_baseline_ci95_high"]) == pytest.approx(
        stats.ci95(list(d_ce.mean(axis=0))))
    # the 4-bit teacher's own F1 against float32's, paired over questions
    [tdiff] = fourbit_report.teacher_differences(fourbit)
    assert tdiff["f1_diff"] == pytest.approx(100 * (np.clip(teacher_q - 0.01, 0, 1) - teacher_q).mean())
    lines = fourbit_report.headline(fourbit, [diff], arms)
    assert "KL from float32 0.0300 at T 1, 0.0100 at T 2" in lines[1] and "93.0%" in lines[1]
    assert f"({tdiff['f1_diff']:+.1f} [" in lines[1]
    assert fourbit_report.teacher_differences_table(fourbit).iloc[0]["95% CI"] == \
        f"[{tdiff['f1_diff_ci95_low']:+.1f}, {tdiff['f1_diff_ci95_high']:+.1f}]"
    assert "0.56x" in lines[1]  # its peak memory against float32's
    assert lines[2].startswith("Students of 2 layers taught by the nf4-float32 teacher (kd_nf4) minus")
    assert lines[3].startswith("Against CE-only at 2 layers") and f"kd (float32) F1 {arms[1]['f1']:.1f}" in lines[3]
    # fourbit.json beside the predictions of every teacher and student, in the official format
    monkeypatch.setattr(type(p), "report_dir", property(lambda self: tmp_path / "report"))
    out = json.loads(fourbit_report.write(p, fourbit, [diff], arms).read_text())
    assert "predictions" not in out and out["arms"][1]["arm"] == "kd"
    for rec in out["fidelity"] + out["students"]:
        written = json.loads((tmp_path / "report" / rec["predictions_file"]).read_text())
        assert set(written) == set(fourbit["question_ids"])
    assert {r["predictions_file"] for r in out["fidelity"]} == {
        "fourbit_predictions/teacher-float32.json", "fourbit_predictions/teacher-nf4-float32.json"}
    assert json.loads((tmp_path / "report/fourbit_predictions/keep2-kd_nf4-seed1.json").read_text())["q5"] == \
        "kd_nf4 1 answer 5"


def test_a_run_without_a_grid_measures_the_teacher_alone(monkeypatch, tmp_path):
    p = grid_params(capacity_keep=[], capacity_questions=120, fidelity_precisions=["nf4-float32"],
                    teacher_load_in_4bit=False)
    score_file, fidelity_file = capacity.score_file, capacity.fidelity_file
    monkeypatch.setattr(capacity, "score_file", lambda *a: tmp_path / score_file(*a).relative_to(paths.PROJECT_ROOT))
    monkeypatch.setattr(capacity, "fidelity_file", lambda *a: tmp_path / fidelity_file(*a).relative_to(paths.PROJECT_ROOT))
    teacher_q = np.random.default_rng(4).uniform(0.3, 1.0, 120)
    files = {capacity.score_file(p, "teacher"): {**score("teacher", 4, 0, teacher_q, 10.0), "load_s": 1.0,
                                                 "peak_rss_mb": 900.0, "answer_tokens": 40},
             capacity.score_file(capacity.teacher_held(p, "nf4-float32"), "teacher"): {
                 **score("teacher", 4, 0, teacher_q * 0.8, 10.0), "load_s": 2.0, "peak_rss_mb": 500.0},
             capacity.fidelity_file(p, "nf4-float32"): {
                 "rows": 40, "kl": {"1.0": {"mean": 0.2, "p90": 0.5}, "2.0": {"mean": 0.1, "p90": 0.2}},
                 "top1_agreement": 0.9, "cache_distance": {"mean": 0.7, "p90": 1.0},
                 "cache_noise_floor": {"mean": 0.7, "p90": 1.0}}}
    for f, content in files.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(content))
    fourbit = fourbit_report.collect(p)
    assert fourbit["students"] == [] and fourbit["pairs"] == {} and len(fourbit["fidelity"]) == 4
    assert fourbit_report.analyse(fourbit) == [] and fourbit_report.arms_summary(fourbit) == []
    [tdiff] = fourbit_report.teacher_differences(fourbit)
    assert tdiff["f1_diff"] == pytest.approx(-20 * teacher_q.mean()) and tdiff["f1_diff_resolved"]
    lines = fourbit_report.headline(fourbit, [], [])
    assert "trains no students" in lines[-1] and len(lines) == 3
    assert "trains no students" in fourbit_report.students_html([], [])
    fig = plots.fourbit_fidelity(fourbit, [], "t", [tdiff])
    assert fig.axes[1].get_title().startswith("The teacher's answers")
