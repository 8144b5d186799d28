"""The teacher's whole signal: teacher-answered questions, the grid's named arms, and the signal report."""
import json
import random
import re

import numpy as np
import pytest
from squad_official_metric import evaluate as official_evaluate
from test_capacity import grid_params, score

from distill.core import params, paths
from distill.parts import data, metrics, models, teacher_answers
from distill.pipeline import dvc
from distill.report import signal_report, stats
from distill.study import cache, capacity, layout, steps, sweep

ARMS = {"ce_only": {"variant": "ce_baseline"}, "kd_answer": {},
        "seqkd": {"gamma_kl": 0.0, "teacher_answered_size": 8}, "kd_teacher": {"teacher_answered_size": 8}}


def signal_params(**changes):
    return grid_params(capacity_arms=ARMS, **changes)


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arms, message", [
    ({"a": {}, "b": {"gamma_kl": 0.5}}, "0 arms set variant: ce_baseline"),
    ({"a": {"variant": "ce_baseline"}, "b": {"variant": "ce_baseline"}}, "2 arms set variant: ce_baseline"),
    ({"ce": {"variant": "ce_baseline"}, "b": {"seed": 3}}, r"capacity_arms.b: sets \['seed'\]"),
    ({"ce": {"variant": "ce_baseline"}, "b": {"gamma_kl": -1.0}}, "capacity_arms.b: gamma_kl: got -1.0"),
    ({"ce": {"variant": "ce_baseline"}, "b": {"tempreature": 1.0}}, "capacity_arms.b: tempreature: unknown params key; "
                                                                    "did you mean 'temperature'"),
    ({"ce": {"variant": "ce_baseline"}, "b/c": {}}, "capacity_arms: got 'b/c'"),
    ({"ce": {"variant": "ce_baseline"}, "b": {"teacher_answered_size": 8, "gamma_kl": 0.0, "variant": "ce_baseline"}},
     "2 arms"),
])
def test_bad_arms_are_refused_naming_the_arm(arms, message):
    with pytest.raises(params.ParamsError, match=message):
        grid_params(capacity_arms=arms)


def test_arms_must_be_a_mapping_of_mappings():
    with pytest.raises(params.ParamsError, match="capacity_arms: got .* expected a mapping"):
        grid_params(capacity_arms={"ce": "variant=ce_baseline"})


def test_the_ce_only_student_never_trains_on_teacher_answers():
    with pytest.raises(params.ParamsError, match="gold answers only; it needs teacher_answered_size: 0"):
        grid_params(variant="ce_baseline", gamma_kl=0.0, teacher_answered_size=4)
    p = grid_params(teacher_answered_size=4)
    assert layout.variant_params(p, "ce_baseline").teacher_answered_size == 0


def test_the_signal_profile_compares_the_arms_the_study_asks_for():
    p = params.load("params/signal_cpu.yaml").replace(output_dir="artifacts/signal_cpu")  # in the project, as DVC needs
    assert p.capacity_keep == [24, 16] and len(p.capacity_seeds) >= 3 and p.capacity_questions >= 300
    arms = {a: capacity.arm_params(p, 16, 0, a) for a in capacity.arms(p)}
    assert capacity.baseline_arm(p) == "ce_only" and not arms["ce_only"].uses_teacher
    assert arms["seqkd"].teacher_answered_size and not arms["seqkd"].uses_teacher
    assert arms["kd_teacher"].teacher_answered_size and arms["kd_teacher"].uses_teacher_cache
    assert arms["all_positions"].distill_positions == "all" and arms["recovery"].recovery_steps
    assert arms["onpolicy"].lmbda > 0
    # matched optimizer steps: the recovery arm's healing steps come out of its answer steps
    assert {a.max_steps + a.recovery_steps for a in arms.values()} == {p.max_steps}


