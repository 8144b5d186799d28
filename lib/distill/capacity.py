"""The capacity grid: how small can the student get, and where does distillation pay?

Students of several sizes are cut from the run's tuned teacher (the layers `prune_method` ranks highest,
from the importance 00_teacher measured), and each is trained CE-only and distilled from the run's teacher
cache, once per seed. Per seed every size sees the same training examples, windows and batch order, so a
difference between sizes is the size's. Every model answers the same `capacity_questions` validation
questions; each is also timed answering `latency_prompts` of them one at a time (batch 1).

Intervals: a size's F1 is the mean over seeds and questions; its 95% interval is a t interval over
questions of the per-question F1 averaged over seeds (the exam's sampling error). Distilled minus CE-only
is paired twice: per question (averaged over seeds; the interval that more questions narrow) and per seed
(how many seeds agree). The share of the teacher's F1 a student keeps is a ratio of means over the same
questions, with a paired bootstrap interval over questions.

    python -m distill run params/capacity_cpu.yaml --only capacity-report     (make capacity)
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paths, stats
from .params import StudyParams

VARIANTS = ("ce_baseline", "distilled")
KEPT_GOAL = 0.9  # the share of the teacher's F1 a student must keep to count as "keeps the teacher"
RECORD_KEYS = ("variant", "layers", "params_m", "seed", "n_questions", "exact_match", "f1", "answer_loss",
               "top1_accuracy", "latency_batch1_ms_median", "latency_batch1_ms_p90", "latency_batch1_prompts",
               "throughput_batched_examples_per_s")


# --------------------------------------------------------------------------------------------
# Where the grid lives
# --------------------------------------------------------------------------------------------
def capacity_dir(base: StudyParams) -> Path:
    return base.run_dir / "capacity"


def student_dir(base: StudyParams, keep: int) -> Path:
    """The untrained student of `keep` layers, cut from the tuned teacher."""
    return capacity_dir(base) / "students" / f"keep{keep}"


def seed_dir(base: StudyParams, keep: int, seed: int) -> Path:
    return capacity_dir(base) / f"keep{keep}" / f"seed{seed}"


def score_file(base: StudyParams, model: str, keep: int | None = None, seed: int | None = None) -> Path:
    q = base.capacity_questions
    if model == "teacher":
        return capacity_dir(base) / "teacher" / f"scores_{q}q.json"
    return seed_dir(base, keep, seed) / "scores" / f"{model}_{q}q.json"


def seed_params(base: StudyParams, keep: int, seed: int) -> StudyParams:
    """The params one grid cell trains with: the base run's, this seed, the student of `keep` layers; the base
    run's tuned teacher and teacher cache."""
    from .pipeline import project_relative

    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    # the leading underscore keeps the cells' own training reports out of git (see .gitignore)
    return base.replace(seed=seed, student=rel(student_dir(base, keep)), capacity_keep=[],
                        run_name=f"_{base.run_name}_keep{keep}_seed{seed}", output_dir=rel(seed_dir(base, keep, seed)),
                        deploy_dir="", base_run_dir=rel(base.run_dir))


