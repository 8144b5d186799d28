"""The comparison table: teacher vs students, written as results.txt, results.csv and results.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import paths

# (column, label, better): better says which direction is an improvement
METRICS = [
    ("params_m", "parameters (M)", "lower"),
    ("disk_mb", "disk size (MB)", "lower"),
    ("latency_ms_per_example", "latency (ms/example)", "lower"),
    ("throughput_examples_per_s", "throughput (examples/s)", "higher"),
    ("peak_memory_mb", "peak memory (MB)", "lower"),
    ("exact_match", "SQuAD EM (%)", "higher"),
    ("f1", "SQuAD F1 (%)", "higher"),
    ("answer_loss", "answer loss (nats, teacher-forced)", "lower"),
    ("top1_accuracy", "answer top-1 accuracy", "higher"),
]
# how many decimals the Markdown table (README) shows per metric
MARKDOWN_DIGITS = {"params_m": 1, "disk_mb": 0, "latency_ms_per_example": 0, "throughput_examples_per_s": 2,
                   "peak_memory_mb": 0, "exact_match": 1, "f1": 1, "answer_loss": 3, "top1_accuracy": 3}
TEACHER, BEFORE, BASELINE, DISTILLED = "teacher", "student (before training)", "CE-only student", "distilled student"


def table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model, one column per metric."""
    return pd.DataFrame({name: {m: r[m] for m, _, _ in METRICS} for name, r in results.items()}).T


def _ratio(student: float, teacher: float, better: str) -> str:
    if not teacher or not student:
        return "n/a"
    r = teacher / student if better == "lower" else student / teacher
    return f"{r:.2f}x"


def comparison_text(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    """The table as text: every model, then the distilled student vs the teacher and vs the CE-only student."""
    lines = [f"distill-study results: run {meta['run_name']}, {meta['n_examples']} SQuAD v1.1 validation questions, "
             f"greedy decoding, max_new_tokens {meta['max_new_tokens']}, batch {meta['batch_size']}, device {meta['device']}",
             f"peak memory: {meta['memory_kind']}; teacher disk: {meta['teacher_disk_kind']}", ""]
    names = list(df.index)
    width = max(len(lbl) for _, lbl, _ in METRICS) + 2
    header = f"{'metric':<{width}}" + "".join(f"{n:>26}" for n in names)
    header += f"{'distilled vs teacher':>24}{'distilled - CE-only':>22}"
    lines += [header, "-" * len(header)]
    for col, label, better in METRICS:
        row = f"{label:<{width}}" + "".join(f"{float(df.loc[n, col]):>26.4g}" for n in names)
        if DISTILLED in df.index and TEACHER in df.index:
            row += f"{_ratio(float(df.loc[DISTILLED, col]), float(df.loc[TEACHER, col]), better):>24}"
        if DISTILLED in df.index and BASELINE in df.index:
            row += f"{float(df.loc[DISTILLED, col]) - float(df.loc[BASELINE, col]):>+22.4g}"
        lines.append(row)
    lines += ["", "ratio column: how many times better the distilled student is than the teacher "
              "(smaller, faster, leaner; < 1x means worse)"]
    return "\n".join(lines) + "\n"


def markdown_table(df: pd.DataFrame) -> str:
    """The table as Markdown for the README, rounded for reading; results.json keeps the full precision."""
    names = list(df.index)
    compare = DISTILLED in names and TEACHER in names and BASELINE in names
    header = ["metric", *names] + (["distilled vs teacher", "distilled - CE-only"] if compare else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for col, label, better in METRICS:
        d = MARKDOWN_DIGITS[col]
        cells = [label] + [f"{float(df.loc[n, col]):.{d}f}" for n in names]
        if compare:
            distilled, gap = float(df.loc[DISTILLED, col]), float(df.loc[DISTILLED, col]) - float(df.loc[BASELINE, col])
            cells += [_ratio(distilled, float(df.loc[TEACHER, col]), better), f"{gap:+.{d}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(df: pd.DataFrame, results: dict[str, dict[str, Any]], meta: dict[str, Any], folder: Path) -> None:
    files = {
        "results.txt": comparison_text(df, meta),
        "results.md": markdown_table(df),
        "results.csv": df.to_csv(index_label="model"),
        "results.json": json.dumps({"meta": meta, "models": {n: {k: v for k, v in r.items()
                                                                 if k not in ("references",)}
                                                             for n, r in results.items()}}, indent=1, default=str),
    }
    # small and flat, for `dvc metrics show` / `dvc metrics diff` across runs and commits
    keys = {TEACHER: "teacher", BEFORE: "student_before", BASELINE: "ce_baseline", DISTILLED: "distilled"}
    metrics = {keys.get(name, name): {col: float(df.loc[name, col]) for col, _, _ in METRICS} for name in df.index}
    files["metrics.json"] = json.dumps(metrics, indent=1)
    for name, text in files.items():
        paths.write_text_atomic(folder / name, text)