# --------------------------------------------------------------------------------------------
# teacher-answered questions: which, and how they are asked
# --------------------------------------------------------------------------------------------
def test_teacher_answered_questions_are_disjoint_unlabelled_and_shared_by_every_seed():
    p = grid_params(teacher_answered_size=10)
    sets = {s: steps.load_data(capacity.seed_params(p, 2, s)) for s in (0, 1)}
    for s, d in sets.items():
        asked = {r["id"] for r in d.answered_rows}
        assert len(asked) == 10 and all("answers" not in r for r in d.answered_rows)
        others = {r["id"] for r in d.train_rows + d.eval_rows + d.recovery_rows}
        assert not asked & others
    # the teacher's own tuning examples are those of the base run's seed: never asked
    tuned = {r["id"] for r in steps.load_data(p).teacher_rows}
    assert not tuned & {r["id"] for d in sets.values() for r in d.answered_rows}
    # every seed asks from one list, the far end of the base run's shuffle (answered once for all seeds), skipping
    # only what that seed's own subsets hold
    train = data.load_squad("train", p.squad_dir, p.data_pool_rows)
    order = list(range(len(train)))
    random.Random(p.seed).shuffle(order)
    candidates = [train[i]["id"] for i in order[:len(order) - p.teacher_finetune_train_size][::-1]]
    for d in sets.values():
        taken = {r["id"] for r in d.train_rows + d.eval_rows + d.recovery_rows}
        assert [r["id"] for r in d.answered_rows] == [q for q in candidates if q not in taken][:10]
    assert len({r["id"] for r in sets[0].answered_rows} & {r["id"] for r in sets[1].answered_rows}) >= 5
    assert steps.load_data(p.replace(teacher_answered_size=0)).answered_rows == []
    with pytest.raises(ValueError, match="teacher_answered_size: 900 questions asked"):
        steps.load_data(p.replace(teacher_answered_size=900))


def test_questions_are_windowed_without_their_answer_and_each_window_is_its_own(tiny_paths, squad_dir):
    tokenizer = models.load_tokenizer(str(tiny_paths[0]))
    rows = [data.question_only(r) for r in data.load_squad("train", str(squad_dir), 60)[:12]]
    prompts = data.answer_prompts(rows, tokenizer, 128, 10, seed=3)
    again = dict(zip([r["id"] for r in rows[::-1]], data.answer_prompts(rows[::-1], tokenizer, 128, 10, seed=3)))
    for row, (ids, (lo, hi)) in zip(rows, prompts):
        assert len(ids) <= 128 - 10 and 0 <= lo <= hi
        assert again[row["id"]] == (ids, (lo, hi))  # the same window whatever else is asked with it
    assert any(hi - lo < len(tokenizer(r["context"], add_special_tokens=False)["input_ids"])
               for r, (_, (lo, hi)) in zip(rows, prompts))


def test_a_teacher_answer_becomes_the_target_of_the_prompt_it_was_given(tiny_paths, squad_dir):
    tokenizer = models.load_tokenizer(str(tiny_paths[0]))
    rows = [data.question_only(r) for r in data.load_squad("train", str(squad_dir), 60)[:3]]
    prompts = data.answer_prompts(rows, tokenizer, 96, 10, seed=0)
    answers = {rows[0]["id"]: {"answer": "the red fox", "window": list(prompts[0][1])},
               rows[1]["id"]: {"answer": "", "window": list(prompts[1][1])},
               rows[2]["id"]: {"answer": "word " * 200, "window": list(prompts[2][1])}}
    enc = data.encode_answered(rows, answers, tokenizer, 96)
    assert enc.dropped == 2 and len(enc.features) == 1  # the empty answer and the one past max_length
    f = enc.features[0]
    assert f["input_ids"][:f["prompt_len"]] == prompts[0][0]
    target = [t for t in f["labels"] if t != -100]
    assert target == data.answer_ids(tokenizer, "the red fox") and f["references"] == ["the red fox"]