def cells(base: StudyParams) -> list[tuple[int, int]]:
    return [(keep, seed) for keep in sorted(base.capacity_keep, reverse=True) for seed in base.capacity_seeds]


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def stages(base: StudyParams) -> list:
    """The grid's DVC stages: cut the students, train and score each cell, score the teacher, the report."""
    if not base.capacity_keep:
        return []
    from . import study
    from .pipeline import RUNTIME, SCORING, Stage, base_models_dirs, project_relative, train_stage

    rel = lambda path, what="output_dir": project_relative(path, what)  # noqa: E731
    lib = "lib/distill"
    code = [f"{lib}/{m}.py" for m in ("params", "data", "models", "sources", "tiny", "study", "paths", "stage",
                                      "capacity")]
    scoring_code = [*code, f"{lib}/benchmark.py", f"{lib}/metrics.py", f"{lib}/merge.py", f"{lib}/sweep.py"]
    made = [rel(d) for d in base_models_dirs(base)]
    teacher_dir = [rel(study.tuned_teacher_dir(base))] if base.teacher_finetune else []
    out = [Stage("capacity-students", ["capacity-students"],
                 RUNTIME + ["capacity_keep", "prune_method", "teacher", "teacher_finetune"],
                 deps=[*code, f"{lib}/pruning.py", *made], outs=[rel(student_dir(base, k)) for k in base.capacity_keep],
                 title=f"Capacity grid: students of {', '.join(map(str, sorted(base.capacity_keep)))} layers")]
    keys = [k for k in SCORING if k != "bench_size"] + ["capacity_questions", "latency_prompts"]
    score_files = [rel(score_file(base, "teacher"))]
    out.append(Stage("capacity-score-teacher", ["capacity-score", "teacher"],
                     keys + ["teacher", "teacher_load_in_4bit", "bnb_compute_dtype"],
                     deps=[*scoring_code, *teacher_dir], outs=score_files[:], title="Capacity grid: the teacher"))
    for keep, seed in cells(base):
        sp = seed_params(base, keep, seed)
        student = rel(student_dir(base, keep))
        for variant in VARIANTS:
            name = f"capacity-keep{keep}-seed{seed}-{variant}"
            train = train_stage(sp, variant, name, ["capacity-train", str(keep), str(seed), variant])
            train.params = [k for k in train.params if k not in ("seed", "student")]  # this cell's are in its name
            train.deps.append(student)
            train.deps_models.append(student)
            out.append(train)
            f = rel(score_file(base, variant, keep, seed))
            score_files.append(f)
            out.append(Stage(f"score-{name}", ["capacity-score", variant, str(keep), str(seed)], keys,
                             deps=[*scoring_code, *train.persist, student, *teacher_dir], outs=[f],
                             title=f"Capacity grid: {keep} layers, seed {seed}, {variant}"))
    rep = rel(base.report_dir, "reports")
    out.append(Stage("capacity-report", ["capacity-report"],
                     ["run_name", "capacity_keep", "capacity_seeds", "capacity_questions"],
                     deps=["notebooks/04_capacity.py", f"{lib}/capacity.py", f"{lib}/plots.py", f"{lib}/runner.py",
                           f"{lib}/stats.py", *score_files],
                     reports=[f"{rep}/{f}" for f in REPORT_FILES] + [f"{rel(base.run_dir)}/executed/04_capacity.ipynb"],
                     notebook="04_capacity", title="Capacity: how small can the student get?"))
    return out


REPORT_FILES = ("04_capacity.html", "capacity.json", "capacity_table.csv", "capacity_f1_vs_params.png",
                "capacity_f1_vs_latency.png", "capacity_distillation_gain.png")


def make_students(base: StudyParams) -> list[dict[str, Any]]:
    """Cut every grid size from the tuned teacher, ranked by the importance 00_teacher measured."""
    from . import models, pruning, study

    info = json.loads((study.student_init_dir(base) / "pruning.json").read_text(encoding="utf-8"))
    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    source = study.teacher_source(base)
    teacher = models.load_model(source, dtype=base.model_dtype, device=device)
    tokenizer = models.load_tokenizer(source)
    n_layers = len(models.decoder_layers(teacher))
    too_big = [k for k in base.capacity_keep if k >= n_layers]
    if too_big:
        raise ValueError(f"capacity_keep: {too_big} is not smaller than the teacher's {n_layers} layers; give sizes "
                         f"below {n_layers}")
    made = []
    for keep in sorted(base.capacity_keep, reverse=True):
        layers = pruning.choose_layers(n_layers, keep, base.prune_method, info["importance"])
        student = pruning.prune_layers(teacher, layers)
        meta = {"kept_layers": layers, "importance": info["importance"], "method": base.prune_method}
        models.atomic_save_pretrained(student, tokenizer, student_dir(base, keep),
                                      extra=lambda tmp, m=meta: (tmp / "pruning.json").write_text(json.dumps(m, indent=1)))
        made.append({"layers": keep, "kept": layers, "params_m": models.count_params(student) / 1e6})
        print(f"{keep} layers {layers}: {made[-1]['params_m']:.1f} M parameters", flush=True)
        del student
    return made


