"""The signal grid's analysis: which way of giving the student the teacher's signal wins at each size.

A grid with named `capacity_arms` trains every arm at every size and seed; every model answers the same
validation questions. Per size and arm: F1 (mean over seeds and questions; 95% t interval over questions of
the seed-averaged per-question F1), the share of the teacher's F1 kept (paired bootstrap over questions), and
the paired gain over the CE-only arm: per question, averaged over seeds, with a t interval over questions, and
per seed (how many seeds agree). Cost: each arm's training wall time from its stage's record. Written as
`signal.json`: the teacher's and every (size, arm, seed) record with its F1 per question, and beside it each
model's answers in the official SQuAD prediction format ({question id: answer}), so every interval can be
recomputed and every score re-checked by the official script.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill.core import paths
from distill.core.params import StudyParams
from distill.report import stats
from distill.report.capacity_report import json_default, kept_interval, load_scores, same_questions
from distill.study import capacity, layout

PREDICTIONS_DIR = "signal_predictions"


def prediction_name(layers: int | None, arm: str, seed: int | None) -> str:
    return "teacher.json" if arm == "teacher" else f"keep{layers}-{arm}-seed{seed}.json"


def train_minutes(base: StudyParams, keep: int, seed: int, arm: str) -> float | None:
    """Wall minutes of one cell's training stage, as its record says (None when it has none)."""
    sp = capacity.arm_params(base, keep, seed, arm)
    f = layout.record_file(sp, "01_distill" if sp.variant == "distilled" else "01_distill_ce_baseline")
    if not f.exists():
        return None
    return json.loads(f.read_text()).get("wall_s", 0.0) / 60


def collect(base: StudyParams, partial: bool = False) -> dict[str, Any]:
    """signal.json's content: the teacher and one record per (size, arm, seed), each with its F1 per question.
    `partial`: the trainings scored so far, the others listed as "missing" (a grid still running)."""
    scores = load_scores(base, partial)
    teacher = scores[0]
    ids = same_questions(scores)
    per_q = lambda s: dict(zip(s["question_ids"], s["f1_per_question"]))  # noqa: E731
    records = []
    for s in scores[1:]:
        records.append({"layers": s["layers"], "params_m": s["params_m"], "arm": s["variant"], "seed": s["seed"],
                        "n_questions": s["n_questions"], "exact_match": s["exact_match"], "f1": s["f1"],
                        "answer_loss": s["answer_loss"],
                        "train_minutes": train_minutes(base, s["layers"], s["seed"], s["variant"]),
                        "score_minutes": s["wall_s"] / 60,
                        "predictions_file": f"{PREDICTIONS_DIR}/{prediction_name(s['layers'], s['variant'], s['seed'])}",
                        "f1_per_question": per_q(s)})
    return {"teacher": {"layers": teacher["layers"], "params_m": teacher["params_m"], "f1": teacher["f1"],
                        "exact_match": teacher["exact_match"], "answer_loss": teacher["answer_loss"],
                        "predictions_file": f"{PREDICTIONS_DIR}/teacher.json", "f1_per_question": per_q(teacher)},
            "baseline_arm": capacity.baseline_arm(base), "arms": capacity.arms(base), "question_ids": ids,
            "records": records, "missing": missing_cells(base, records)}


def missing_cells(base: StudyParams, records: list[dict[str, Any]]) -> list[str]:
    """The grid's trainings without a record, as `<layers> layers <arm> seed <seed>`."""
    have = {(r["layers"], r["arm"], r["seed"]) for r in records}
    return [f"{k} layers {a} seed {s}" for k in sorted(base.capacity_keep, reverse=True) for a in capacity.arms(base)
            for s in base.capacity_seeds if (k, a, s) not in have]