def test_the_teacher_answers_each_question_once_and_each_run_reads_its_own_view(tmp_path, tiny_paths, squad_dir):
    teacher = models.freeze(models.load_model(str(tiny_paths[0])))
    tokenizer = models.load_tokenizer(str(tiny_paths[0]))
    rows = [data.question_only(r) for r in data.load_squad("train", str(squad_dir), 60)[:6]]
    config = teacher_answers.answers_config(str(tiny_paths[0]), tokenizer, 96, 4, 0)
    store = tmp_path / "answers"
    got = teacher_answers.fill(store, config, {"a": rows[:4]}, teacher, tokenizer, "cpu", 2)
    assert got == {"questions": 4, "asked": 4, "empty": got["empty"]}
    first = json.loads((store / "answers.json").read_text())["answers"]
    got = teacher_answers.fill(store, config, {"a": rows[:4], "b": rows[2:]}, teacher, tokenizer, "cpu", 2)
    assert got["asked"] == 2 and got["questions"] == 6  # only the new ones
    stored = json.loads((store / "answers.json").read_text())["answers"]
    assert {k: stored[k] for k in first} == first
    view_b = teacher_answers.read_view(store / "views" / "b.json", rows[2:])
    assert set(view_b) == {r["id"] for r in rows[2:]}
    for qid, a in view_b.items():
        assert a["answer"] == metrics.postprocess_answer(a["raw"])
    with pytest.raises(teacher_answers.AnswersMissing, match="1 of the run's 5 teacher-answered questions"):
        teacher_answers.read_view(store / "views" / "b.json", rows[1:])
    with pytest.raises(teacher_answers.AnswersMissing, match="run its teacher-cache stage"):
        teacher_answers.read_view(store / "views" / "c.json", rows)
    # another window budget: the old answers are not used
    got = teacher_answers.fill(store, {**config, "max_length": 80}, {"a": rows[:1]}, teacher, tokenizer, "cpu", 2)
    assert got["asked"] == 1 and len(json.loads((store / "answers.json").read_text())["answers"]) == 1