def score(base: StudyParams, model: str, keep: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Score one model of the grid on the capacity questions (EM/F1, answer loss, top-1) and time it at batch 1."""
    import time

    from . import benchmark, metrics, models, study, sweep

    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    rows = study.bench_rows(base, base.capacity_questions)  # the base run's questions, whatever the cell's seed
    if model == "teacher":
        sp = base
        loaded, tokenizer = study.load_teacher(base, device)
    else:
        sp = seed_params(base, keep, seed)
        loaded, tokenizer = sweep.load_student_or_reference(sp, model, device)
    t0 = time.perf_counter()
    kwargs = dict(max_length=sp.max_length, max_new_tokens=sp.max_new_tokens, seed=base.seed, device=device)
    result = benchmark.evaluate(loaded, tokenizer, rows, batch_size=sp.bench_batch_size, **kwargs)
    latency = benchmark.request_latency(loaded, tokenizer, rows[:base.latency_prompts], **kwargs)
    per_question = metrics.per_example_scores(result["predictions"], result["references"])
    out = {"variant": model, "layers": keep if keep is not None else len(models.decoder_layers(loaded)),
           "params_m": models.count_params(loaded) / 1e6, "seed": base.seed if seed is None else seed,
           "n_questions": result["n_examples"], **{k: result[k] for k in ("exact_match", "f1", "answer_loss",
                                                                          "top1_accuracy", "answer_tokens")},
           **latency, "throughput_batched_examples_per_s": result["throughput_examples_per_s"],
           "question_ids": result["question_ids"], "f1_per_question": [r["f1"] for r in per_question],
           "em_per_question": [r["exact_match"] for r in per_question],
           "predictions": dict(zip(result["question_ids"], result["predictions"])),
           "wall_s": time.perf_counter() - t0}
    f = score_file(base, model, keep, seed)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    print(f"{model} {out['layers']} layers seed {out['seed']}: EM {out['exact_match']:.1f} F1 {out['f1']:.1f} "
          f"answer loss {out['answer_loss']:.3f}, batch-1 latency {out['latency_batch1_ms_median']:.0f} ms "
          f"(median of {out['latency_batch1_prompts']}), {out['wall_s']:.0f} s", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------
def load_scores(base: StudyParams) -> list[dict[str, Any]]:
    """Every score file of the grid (the teacher first), as the score stages wrote them."""
    if not base.capacity_keep:
        raise ValueError(f"run {base.run_name} has no capacity grid (capacity_keep is empty); run a profile that has "
                         "one: make capacity (params/capacity_cpu.yaml)")
    files = [score_file(base, "teacher")] + [score_file(base, v, k, s) for k, s in cells(base) for v in VARIANTS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} capacity score file(s) missing, e.g. {missing[0]}; run "
                                "python -m distill run <params> --only capacity-report (make capacity)")
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def _per_question(scores: list[dict[str, Any]], layers: int, variant: str) -> np.ndarray:
    """[seeds, questions] F1 in percent of one size and variant."""
    rows = [s for s in scores if s["layers"] == layers and s["variant"] == variant]
    return 100.0 * np.array([s["f1_per_question"] for s in sorted(rows, key=lambda s: s["seed"])], dtype=float)


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    low, high = stats.ci95([float(v) for v in values])
    return low, high


def _kept_interval(student: np.ndarray, teacher: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval (over questions) of mean(student) / mean(teacher)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(teacher), size=(draws, len(teacher)))
    ratios = student[idx].mean(axis=1) / np.maximum(teacher[idx].mean(axis=1), 1e-9)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def analyse(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size and variant: means, seed spread, intervals, the share of the teacher kept; per size the paired
    distilled-minus-CE-only gain."""
    teacher = next(s for s in scores if s["variant"] == "teacher")
    ids = teacher["question_ids"]
    for s in scores:
        if s["question_ids"] != ids:
            raise ValueError(f"{s['variant']} {s['layers']} layers seed {s['seed']} was scored on other questions than "
                             "the teacher; score every model of the grid again")
    teacher_q = 100.0 * np.array(teacher["f1_per_question"], dtype=float)
    sizes = sorted({s["layers"] for s in scores if s["variant"] != "teacher"}, reverse=True)
    curve, gains = [], []
    for layers in sizes:
        for variant in VARIANTS:
            rows = [s for s in scores if s["layers"] == layers and s["variant"] == variant]
            per_q = _per_question(scores, layers, variant).mean(axis=0)  # averaged over seeds
            f1_low, f1_high = _t_interval(per_q)
            kept_low, kept_high = _kept_interval(per_q, teacher_q)
            seed_f1 = [s["f1"] for s in rows]
            curve.append({
                "layers": layers, "variant": variant, "seeds": len(rows), "n_questions": len(per_q),
                "params_m": rows[0]["params_m"], "params_share": rows[0]["params_m"] / teacher["params_m"],
                "f1": float(per_q.mean()), "f1_ci95_low": f1_low, "f1_ci95_high": f1_high,
                "f1_sd_seeds": stats.mean_sd(seed_f1)[1],
                "exact_match": statistics.fmean(s["exact_match"] for s in rows),
                "answer_loss": statistics.fmean(s["answer_loss"] for s in rows),
                "answer_loss_sd_seeds": stats.mean_sd([s["answer_loss"] for s in rows])[1],
                "top1_accuracy": statistics.fmean(s["top1_accuracy"] for s in rows),
                "kept_f1": float(per_q.mean() / max(teacher_q.mean(), 1e-9)), "kept_f1_ci95_low": kept_low,
                "kept_f1_ci95_high": kept_high,
                "latency_batch1_ms_median": statistics.fmean(s["latency_batch1_ms_median"] for s in rows),
                "latency_batch1_ms_p90": statistics.fmean(s["latency_batch1_ms_p90"] for s in rows),
                "speedup_batch1": teacher["latency_batch1_ms_median"] /
                statistics.fmean(s["latency_batch1_ms_median"] for s in rows)})
        dist, ce = _per_question(scores, layers, "distilled"), _per_question(scores, layers, "ce_baseline")
        diff_q = (dist - ce).mean(axis=0)
        low, high = _t_interval(diff_q)
        seed_diffs = (dist - ce).mean(axis=1)
        loss = {v: sorted([s for s in scores if s["layers"] == layers and s["variant"] == v], key=lambda s: s["seed"])
                for v in VARIANTS}
        loss_diffs = [d["answer_loss"] - c["answer_loss"] for d, c in zip(loss["distilled"], loss["ce_baseline"])]
        loss_low, loss_high = stats.ci95(loss_diffs)
        gains.append({"layers": layers, "params_m": loss["distilled"][0]["params_m"], "f1_gain": float(diff_q.mean()),
                      "f1_gain_ci95_low": low, "f1_gain_ci95_high": high,
                      "f1_gain_per_seed": [float(d) for d in seed_diffs],
                      "f1_gain_seeds_won": f"{int((seed_diffs > 0).sum())}/{len(seed_diffs)}",
                      "resolved": bool(low > 0 or high < 0),
                      "answer_loss_gain": statistics.fmean(loss_diffs), "answer_loss_gain_ci95_low": loss_low,
                      "answer_loss_gain_ci95_high": loss_high})
    return {"teacher": {k: teacher[k] for k in RECORD_KEYS if k in teacher}, "curve": curve, "gains": gains,
            "n_questions": len(ids), "kept_goal": KEPT_GOAL}


def headline(result: dict[str, Any]) -> list[str]:
    """The answer in plain sentences, generated from the numbers."""
    t = result["teacher"]
    curve = pd.DataFrame(result["curve"])
    n = result["n_questions"]
    lines = [f"Teacher ({t['layers']} layers, {t['params_m']:.0f} M parameters): F1 {t['f1']:.1f}, EM "
             f"{t['exact_match']:.1f} on {n} SQuAD validation questions; batch-1 latency "
             f"{t['latency_batch1_ms_median']:.0f} ms (median)."]
    keeps = curve[curve["kept_f1"] >= result["kept_goal"]].sort_values("params_m")
    if len(keeps):
        r = keeps.iloc[0]
        sure = "its interval's low end clears 90% too" if r["kept_f1_ci95_low"] >= result["kept_goal"] else \
            f"but its interval reaches down to {100 * r['kept_f1_ci95_low']:.0f}%"
        lines.append(f"The smallest student that keeps at least 90% of the teacher's F1 is the {int(r['layers'])}-layer "
                     f"{_name(r['variant'])} one: {100 * r['params_share']:.0f}% of the teacher's parameters, "
                     f"F1 {r['f1']:.1f} = {100 * r['kept_f1']:.0f}% of the teacher's [95% interval "
                     f"{100 * r['kept_f1_ci95_low']:.0f}-{100 * r['kept_f1_ci95_high']:.0f}%] ({sure}), "
                     f"{r['speedup_batch1']:.2f}x faster per request.")
    else:
        best = curve.sort_values("kept_f1", ascending=False).iloc[0]
        lines.append(f"No student keeps 90% of the teacher's F1. The best, the {int(best['layers'])}-layer "
                     f"{_name(best['variant'])} student ({100 * best['params_share']:.0f}% of the parameters), keeps "
                     f"{100 * best['kept_f1']:.0f}% [{100 * best['kept_f1_ci95_low']:.0f}-"
                     f"{100 * best['kept_f1_ci95_high']:.0f}%]; the smallest "
                     f"({int(curve['layers'].min())} layers) keeps "
                     f"{100 * curve[curve['layers'] == curve['layers'].min()]['kept_f1'].max():.0f}%.")
    gains = pd.DataFrame(result["gains"])
    g = gains.sort_values("f1_gain", ascending=False).iloc[0]
    verdict = "resolved: the interval excludes 0" if g["resolved"] else "unresolved: the interval spans 0"
    lines.append(f"Distillation's F1 gain over CE-only is largest at {int(g['layers'])} layers: "
                 f"{g['f1_gain']:+.1f} F1 [{g['f1_gain_ci95_low']:+.1f}, {g['f1_gain_ci95_high']:+.1f}] over {n} "
                 f"questions, {g['f1_gain_seeds_won']} seeds ({verdict}).")
    resolved = gains[gains["resolved"]]
    if len(resolved):
        lines.append("Resolved at " + ", ".join(f"{int(r.layers)} layers ({r.f1_gain:+.1f})"
                                                for r in resolved.itertuples()) + "; every other size's interval spans 0.")
    else:
        lines.append("At no size does the interval of distillation's F1 gain exclude 0.")
    return lines


def _name(variant: str) -> str:
    return {"distilled": "distilled", "ce_baseline": "CE-only", "teacher": "teacher"}[variant]


def records(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: s.get(k) for k in RECORD_KEYS} for s in scores]