def analyse(signal: dict[str, Any]) -> dict[str, Any]:
    """Per size and arm: F1 with intervals, the teacher's share kept, the paired gain over the baseline arm."""
    ids = signal["question_ids"]
    teacher_q = 100.0 * np.array([signal["teacher"]["f1_per_question"][q] for q in ids])
    base_arm = signal["baseline_arm"]
    df = pd.DataFrame(signal["records"], columns=["layers", "arm", "seed", "params_m", "f1", "exact_match",
                                                  "answer_loss", "train_minutes", "f1_per_question"])
    rows = []
    for layers in sorted(df["layers"].unique(), reverse=True):
        at = df[df["layers"] == layers]

        def matrix(arm: str) -> tuple[np.ndarray, list[int]]:
            recs = at[at["arm"] == arm].sort_values("seed")
            return 100.0 * np.array([[r[q] for q in ids] for r in recs["f1_per_question"]]), list(recs["seed"])
        base_m, base_seeds = matrix(base_arm)
        for arm in signal["arms"]:
            recs = at[at["arm"] == arm]
            if recs.empty:
                continue
            m, seeds = matrix(arm)
            q_mean = m.mean(axis=0)
            low, high = stats.ci95(list(q_mean))
            kept_low, kept_high = kept_interval(q_mean, teacher_q)
            row = {"layers": int(layers), "arm": arm, "seeds": len(seeds), "n_questions": len(ids),
                   "params_m": float(recs["params_m"].iloc[0]),
                   "params_share": float(recs["params_m"].iloc[0]) / signal["teacher"]["params_m"],
                   "f1": float(q_mean.mean()), "f1_ci95_low": low, "f1_ci95_high": high,
                   "f1_sd_seeds": stats.mean_sd(list(recs["f1"]))[1], "exact_match": float(recs["exact_match"].mean()),
                   "answer_loss": float(recs["answer_loss"].mean()),
                   "kept_f1": float(q_mean.mean() / max(teacher_q.mean(), 1e-9)), "kept_f1_ci95_low": kept_low,
                   "kept_f1_ci95_high": kept_high,
                   "train_minutes": float(recs["train_minutes"].mean()) if recs["train_minutes"].notna().all()
                   else None}
            paired = [s for s in seeds if s in base_seeds]
            if arm != base_arm and paired:
                g = stats.paired_gain(m[[seeds.index(s) for s in paired]],
                                      base_m[[base_seeds.index(s) for s in paired]])
                b_loss = at[at["arm"] == base_arm].set_index("seed")["answer_loss"]
                a_loss = recs.set_index("seed")["answer_loss"]
                loss_d = [float(a_loss[s] - b_loss[s]) for s in paired]
                row.update(gain_f1=g["gain"], gain_ci95_low=g["low"], gain_ci95_high=g["high"],
                           gain_per_seed=g["per_seed"], gain_seeds_won=g["seeds_won"], gain_resolved=g["resolved"],
                           gain_answer_loss=statistics.fmean(loss_d))
            rows.append(row)
        lead(rows, [r for r in rows if r["layers"] == layers], matrix)
    return {"teacher": {k: signal["teacher"][k] for k in ("layers", "params_m", "f1", "exact_match", "answer_loss")},
            "baseline_arm": base_arm, "n_questions": len(ids), "arms": rows, "missing": signal.get("missing", []),
            "trainings": len(signal["records"])}


def lead(rows: list[dict[str, Any]], at: list[dict[str, Any]], matrix) -> None:
    """The size's best arm against the runner-up, paired over the seeds both have and the questions: is the best
    told apart from the next, or only ahead by noise? Recorded on the best arm's row (lead_*)."""
    ranked = sorted(at, key=lambda r: r["f1"], reverse=True)
    if len(ranked) < 2:
        return
    (best_m, best_seeds), (next_m, next_seeds) = matrix(ranked[0]["arm"]), matrix(ranked[1]["arm"])
    paired = [s for s in best_seeds if s in next_seeds]
    if not paired:
        return
    g = stats.paired_gain(best_m[[best_seeds.index(s) for s in paired]], next_m[[next_seeds.index(s) for s in paired]])
    ranked[0].update(lead_over=ranked[1]["arm"], lead_f1=g["gain"], lead_ci95_low=g["low"], lead_ci95_high=g["high"],
                     lead_resolved=g["resolved"])


