"""The comparison table: teacher vs students, written as results.txt, results.csv and results.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from distill.core import paths

# (column, label, how a student compares with the teacher): "smaller", "faster", "leaner" read as "N x <word>"
# the teacher's way round (always >= 1, the opposite word when the student is worse); "share" is the student's
# percentage of the teacher's score; "nats" the difference in nats.
METRICS = [
    ("params_m", "parameters (M)", "smaller"),
    ("disk_mb", "disk size (MB)", "smaller"),
    ("latency_batch1_ms_median", "latency, batch 1, median (ms)", "faster"),
    ("latency_batch1_ms_p90", "latency, batch 1, p90 (ms)", "faster"),
    ("latency_batch1_fixed_ms_median", "latency, batch 1, fixed length, median (ms)", "faster"),
    ("throughput_examples_per_s", "throughput, batched (answers/s)", "faster"),
    ("peak_memory_mb", "peak memory (MB)", "leaner"),
    ("exact_match", "SQuAD EM (%)", "share"),
    ("f1", "SQuAD F1 (%)", "share"),
    ("answer_loss", "answer loss (nats, teacher-forced)", "nats"),
    ("top1_accuracy", "answer top-1 accuracy", "share"),
]
LOWER_IS_BETTER = {"params_m", "disk_mb", "latency_batch1_ms_median", "latency_batch1_ms_p90",
                   "latency_batch1_fixed_ms_median", "peak_memory_mb", "answer_loss"}
OPPOSITE = {"smaller": "larger", "faster": "slower", "leaner": "heavier"}
# how many decimals the tables show per metric
DIGITS = {"params_m": 1, "disk_mb": 0, "latency_batch1_ms_median": 0, "latency_batch1_ms_p90": 0,
          "latency_batch1_fixed_ms_median": 0, "throughput_examples_per_s": 2, "peak_memory_mb": 0, "exact_match": 1,
          "f1": 1, "answer_loss": 3, "top1_accuracy": 3}
TEACHER, BEFORE, BASELINE, DISTILLED = "teacher", "student (before training)", "CE-only student", "distilled student"
MODEL_KEYS = {TEACHER: "teacher", BEFORE: "student_before", BASELINE: "ce_baseline", DISTILLED: "distilled"}


def table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model, one column per metric."""
    return pd.DataFrame({name: {m: r[m] for m, _, _ in METRICS} for name, r in results.items()}).T


def versus_teacher(metric: str, student: float, teacher: float) -> str:
    """The student against the teacher, in words that read one way: "1.35x faster", "1.19x smaller", "76% of the
    teacher", "+0.210 nats"."""
    kind = next(k for col, _, k in METRICS if col == metric)
    if kind == "nats":
        return f"{student - teacher:+.3f} nats"
    if not teacher or not student:
        return "n/a"
    if kind == "share":
        return f"{100 * student / teacher:.0f}% of the teacher"
    ratio = teacher / student if metric in LOWER_IS_BETTER else student / teacher
    return f"{ratio:.2f}x {kind}" if ratio >= 1 else f"{1 / ratio:.2f}x {OPPOSITE[kind]}"


def _cell(metric: str, value: float) -> str:
    return f"{value:,.{DIGITS[metric]}f}"


def comparison_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Metrics as rows, models as columns (rounded for reading), then the distilled student against the teacher and
    against the CE-only student: the table every report and the README show."""
    names = list(df.index)
    rows = {}
    for col, label, _ in METRICS:
        row = {n: _cell(col, float(df.loc[n, col])) for n in names}
        if DISTILLED in names and TEACHER in names:
            row["distilled vs teacher"] = versus_teacher(col, float(df.loc[DISTILLED, col]), float(df.loc[TEACHER, col]))
        if DISTILLED in names and BASELINE in names:
            gap = float(df.loc[DISTILLED, col]) - float(df.loc[BASELINE, col])
            row["distilled - CE-only"] = f"{gap:+,.{DIGITS[col]}f}"
        rows[label] = row
    return pd.DataFrame(rows).T.rename_axis("metric")


def comparison_text(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    """The table as text: every model, then the distilled student vs the teacher and vs the CE-only student."""
    lines = [f"distill-study results: run {meta['run_name']}, {meta['n_examples']} SQuAD v1.1 validation questions, "
             f"greedy decoding, max_new_tokens {meta['max_new_tokens']}, device {meta['device']}",
             f"latency: one question at a time (batch 1), median and 90th percentile over {meta.get('latency_prompts', '?')} "
             f"of them, until the answer ends or at a fixed {meta['max_new_tokens']} new tokens; throughput: "
             f"batches of {meta['batch_size']}",
             f"peak memory: {meta['memory_kind']}; teacher disk: {meta['teacher_disk_kind']}", ""]
    return "\n".join(lines) + comparison_frame(df).to_string() + "\n"


def markdown_table(df: pd.DataFrame) -> str:
    """The table as Markdown for the README, rounded for reading; results.json keeps the full precision."""
    frame = comparison_frame(df)
    header = ["metric", *frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *row]) + " |" for label, row in zip(frame.index, frame.values.tolist())]
    return "\n".join(lines) + "\n"


def prediction_files(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`predictions_<model>.json` per scored model in the official SQuAD v1.1 format ({question id: answer}): the
    official evaluation script re-scores them against the dev file restricted to results.json's question ids."""
    out = {}
    for name, r in results.items():
        ids, answers = r["question_ids"], r["predictions"]
        if len(ids) != len(answers) or len(set(ids)) != len(ids):
            raise ValueError(f"{name}: {len(ids)} question ids for {len(answers)} predictions (or repeated ids); "
                             "re-run its score stage")
        out[f"predictions_{MODEL_KEYS.get(name, name)}.json"] = json.dumps(dict(zip(ids, answers)), indent=1)
    return out


def write(df: pd.DataFrame, results: dict[str, dict[str, Any]], meta: dict[str, Any], folder: Path) -> None:
    files = {
        "results.txt": comparison_text(df, meta),
        "results.md": markdown_table(df),
        "results.csv": df.to_csv(index_label="model"),
        "results.json": json.dumps({"meta": meta, "models": {n: {k: v for k, v in r.items()
                                                                 if k not in ("references",)}
                                                             for n, r in results.items()}}, indent=1, default=str),
    }
    files.update(prediction_files(results))
    # small and flat, for `dvc metrics show` / `dvc metrics diff` across runs and commits
    metrics = {MODEL_KEYS.get(name, name): {col: float(df.loc[name, col]) for col, _, _ in METRICS} for name in df.index}
    files["metrics.json"] = json.dumps(metrics, indent=1)
    for name, text in files.items():
        paths.write_text_atomic(folder / name, text)