def table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per size and variant, as the report shows it."""
    t = result["teacher"]
    rows = [{"model": "teacher", "layers": t["layers"], "params (M)": t["params_m"], "params (% teacher)": 100.0,
             "F1": t["f1"], "F1 95% CI": "", "F1 sd (seeds)": float("nan"), "kept F1 (%)": 100.0, "kept 95% CI": "",
             "EM": t["exact_match"], "answer loss": t["answer_loss"], "top-1": t["top1_accuracy"],
             "batch-1 median (ms)": t["latency_batch1_ms_median"], "batch-1 p90 (ms)": t["latency_batch1_ms_p90"],
             "speedup (batch 1)": 1.0}]
    for r in result["curve"]:
        rows.append({"model": _name(r["variant"]), "layers": r["layers"], "params (M)": r["params_m"],
                     "params (% teacher)": 100 * r["params_share"], "F1": r["f1"],
                     "F1 95% CI": f"{r['f1_ci95_low']:.1f}-{r['f1_ci95_high']:.1f}", "F1 sd (seeds)": r["f1_sd_seeds"],
                     "kept F1 (%)": 100 * r["kept_f1"],
                     "kept 95% CI": f"{100 * r['kept_f1_ci95_low']:.0f}-{100 * r['kept_f1_ci95_high']:.0f}",
                     "EM": r["exact_match"], "answer loss": r["answer_loss"], "top-1": r["top1_accuracy"],
                     "batch-1 median (ms)": r["latency_batch1_ms_median"], "batch-1 p90 (ms)": r["latency_batch1_ms_p90"],
                     "speedup (batch 1)": r["speedup_batch1"]})
    return pd.DataFrame(rows)


def gains_table(result: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"layers": g["layers"], "params (M)": g["params_m"],
                          "F1 gain": g["f1_gain"], "F1 95% CI": f"{g['f1_gain_ci95_low']:+.1f} to {g['f1_gain_ci95_high']:+.1f}",
                          "seeds won": g["f1_gain_seeds_won"],
                          "per seed": ", ".join(f"{d:+.1f}" for d in g["f1_gain_per_seed"]),
                          "verdict": "resolved" if g["resolved"] else "unresolved (spans 0)",
                          "answer-loss change (nats)": g["answer_loss_gain"],
                          "loss 95% CI (seeds)": f"{g['answer_loss_gain_ci95_low']:+.3f} to "
                                                 f"{g['answer_loss_gain_ci95_high']:+.3f}"}
                         for g in result["gains"]])


def write(base: StudyParams, scores: list[dict[str, Any]], result: dict[str, Any]) -> Path:
    """reports/<run>/capacity.json ({"records": [...]} plus the analysis) and capacity_table.csv."""
    folder = base.report_dir
    out = {"records": records(scores), "question_ids": scores[0]["question_ids"], "headline": headline(result),
           **result}
    paths.write_text_atomic(folder / "capacity.json", json.dumps(out, indent=1, default=_json_default))
    paths.write_text_atomic(folder / "capacity_table.csv", table(result).to_csv(index=False))
    return folder / "capacity.json"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
