"""The capacity grid: its params, its stages, its statistics, and (slow) a whole grid on the tiny models."""
import json
import math
import re

import numpy as np
import pytest

from distill.core import params, paths
from distill.parts import benchmark, data, models
from distill.pipeline import dvc
from distill.report import capacity_report, stats
from distill.study import cache, capacity, layout, steps, sweep


def grid_params(**changes):
    base = params.load("params/smoke.yaml").replace(
        student="prune", prune_keep=3, capacity_keep=[3, 2], capacity_seeds=[0, 1], capacity_questions=8,
        latency_prompts=2, teacher_cache="sampled", teacher_cache_k=4, beta_mse=0.0, distill_positions="answer",
        output_dir="artifacts/smoke_grid", run_name="smoke_grid")
    return base.replace(**changes)


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(student="tiny:student"), "needs student: prune"),
    (dict(capacity_keep=[3, 3]), "distinct layer counts"),
    (dict(capacity_keep=[0, 2]), "distinct layer counts"),
    (dict(capacity_seeds=[]), "distinct seeds"),
    (dict(capacity_seeds=[1, 1]), "distinct seeds"),
    (dict(latency_prompts=9), "exceeds capacity_questions"),
])
def test_bad_grids_are_refused_before_any_model_loads(changes, message):
    with pytest.raises(params.ParamsError, match=message):
        grid_params(**changes)