# --------------------------------------------------------------------------------------------
# the grid's arms as stages
# --------------------------------------------------------------------------------------------
def test_every_arm_trains_in_its_own_folder_with_its_own_settings(monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")
    monkeypatch.setattr(sweep, "load_registry", lambda base: {"questions": 0, "sweeps": {}})
    p = signal_params()
    s = {x.name: x for x in dvc.stages(p)}
    for arm in ARMS:
        st = s[f"capacity-keep2-seed1-{arm}"]
        ap = capacity.arm_params(p, 2, 1, arm)
        assert st.persist == [f"artifacts/smoke_grid/capacity/keep2/seed1/{arm}/students/{ap.variant}"]
        assert f"capacity_arms.{arm}" in st.params and not set(ARMS[arm]) & set(st.params)
        answers = [d for d in st.deps if "/answers-" in d]
        targets = [d for d in st.deps if "/views/" in d and "/answers-" not in d]
        assert bool(answers) == (arm in ("seqkd", "kd_teacher")) and bool(targets) == (arm in ("kd_answer", "kd_teacher"))
    assert s["capacity-report"].notebook == "05_signal"
    assert "reports/smoke_grid/signal_predictions/keep2-seqkd-seed1.json" in s["capacity-report"].reports
    assert {"teacher_answered_size", "capacity_arms"} <= set(s["teacher-cache"].params)
    assert sorted(u.run_name for u in cache.answer_users(p)) == \
        sorted(f"_smoke_grid_keep{k}_seed{sd}_{a}" for k in (3, 2) for sd in (0, 1) for a in ("seqkd", "kd_teacher"))
    # without named arms the grid is the study's two students, as before
    plain = {x.name for x in dvc.stages(grid_params())}
    assert {"capacity-keep2-seed1-ce_baseline", "capacity-keep2-seed1-distilled"} <= plain


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def signal_scores(gain=0.15):
    rng = np.random.default_rng(1)
    teacher_q = rng.uniform(0.3, 1.0, 150)
    out = [score("teacher", 4, 0, teacher_q, 10.0)]
    for seed in (0, 1, 2):
        base = np.clip(teacher_q * 0.5 + rng.normal(0, 0.05, 150), 0, 1)
        out += [score("ce_only", 2, seed, base, 6.0, 2.0), score("kd_answer", 2, seed, base, 6.0, 2.0),
                score("seqkd", 2, seed, np.clip(base + gain, 0, 1), 6.0, 1.7),
                score("kd_teacher", 2, seed, np.clip(base + gain / 2, 0, 1), 6.0, 1.8)]
    for s in out:
        s["predictions"] = {q: f"answer {i}" for i, q in enumerate(s["question_ids"])}
        s["wall_s"] = 30.0
    return out


def test_each_arms_gain_is_the_paired_mean_over_questions_with_its_t_interval(monkeypatch):
    scores = signal_scores()
    monkeypatch.setattr(signal_report, "load_scores", lambda base, partial=False: scores)
    monkeypatch.setattr(signal_report, "train_minutes", lambda *a: 2.0)
    sig = signal_report.collect(signal_params(capacity_keep=[2], capacity_seeds=[0, 1, 2]))
    assert len(sig["records"]) == 12 and sig["baseline_arm"] == "ce_only"
    result = signal_report.analyse(json.loads(json.dumps(sig)))  # what is committed is enough to recompute it
    rows = {r["arm"]: r for r in result["arms"]}
    seq = 100 * np.array([[r["f1_per_question"][q] for q in sig["question_ids"]] for r in sig["records"]
                          if r["arm"] == "seqkd"])
    ce = 100 * np.array([[r["f1_per_question"][q] for q in sig["question_ids"]] for r in sig["records"]
                         if r["arm"] == "ce_only"])
    d = (seq - ce).mean(axis=0)
    assert rows["seqkd"]["gain_f1"] == pytest.approx(d.mean())
    assert (rows["seqkd"]["gain_ci95_low"], rows["seqkd"]["gain_ci95_high"]) == pytest.approx(stats.ci95(list(d)))
    assert rows["seqkd"]["gain_resolved"] and rows["seqkd"]["gain_seeds_won"] == "3/3"
    assert rows["kd_answer"]["gain_f1"] == pytest.approx(0.0) and not rows["kd_answer"]["gain_resolved"]
    assert "gain_f1" not in rows["ce_only"]
    assert rows["seqkd"]["gain_answer_loss"] == pytest.approx(-0.3)
    line = signal_report.headline(result)[1]
    assert re.match(r"2 layers \(60% of the teacher's parameters\): seqkd wins, F1 \d+\.\d = \d+% of the teacher's "
                    r"\[\d+-\d+%\], \+\d+\.\d F1 over CE-only \[\+\d+\.\d, \+\d+\.\d\], 3/3 seeds \(resolved\); it "
                    r"trains in 2\.0 CPU min vs 2\.0 for CE-only\.$", line), line  # its lead over kd_teacher is resolved
    assert rows["seqkd"]["lead_over"] == "kd_teacher" and rows["seqkd"]["lead_resolved"]


def test_the_best_arm_wins_only_when_its_lead_over_the_next_is_resolved(monkeypatch):
    scores = signal_scores()
    rng = np.random.default_rng(5)
    seq = {s["seed"]: np.array(s["f1_per_question"]) for s in scores if s["variant"] == "seqkd"}
    for s in scores:  # kd_teacher now trails seqkd by 0.2 points, inside the noise
        if s["variant"] == "kd_teacher":
            s["f1_per_question"] = list(np.clip(seq[s["seed"]] - 0.002 + rng.normal(0, 0.05, 150), 0, 1))
            s["f1"] = 100 * float(np.mean(s["f1_per_question"]))
    monkeypatch.setattr(signal_report, "load_scores", lambda base, partial=False: scores)
    monkeypatch.setattr(signal_report, "train_minutes", lambda *a: 2.0)
    sig = signal_report.collect(signal_params(capacity_keep=[2], capacity_seeds=[0, 1, 2]))
    result = signal_report.analyse(sig)
    rows = {r["arm"]: r for r in result["arms"]}
    best, other = sorted(("seqkd", "kd_teacher"), key=lambda a: -rows[a]["f1"])
    ids = sig["question_ids"]
    per = {a: 100 * np.array([[r["f1_per_question"][q] for q in ids] for r in sig["records"] if r["arm"] == a])
           for a in (best, other)}
    d = (per[best] - per[other]).mean(axis=0)
    assert rows[best]["lead_over"] == other and rows[best]["lead_f1"] == pytest.approx(d.mean())
    assert (rows[best]["lead_ci95_low"], rows[best]["lead_ci95_high"]) == pytest.approx(stats.ci95(list(d)))
    assert not rows[best]["lead_resolved"] and "lead_over" not in rows[other]
    line = signal_report.headline(result)[1]
    assert f"{best} scores highest" in line and f"ahead of {other} by only" in line and "not told apart" in line


def test_a_grid_still_running_is_reported_as_far_as_it_got_and_says_what_is_missing(monkeypatch, tmp_path):
    """While a grid runs its page shows the trainings scored so far and says which are missing (the pipeline's
    report stage waits for every one); the analysis of a whole grid refuses a missing score file."""
    from distill.report import capacity_report

    monkeypatch.setattr(signal_report, "train_minutes", lambda *a: None)
    p = signal_params(capacity_keep=[2], capacity_seeds=[0, 1, 2])
    monkeypatch.setattr(capacity_report, "score_file", lambda base, model, keep=None, seed=None: tmp_path / (
        "teacher.json" if model == "teacher" else f"{keep}-{model}-{seed}.json"))
    have = [s for s in signal_scores() if s["variant"] in ("teacher", "ce_only", "seqkd") and s["seed"] != 2 or
            s["variant"] == "teacher"]
    for s in have:
        (tmp_path / ("teacher.json" if s["variant"] == "teacher" else f"2-{s['variant']}-{s['seed']}.json")).write_text(
            json.dumps(s))
    with pytest.raises(FileNotFoundError, match="capacity score file"):
        signal_report.collect(p)
    sig = signal_report.collect(p, partial=True)
    assert {(r["arm"], r["seed"]) for r in sig["records"]} == {(a, s) for a in ("ce_only", "seqkd") for s in (0, 1)}
    assert len(sig["missing"]) == 12 - 4 and "2 layers seqkd seed 2" in sig["missing"]
    result = signal_report.analyse(sig)
    lines = signal_report.headline(result)
    assert lines[0] == ("The grid is not complete: 4 of 12 trainings measured, so each size compares the arms measured "
                        "there (not yet: 2 layers: ce_only, kd_answer, seqkd, kd_teacher).")
    assert {r["arm"]: r["seeds"] for r in result["arms"]} == {"ce_only": 2, "seqkd": 2}
    # before any CE-only seed is scored there is nothing to pair with, and the page says so
    early = {**sig, "records": [r for r in sig["records"] if r["arm"] == "seqkd"]}
    assert signal_report.headline(signal_report.analyse(early))[-1] == \
        "2 layers (60% of the teacher's parameters): no arm is paired with a ce_only seed yet."
    assert signal_report.headline(signal_report.analyse({**sig, "records": []}))[-1] == "No student is scored yet."


def test_the_committed_predictions_rescore_to_the_records_by_the_official_script(monkeypatch, tmp_path, squad_dir):
    """Every record's F1 is re-derived from its official-format predictions file and the dev set."""
    dev = data.load_squad("validation", str(squad_dir), 0)[:6]
    refs = [r["answers"]["text"] for r in dev]
    preds = [refs[0][0], "nothing", refs[2][0] + " more", "", refs[4][0], "x"]
    per_q = [r["f1"] for r in metrics.per_example_scores(preds, refs)]
    s = score("teacher", 4, 0, per_q, 10.0)
    s.update(question_ids=[r["id"] for r in dev], predictions=dict(zip([r["id"] for r in dev], preds)), wall_s=1.0)
    student = {**s, "variant": "ce_only", "layers": 2, "params_m": 6.0}
    monkeypatch.setattr(signal_report, "load_scores", lambda base, partial=False: [s, student])
    monkeypatch.setattr(signal_report, "train_minutes", lambda *a: None)
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path)
    base = signal_params(capacity_keep=[2], capacity_seeds=[0])
    sig = signal_report.collect(base)
    signal_report.write(base, sig, signal_report.analyse(sig))
    out = json.loads((tmp_path / "smoke_grid" / "signal.json").read_text())
    dataset = [{"paragraphs": [{"qas": [{"id": r["id"], "answers": [{"text": t} for t in r["answers"]["text"]]}]}]}
               for r in dev]
    for rec in [out["teacher"], *out["records"]]:
        written = json.loads((tmp_path / "smoke_grid" / rec["predictions_file"]).read_text())
        official = official_evaluate(dataset, written)
        assert official["f1"] == pytest.approx(100 * np.mean(list(rec["f1_per_question"].values())))