def headline(result: dict[str, Any]) -> list[str]:
    """The answer per size: the winning arm, its gain over CE-only with its interval, the share kept, the cost."""
    t, base = result["teacher"], result["baseline_arm"]
    df = pd.DataFrame(result["arms"])
    lines = [f"Teacher ({t['layers']} layers, {t['params_m']:.0f} M parameters): F1 {t['f1']:.1f} on "
             f"{result['n_questions']} SQuAD validation questions."]
    if result.get("missing"):
        by_size: dict[str, list[str]] = {}
        for cell in result["missing"]:
            layers, arm = cell.split(" seed ")[0].rsplit(" ", 1)
            if arm not in by_size.setdefault(layers, []):
                by_size[layers].append(arm)
        pending = "; ".join(f"{k}: " + ", ".join(v) for k, v in by_size.items())
        lines.insert(0, f"The grid is not complete: {result['trainings']} of {result['trainings'] + len(result['missing'])}"
                        f" trainings measured, so each size compares the arms measured there (not yet: {pending}).")
    if df.empty:
        return lines + ["No student is scored yet."]
    for layers in sorted(df["layers"].unique(), reverse=True):
        at = df[df["layers"] == layers]
        best = at.sort_values("f1", ascending=False).iloc[0]
        share = f"{100 * best['params_share']:.0f}% of the teacher's parameters"
        if base not in set(at["arm"]) or (best["arm"] != base and pd.isna(best.get("gain_f1"))):
            lines.append(f"{layers} layers ({share}): no arm is paired with a {base} seed yet.")
            continue
        ce = at[at["arm"] == base].iloc[0]
        if best["arm"] == base:
            lines.append(f"{layers} layers ({share}): no arm beats CE-only (F1 {ce['f1']:.1f}, keeps "
                         f"{100 * ce['kept_f1']:.0f}% of the teacher's F1).")
            continue
        verdict = "resolved" if best["gain_resolved"] else "unresolved: the interval spans 0"
        cost = (f"; it trains in {best['train_minutes']:.1f} CPU min vs {ce['train_minutes']:.1f} for CE-only"
                if best["train_minutes"] is not None and ce["train_minutes"] is not None else "")
        told = best.get("lead_over") is None or pd.isna(best.get("lead_over")) or bool(best.get("lead_resolved"))
        ahead = ("" if told else f"; ahead of {best['lead_over']} by only {best['lead_f1']:+.1f} F1 "
                 f"[{best['lead_ci95_low']:+.1f}, {best['lead_ci95_high']:+.1f}]: the two are not told apart")
        lines.append(f"{layers} layers ({share}): {best['arm']} {'wins' if told else 'scores highest'}, F1 "
                     f"{best['f1']:.1f} = {100 * best['kept_f1']:.0f}% of the teacher's [{100 * best['kept_f1_ci95_low']:.0f}-"
                     f"{100 * best['kept_f1_ci95_high']:.0f}%], {best['gain_f1']:+.1f} F1 over CE-only "
                     f"[{best['gain_ci95_low']:+.1f}, {best['gain_ci95_high']:+.1f}], {best['gain_seeds_won']} seeds "
                     f"({verdict}){cost}{ahead}.")
    return lines


def table(result: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for r in result["arms"]:
        gain = (f"{r['gain_f1']:+.1f} [{r['gain_ci95_low']:+.1f}, {r['gain_ci95_high']:+.1f}] {r['gain_seeds_won']}"
                if "gain_f1" in r and not pd.isna(r.get("gain_f1")) else "(baseline)")
        rows.append({"layers": r["layers"], "params (% teacher)": 100 * r["params_share"], "arm": r["arm"],
                     "F1": r["f1"], "F1 95% CI": f"{r['f1_ci95_low']:.1f}-{r['f1_ci95_high']:.1f}",
                     "kept F1 (%)": 100 * r["kept_f1"],
                     "kept 95% CI": f"{100 * r['kept_f1_ci95_low']:.0f}-{100 * r['kept_f1_ci95_high']:.0f}",
                     "F1 vs CE-only [95% CI] seeds won": gain, "EM": r["exact_match"],
                     "answer loss": r["answer_loss"], "train min": r["train_minutes"]})
    return pd.DataFrame(rows)


def write(base: StudyParams, signal: dict[str, Any], result: dict[str, Any]) -> Path:
    """reports/<run>/signal.json, signal_table.csv and the official-format predictions of every model."""
    folder = base.report_dir
    scores = load_scores(base, partial=bool(signal.get("missing")))
    for s in scores:
        name = prediction_name(s["layers"], s["variant"], s["seed"])
        paths.write_text_atomic(folder / PREDICTIONS_DIR / name, json.dumps(s["predictions"], indent=0, sort_keys=True))
    out = {**signal, "headline": headline(result), "analysis": result}
    paths.write_text_atomic(folder / "signal.json", json.dumps(out, indent=1, default=json_default))
    paths.write_text_atomic(folder / "signal_table.csv", table(result).to_csv(index=False))
    return folder / "signal.json"