def test_the_cpu_profile_is_a_grid_of_four_sizes_three_seeds_and_300_questions():
    p = params.load("params/capacity_cpu.yaml")
    assert len(p.capacity_keep) >= 4 and len(p.capacity_seeds) >= 3 and p.capacity_questions >= 300
    assert p.teacher_finetune and p.teacher_cache != "none"


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def test_every_cell_trains_from_its_own_student_and_is_scored_on_the_grids_questions(monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")  # the pipeline tracks only the project
    monkeypatch.setattr(sweep, "load_registry", lambda base: {"questions": 0, "sweeps": {}})
    p = grid_params()
    s = {x.name: x for x in dvc.stages(p)}
    students = {k: f"artifacts/smoke_grid/capacity/students/keep{k}" for k in (3, 2)}
    assert s["capacity-students"].outs == list(students.values())
    for keep in (3, 2):
        for seed in (0, 1):
            for variant in capacity.arms(p):
                name = f"capacity-keep{keep}-seed{seed}-{variant}"
                assert students[keep] in s[name].deps and "seed" not in s[name].params
                assert s[name].persist == [f"artifacts/smoke_grid/capacity/keep{keep}/seed{seed}/students/{variant}"]
                view = [d for d in s[name].deps if "/views/" in d]
                assert bool(view) == (variant == "distilled")  # only the distilled student reads the cache
                score = s[f"score-{name}"]
                assert s[name].persist[0] in score.deps and "capacity_questions" in score.params
                assert score.outs[0] in s["capacity-report"].deps
    # the smoke teacher is held in NF4: its score file says so
    assert "artifacts/smoke_grid/capacity/teacher/scores_8q-nf4-float32.json" in s["capacity-report"].deps
    users = cache.cache_users(p)
    assert sorted(u.run_name for u in users if u.run_name.startswith("_")) == \
        sorted(f"_smoke_grid_keep{k}_seed{s}" for k in (3, 2) for s in (0, 1))
    assert {"capacity_keep", "capacity_seeds"} <= set(s["teacher-cache"].params)
    assert "capacity-report" not in {x.name for x in dvc.stages(grid_params(capacity_keep=[]))}


def test_every_size_sees_the_same_examples_per_seed():
    p = grid_params()
    rows = {(k, s): steps.load_data(capacity.seed_params(p, k, s)).train_rows for k in (3, 2) for s in (0, 1)}
    ids = {key: [r["id"] for r in v] for key, v in rows.items()}
    assert ids[(3, 0)] == ids[(2, 0)] and ids[(3, 1)] == ids[(2, 1)]
    assert ids[(3, 0)] != ids[(3, 1)]
    cell = capacity.seed_params(p, 2, 1)
    assert cell.seed == 1 and cell.student == "artifacts/smoke_grid/capacity/students/keep2"
    assert layout.tuned_teacher_dir(cell) == layout.tuned_teacher_dir(p)  # one teacher for the whole grid


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def score(variant, layers, seed, f1s, params_m, loss=1.0, latency=100.0):
    n = len(f1s)
    return {"variant": variant, "layers": layers, "params_m": params_m, "seed": seed, "n_questions": n,
            "exact_match": 50.0, "f1": 100 * sum(f1s) / n, "answer_loss": loss, "top1_accuracy": 0.5,
            "latency_batch1_ms_median": latency, "latency_batch1_ms_p90": latency * 1.2, "latency_batch1_prompts": 4,
            "latency_batch1_fixed_ms_median": latency * 1.5, "latency_batch1_fixed_ms_p90": latency * 1.8,
            "throughput_batched_examples_per_s": 1.0, "question_ids": [f"q{i}" for i in range(n)],
            "f1_per_question": list(f1s), "em_per_question": [float(f == 1) for f in f1s],
            "predictions": {f"q{i}": f"{variant} {seed} answer {i}" for i in range(n)}}


RNG = np.random.default_rng(0)
TEACHER_Q = RNG.uniform(0.3, 1.0, 200)


def grid_scores(gain_small=0.2, gain_big=0.0):
    """Teacher; a big student (90%+ of the teacher) and a small one where distillation adds `gain_small` per question."""
    out = [score("teacher", 4, 0, TEACHER_Q, 10.0, latency=200.0)]
    for seed in (0, 1, 2):
        noise = RNG.normal(0, 0.05, 200)
        big = np.clip(TEACHER_Q * 0.95 + noise, 0, 1)
        small = np.clip(TEACHER_Q * 0.5 + noise, 0, 1)
        out += [score("ce_baseline", 3, seed, big, 8.0, 1.2, 150.0),
                score("distilled", 3, seed, np.clip(big + gain_big, 0, 1), 8.0, 1.1, 150.0),
                score("ce_baseline", 2, seed, small, 6.0, 2.0, 100.0),
                score("distilled", 2, seed, np.clip(small + gain_small, 0, 1), 6.0, 1.8, 100.0)]
    return out


def test_analysis_means_intervals_and_the_share_of_the_teacher_kept():
    scores = grid_scores()
    result = capacity_report.analyse(scores)
    row = next(r for r in result["curve"] if r["layers"] == 2 and r["variant"] == "distilled")
    per_q = 100 * np.mean([s["f1_per_question"] for s in scores if s["layers"] == 2 and s["variant"] == "distilled"],
                          axis=0)
    assert row["f1"] == pytest.approx(per_q.mean())
    assert (row["f1_ci95_low"], row["f1_ci95_high"]) == pytest.approx(stats.ci95(list(per_q)))
    assert row["kept_f1"] == pytest.approx(per_q.mean() / (100 * TEACHER_Q.mean()))
    assert row["kept_f1_ci95_low"] < row["kept_f1"] < row["kept_f1_ci95_high"]
    assert row["speedup_batch1"] == pytest.approx(2.0) and row["speedup_batch1_fixed"] == pytest.approx(2.0)
    assert row["params_share"] == pytest.approx(0.6)
    gains = {g["layers"]: g for g in result["gains"]}
    assert gains[2]["resolved"] and gains[2]["f1_gain_ci95_low"] > 0 and gains[2]["f1_gain_seeds_won"] == "3/3"
    assert not gains[3]["resolved"] and gains[3]["f1_gain"] == pytest.approx(0.0)
    assert gains[2]["answer_loss_gain"] == pytest.approx(-0.2)


def test_the_headline_names_the_smallest_student_that_keeps_90_percent_and_where_distillation_pays():
    lines = capacity_report.headline(capacity_report.analyse(grid_scores()))
    text = " ".join(lines)
    assert "The smallest student that keeps at least 90% of the teacher's F1 is the 3-layer" in text
    assert re.search(r"largest at 2 layers: \+\d+\.\d F1 \[\+\d+\.\d, \+\d+\.\d\] over 200 questions, 3/3 seeds "
                     r"\(resolved", text)


def test_no_student_keeping_90_percent_and_no_gain_are_said_plainly():
    scores = [s if s["variant"] == "teacher" or s["layers"] == 2 else
              {**s, "f1_per_question": [0.5 * f for f in s["f1_per_question"]]} for s in grid_scores(gain_small=0.0)]
    text = " ".join(capacity_report.headline(capacity_report.analyse(scores)))
    assert "No student keeps 90% of the teacher's F1" in text
    assert "At no size does the interval of distillation's F1 gain exclude 0" in text


def test_models_scored_on_other_questions_are_refused():
    scores = grid_scores()
    scores[3] = {**scores[3], "question_ids": ["other"] * 200}
    with pytest.raises(ValueError, match="other questions than the teacher"):
        capacity_report.analyse(scores)


def test_a_run_without_a_grid_says_how_to_get_one():
    with pytest.raises(ValueError, match="make capacity"):
        capacity_report.load_scores(grid_params(capacity_keep=[]))


def test_batch1_latency_times_each_prompt_alone(tiny_paths, squad_dir):
    teacher_dir, _ = tiny_paths
    model = models.load_model(str(teacher_dir))
    tokenizer = models.load_tokenizer(str(teacher_dir))
    rows = data.load_squad("validation", str(squad_dir), 50)[:5]
    calls = []
    real = benchmark.generate

    def spy(model_, tok, prompts, max_new_tokens, batch_size, device="cpu", warmup_batches=0, min_new_tokens=0):
        calls.append((len(prompts), batch_size, min_new_tokens))
        return real(model_, tok, prompts, max_new_tokens, batch_size, device, warmup_batches, min_new_tokens)

    benchmark.generate, saved = spy, benchmark.generate
    try:
        out = benchmark.request_latency(model, tokenizer, rows, max_length=96, max_new_tokens=3, seed=0, warmup=1)
    finally:
        benchmark.generate = saved
    # one warm-up, then each of the 5 prompts alone: to the answer's end, then at the fixed length
    assert calls == [(1, 1, 0)] * 6 + [(1, 1, 3)] * 6
    assert out["latency_batch1_prompts"] == 5
    assert 0 < out["latency_batch1_ms_median"] <= out["latency_batch1_ms_p90"]
    assert 0 < out["latency_batch1_fixed_ms_median"] <= out["latency_batch1_fixed_ms_p90"]


# --------------------------------------------------------------------------------------------
# slow: a whole grid on the tiny models
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_grid_runs_end_to_end_and_its_report_opens_with_the_answer(smoke_build):
    """The shared build's grid (conftest's SMOKE_GRID: one size and one seed, every kind of grid stage)."""
    res, project = smoke_build.grid, smoke_build.project
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = project / "reports" / "grid"
    out = json.loads((report / "capacity.json").read_text())
    recs = out["records"]
    assert len(recs) == 1 + 2
    for r in recs:
        assert {"variant", "params_m", "seed", "n_questions", "exact_match", "f1", "answer_loss",
                "latency_batch1_ms_median", "latency_batch1_fixed_ms_median"} <= set(r)
        assert r["n_questions"] == 8 and r["latency_batch1_ms_median"] > 0
    params_by_size = {r["layers"]: r["params_m"] for r in recs}
    assert params_by_size[4] > params_by_size[2]
    assert {(r["variant"], r["layers"], r["seed"]) for r in recs if r["variant"] != "teacher"} == \
        {(v, 2, 0) for v in ("ce_baseline", "distilled")}
    page = (report / "04_capacity.html").read_text()
    assert "Traceback" not in page
    assert 'class="highlight hl-ipython3"' not in page  # no code cells: the report shows results only
    body = re.sub(r"<[^>]+>", " ", page[page.index("<body"):])
    assert body.index("How small can the student get") < body.index(out["headline"][0][:40]) < body.index("How it was")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == 3
    assert 'href="04_capacity.html"' in (report / "index.html").read_text()
    # the cell and the run's own distilled student read the same teacher targets: the teacher ran once per example
    # of the seed, not once per student (32 train + 8 eval + 8 recovery examples)
    cache_log = re.search(r"teacher cache: (\d+) examples", res.stdout)
    assert cache_log and 0 < int(cache_log.group(1)) <= 48, res.stdout[-2000:]
    assert math.isfinite(out["gains"][0]["f1_gain"])


def test_readme_quotes_the_committed_capacity_answer():
    """The README's capacity answer is the committed report's headline, so the two cannot drift apart."""
    committed = json.loads((paths.PROJECT_ROOT / "reports" / "capacity_cpu" / "capacity.json").read_text())
    readme = " ".join((paths.PROJECT_ROOT / "README.md").read_text().split())
    for line in committed["headline"]:
        assert " ".join(line.split()) in readme, line
    recs = committed["records"]
    students = [r for r in recs if r["variant"] != "teacher"]
    assert len({r["layers"] for r in students}) >= 4 and len({r["seed"] for r in students}) >= 3
    assert min(r["n_questions"] for r in recs) >= 300