# --------------------------------------------------------------------------------------------
# slow: a signal grid on the tiny models
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_signal_grid_runs_end_to_end_and_its_page_opens_with_the_answer(tmp_path):
    from conftest import make_project_copy, run_in_project

    project = make_project_copy(tmp_path / "project")
    # kd_nf4: kd_teacher's twin taught by the same teacher held in NF4 (its own answers and cache)
    arms = "{ce_only: {variant: ce_baseline}, seqkd: {gamma_kl: 0.0, teacher_answered_size: 6}, " \
           "kd_teacher: {teacher_answered_size: 6}, kd_nf4: {teacher_answered_size: 6, teacher_load_in_4bit: true}}"
    res = run_in_project(project, "run", "params/smoke.yaml", "--set", "run_name=signal", "--set", "student=prune",
                         "--set", "prune_keep=3", "--set", "teacher_finetune=false", "--set", "recovery_size=0",
                         "--set", "recovery_steps=0", "--set", "capacity_keep=[2]", "--set", "capacity_seeds=[0]",
                         "--set", "capacity_questions=6", "--set", "latency_prompts=1", "--set", "teacher_cache=sampled",
                         "--set", "teacher_cache_k=4", "--set", "beta_mse=0", "--set", "distill_positions=answer",
                         "--set", "max_new_tokens=4", "--set", f"capacity_arms={arms}", "--set", "teacher_load_in_4bit=false",
                         "--set", "fidelity_precisions=[nf4-float32]", "--only", "capacity-report,fourbit-report")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for store in ("answers-L128-N4", "answers-L128-N4-nf4-float32"):  # each teacher answers for its own arms
        assert re.search(rf"{store}: 6 teacher-answered questions, 6 asked now", res.stdout), res.stdout[-3000:]
    report = project / "reports" / "signal"
    out = json.loads((report / "signal.json").read_text())
    assert {(r["layers"], r["arm"], r["seed"]) for r in out["records"]} == {(2, a, 0) for a in
                                                                           ("ce_only", "seqkd", "kd_teacher", "kd_nf4")}
    for rec in [out["teacher"], *out["records"]]:
        assert len(rec["f1_per_question"]) == 6 and (report / rec["predictions_file"]).exists()
    # the two teacher-answered arms read the same stored answers; the CE-only arm reads none
    views = sorted(p.name for p in (project / "artifacts" / "signal" / "teacher_cache" / "answers-L128-N4" /
                                    "views").glob("*.json"))
    assert views == ["_signal_keep2_seed0_kd_teacher.json", "_signal_keep2_seed0_seqkd.json"]
    page = (report / "05_signal.html").read_text()
    assert "Traceback" not in page and 'class="highlight hl-ipython3"' not in page
    body = re.sub(r"<[^>]+>", " ", page[page.index("<body"):])
    assert body.index("Which of the teacher") < body.index(out["headline"][0][:40]) < body.index("How it was")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == 1
    # the 4-bit teacher: measured against float32, and the students it taught paired with kd_teacher's
    fourbit = json.loads((report / "fourbit.json").read_text())
    assert [(r["teacher"], r["temperature"]) for r in fourbit["fidelity"]] == [
        ("float32", 1.0), ("float32", 2.0), ("nf4-float32", 1.0), ("nf4-float32", 2.0)]
    assert fourbit["fidelity"][2]["kl_mean"] > 0 and fourbit["fidelity"][0]["kl_mean"] == 0
    assert {(s["arm"], s["teacher"]) for s in fourbit["students"]} == {
        ("ce_only", "none"), ("seqkd", "float32"), ("kd_teacher", "float32"), ("kd_nf4", "nf4-float32")}
    [diff] = fourbit["student_differences"]
    for rec in fourbit["fidelity"] + fourbit["students"]:  # every teacher's and student's answers beside it
        assert set(json.loads((report / rec["predictions_file"]).read_text())) == set(fourbit["question_ids"])
    assert (diff["arm"], diff["reference_arm"], diff["seeds"]) == ("kd_nf4", "kd_teacher", 1)
    page = (report / "06_fourbit.html").read_text()
    assert "Traceback" not in page
    body = re.sub(r"<[^>]+>", " ", page[page.index("<body"):])
    assert body.index("4-bit teacher cost") < body.index(fourbit["headline"][0][:30]) < body.index("How it was")
