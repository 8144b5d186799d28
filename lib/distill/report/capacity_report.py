"""The capacity grid's analysis: intervals, the share of the teacher kept, distillation's gain, the headline.

Intervals: a size's F1 is the mean over seeds and questions; its 95% interval is a t interval over
questions of the per-question F1 averaged over seeds (the exam's sampling error). Distilled minus CE-only
is paired twice: per question (averaged over seeds; the interval that more questions narrow) and per seed
(how many seeds agree). The share of the teacher's F1 a student keeps is a ratio of means over the same
questions, with a paired bootstrap interval over questions. Only 04_capacity's report stage reads this
module, so changing the analysis re-renders the report and re-trains nothing.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill.core import paths
from distill.core.params import StudyParams
from distill.report import stats
from distill.study.capacity import arms, cells, score_file

KEPT_GOAL = 0.9  # the share of the teacher's F1 a student must keep to count as "keeps the teacher"
RECORD_KEYS = ("variant", "layers", "params_m", "seed", "n_questions", "exact_match", "f1", "answer_loss",
               "top1_accuracy", "latency_batch1_ms_median", "latency_batch1_ms_p90", "latency_batch1_fixed_ms_median",
               "latency_batch1_fixed_ms_p90", "latency_batch1_prompts", "throughput_batched_examples_per_s")


LATENCIES = ("latency_batch1_ms_median", "latency_batch1_ms_p90", "latency_batch1_fixed_ms_median",
             "latency_batch1_fixed_ms_p90")


def load_scores(base: StudyParams, partial: bool = False) -> list[dict[str, Any]]:
    """Every score file of the grid (the teacher first), as the score stages wrote them. `partial`: only those
    written so far (a grid still running; the teacher's is needed)."""
    if not base.capacity_keep:
        raise ValueError(f"run {base.run_name} has no capacity grid (capacity_keep is empty); run a profile that has "
                         "one: make capacity (params/capacity_cpu.yaml)")
    files = [score_file(base, "teacher")] + [score_file(base, v, k, s) for k, s in cells(base) for v in arms(base)]
    if partial:
        files = files[:1] + [f for f in files[1:] if f.exists()]
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


def kept_interval(student: np.ndarray, teacher: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval (over questions) of mean(student) / mean(teacher)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(teacher), size=(draws, len(teacher)))
    ratios = student[idx].mean(axis=1) / np.maximum(teacher[idx].mean(axis=1), 1e-9)
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def same_questions(scores: list[dict[str, Any]]) -> list[str]:
    """The question ids every model of a grid was scored on (the teacher's first); a model scored on others is an
    error: paired differences need one exam."""
    ids = next(s for s in scores if s["variant"] == "teacher")["question_ids"]
    for s in scores:
        if s["question_ids"] != ids:
            raise ValueError(f"{s['variant']} {s['layers']} layers seed {s['seed']} was scored on other questions than "
                             "the teacher; score every model of the grid again")
    return ids


def analyse(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size and variant: means, seed spread, intervals, the share of the teacher kept; per size the paired
    distilled-minus-CE-only gain."""
    teacher = next(s for s in scores if s["variant"] == "teacher")
    ids = same_questions(scores)
    teacher_q = 100.0 * np.array(teacher["f1_per_question"], dtype=float)
    sizes = sorted({s["layers"] for s in scores if s["variant"] != "teacher"}, reverse=True)
    curve, gains = [], []
    variants = ("ce_baseline", "distilled")  # this analysis compares the study's two students (the default arms)
    for layers in sizes:
        for variant in variants:
            rows = [s for s in scores if s["layers"] == layers and s["variant"] == variant]
            per_q = _per_question(scores, layers, variant).mean(axis=0)  # averaged over seeds
            f1_low, f1_high = _t_interval(per_q)
            kept_low, kept_high = kept_interval(per_q, teacher_q)
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
                **{k: statistics.fmean(s[k] for s in rows) for k in LATENCIES},
                "speedup_batch1": teacher["latency_batch1_ms_median"] /
                statistics.fmean(s["latency_batch1_ms_median"] for s in rows),
                "speedup_batch1_fixed": teacher["latency_batch1_fixed_ms_median"] /
                statistics.fmean(s["latency_batch1_fixed_ms_median"] for s in rows)})
        dist, ce = _per_question(scores, layers, "distilled"), _per_question(scores, layers, "ce_baseline")
        diff_q = (dist - ce).mean(axis=0)
        low, high = _t_interval(diff_q)
        seed_diffs = (dist - ce).mean(axis=1)
        loss = {v: sorted([s for s in scores if s["layers"] == layers and s["variant"] == v], key=lambda s: s["seed"])
                for v in variants}
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
             f"{t['exact_match']:.1f} on {n} SQuAD validation questions; one request at a time it answers in "
             f"{t['latency_batch1_ms_median']:.0f} ms (median; {t['latency_batch1_fixed_ms_median']:.0f} ms for a "
             f"full-length answer)."]
    keeps = curve[curve["kept_f1"] >= result["kept_goal"]].sort_values("params_m")
    if len(keeps):
        r = keeps.iloc[0]
        sure = "its interval's low end clears 90% too" if r["kept_f1_ci95_low"] >= result["kept_goal"] else \
            f"but its interval reaches down to {100 * r['kept_f1_ci95_low']:.0f}%"
        lines.append(f"The smallest student that keeps at least 90% of the teacher's F1 is the {int(r['layers'])}-layer "
                     f"{_name(r['variant'])} one: {100 * r['params_share']:.0f}% of the teacher's parameters, "
                     f"F1 {r['f1']:.1f} = {100 * r['kept_f1']:.0f}% of the teacher's [95% interval "
                     f"{100 * r['kept_f1_ci95_low']:.0f}-{100 * r['kept_f1_ci95_high']:.0f}%] ({sure}); "
                     f"{_speed(r)}.")
    else:
        best = curve.sort_values("kept_f1", ascending=False).iloc[0]
        lines.append(f"No student keeps 90% of the teacher's F1. The best, the {int(best['layers'])}-layer "
                     f"{_name(best['variant'])} student ({100 * best['params_share']:.0f}% of the parameters), keeps "
                     f"{100 * best['kept_f1']:.0f}% [{100 * best['kept_f1_ci95_low']:.0f}-"
                     f"{100 * best['kept_f1_ci95_high']:.0f}%] ({_speed(best)}); the smallest "
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


def _speed(r) -> str:
    def ratio(x: float) -> str:
        return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"
    return (f"per request {ratio(r['speedup_batch1_fixed'])} than the teacher at a fixed answer length, "
            f"{ratio(r['speedup_batch1'])} to the end of its own answers")


def _name(variant: str) -> str:
    return {"distilled": "distilled", "ce_baseline": "CE-only", "teacher": "teacher"}[variant]


def records(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per scored model, with its F1 per question {question id: F1 in [0, 1]} (the paired intervals
    are recomputed from these)."""
    return [{**{k: s.get(k) for k in RECORD_KEYS}, "f1_per_question": dict(zip(s["question_ids"], s["f1_per_question"]))}
            for s in scores]


def table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per size and variant, as the report shows it."""
    t = result["teacher"]
    rows = [{"model": "teacher", "layers": t["layers"], "params (M)": t["params_m"], "params (% teacher)": 100.0,
             "F1": t["f1"], "F1 95% CI": "", "F1 sd (seeds)": float("nan"), "kept F1 (%)": 100.0, "kept 95% CI": "",
             "EM": t["exact_match"], "answer loss": t["answer_loss"], "top-1": t["top1_accuracy"],
             **_latency_columns(t, 1.0, 1.0)}]
    for r in result["curve"]:
        rows.append({"model": _name(r["variant"]), "layers": r["layers"], "params (M)": r["params_m"],
                     "params (% teacher)": 100 * r["params_share"], "F1": r["f1"],
                     "F1 95% CI": f"{r['f1_ci95_low']:.1f}-{r['f1_ci95_high']:.1f}", "F1 sd (seeds)": r["f1_sd_seeds"],
                     "kept F1 (%)": 100 * r["kept_f1"],
                     "kept 95% CI": f"{100 * r['kept_f1_ci95_low']:.0f}-{100 * r['kept_f1_ci95_high']:.0f}",
                     "EM": r["exact_match"], "answer loss": r["answer_loss"], "top-1": r["top1_accuracy"],
                     **_latency_columns(r, r["speedup_batch1_fixed"], r["speedup_batch1"])})
    return pd.DataFrame(rows)


def _latency_columns(r, fixed_speedup: float, speedup: float) -> dict[str, float]:
    return {"ms/request, fixed length (median)": r["latency_batch1_fixed_ms_median"],
            "(p90)": r["latency_batch1_fixed_ms_p90"], "speedup, fixed length": fixed_speedup,
            "ms/request, to answer's end (median)": r["latency_batch1_ms_median"],
            "(p90) ": r["latency_batch1_ms_p90"], "speedup, to answer's end": speedup}


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
    paths.write_text_atomic(folder / "capacity.json", json.dumps(out, indent=1, default=json_default))
    paths.write_text_atomic(folder / "capacity_table.csv", table(result).to_csv(index=False))
    return folder / "capacity.json"


def json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
