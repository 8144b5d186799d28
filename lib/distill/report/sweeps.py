"""Seed sweeps summarised: mean and spread over seeds, and each setting's paired difference to a reference.

Reads the sweep stages' score files (`study.sweep.records`) and writes reports/<run>/sweeps/: summary.txt,
.csv, .json, seed_scores.png and paired_differences.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from distill.core import paths
from distill.core.params import StudyParams
from distill.report import plots, stats
from distill.study import sweep as runs  # the sweep module; `sweep` names a setting below

LOWER_IS_BETTER = {"answer_loss"}


def summarize(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every score, one row per (sweep, variant)."""
    out = []
    for (sweep, variant), g in pd.DataFrame(records).groupby(["sweep", "variant"], sort=False):
        row: dict[str, Any] = {"sweep": sweep, "variant": variant, "seeds": len(g),
                               "questions": int(g["n_examples"].iloc[0]), "overrides": g["overrides"].iloc[0]}
        for k in runs.SCORES:
            row[f"{k}_mean"], row[f"{k}_sd"] = stats.mean_sd(g[k].tolist())
        out.append(row)
    return pd.DataFrame(out)


def _minus(df: pd.DataFrame, rows: pd.Series, ref_rows: pd.Series, vs: str) -> pd.DataFrame:
    ref = df[ref_rows].set_index("seed")[list(runs.SCORES)]
    paired = df[rows & df["seed"].isin(ref.index)].reset_index(drop=True)
    out = paired[["sweep", "variant", "seed"]].copy()
    out["vs"] = vs
    out[list(runs.SCORES)] = paired[list(runs.SCORES)].to_numpy() - ref.loc[paired["seed"]].to_numpy()
    return out


def seed_differences(records: list[dict[str, Any]], reference: tuple[str, str]) -> pd.DataFrame:
    """Per seed, each (sweep, variant) minus the reference's student of the same seed (same training examples,
    same LoRA init). Two more pairs per other setting: its distilled student minus the reference sweep's
    distilled one (what the setting changes in the distillation), and, where the setting trained both students
    (more steps, say), its distilled minus its own CE-only student (what the teacher adds under it)."""
    df = pd.DataFrame(records)

    def pick(sweep: str, variant: str) -> pd.Series:
        return (df["sweep"] == sweep) & (df["variant"] == variant)

    is_ref = pick(*reference)
    parts = [_minus(df, ~is_ref & (df["sweep"] != "reference"), is_ref, "/".join(reference))]
    for sweep in df["sweep"].unique():
        if sweep in ("reference", reference[0]) or not pick(sweep, "distilled").any():
            continue
        if reference[1] != "distilled" and pick(reference[0], "distilled").any():
            parts.append(_minus(df, pick(sweep, "distilled"), pick(reference[0], "distilled"),
                                f"{reference[0]}/distilled"))
        if pick(sweep, "ce_baseline").any():
            parts.append(_minus(df, pick(sweep, "distilled"), pick(sweep, "ce_baseline"), f"{sweep}/ce_baseline"))
    return pd.concat(parts, ignore_index=True)


def question_paired_f1(records: list[dict[str, Any]], row: tuple[str, str], vs: tuple[str, str]) -> dict[str, Any]:
    """`row` minus `vs` in F1 over the seeds both trained, paired question by question (`stats.paired_gain`: the
    seed-averaged difference per question, its 95% t interval over the questions), as the grids report it."""
    def by_seed(key: tuple[str, str]) -> dict[int, dict[str, float]]:
        return {r["seed"]: r["f1_per_question"] for r in records if (r["sweep"], r["variant"]) == key}

    a, b = by_seed(row), by_seed(vs)
    seeds = sorted(set(a) & set(b))
    # the questions every one of them answered (a setting with another max_length may drop different ones)
    ids = sorted(set.intersection(*(set(x[s]) for x in (a, b) for s in seeds))) if seeds else []
    if len(ids) < 2:
        nan = float("nan")
        return {"f1_q_gain": nan, "f1_q_ci95_low": nan, "f1_q_ci95_high": nan, "f1_q_resolved": False,
                "f1_q_questions": len(ids)}
    g = stats.paired_gain([[a[s][q] for q in ids] for s in seeds], [[b[s][q] for q in ids] for s in seeds])
    return {"f1_q_gain": g["gain"], "f1_q_ci95_low": g["low"], "f1_q_ci95_high": g["high"],
            "f1_q_resolved": g["resolved"], "f1_q_questions": len(ids)}


def paired_differences(records: list[dict[str, Any]], reference: tuple[str, str]) -> pd.DataFrame:
    """Each pair of `seed_differences` summarised: mean and sd over seeds, and how many seeds the row won; and the
    F1 difference paired over questions (`question_paired_f1`), whose interval is far narrower than over 3 seeds."""
    out = []
    for (sweep, variant, vs), g in seed_differences(records, reference).groupby(["sweep", "variant", "vs"], sort=False):
        row: dict[str, Any] = {"sweep": sweep, "variant": variant, "vs": vs, "paired_seeds": len(g),
                               **question_paired_f1(records, (sweep, variant), tuple(vs.split("/", 1)))}
        for k in runs.SCORES:
            diffs = g[k].astype(float).tolist()
            row[f"{k}_diff_mean"], row[f"{k}_diff_sd"] = stats.mean_sd(diffs)
            row[f"{k}_diff_ci95_low"], row[f"{k}_diff_ci95_high"] = stats.ci95(diffs)
            better = [d < 0 if k in LOWER_IS_BETTER else d > 0 for d in diffs]
            row[f"{k}_better_in"] = f"{sum(better)}/{len(diffs)}"
        out.append(row)
    return pd.DataFrame(out)


def summary_text(summary: pd.DataFrame, diffs: pd.DataFrame) -> str:
    def pm(mean: float, sd: float, digits: int) -> str:
        return f"{mean:.{digits}f}" + ("" if sd != sd else f" ± {sd:.{digits}f}")

    def ci(r, key: str, digits: int) -> str:
        mean, low, high = (getattr(r, f"{key}_diff_{x}") for x in ("mean", "ci95_low", "ci95_high"))
        interval = "" if low != low else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
        return f"{mean:+.{digits}f}{interval} {getattr(r, f'{key}_better_in')}"

    lines = ["Seed sweeps: mean ± sample sd over seeds, every student scored on the same validation questions",
             "", f"{'sweep/variant':34} {'seeds':>5} {'q':>4} {'answer loss':>15} {'top-1':>15} {'EM':>13} {'F1':>13}"]
    for r in summary.itertuples():
        lines.append(f"{r.sweep + '/' + r.variant:34} {r.seeds:>5} {r.questions:>4} "
                     f"{pm(r.answer_loss_mean, r.answer_loss_sd, 3):>15} {pm(r.top1_accuracy_mean, r.top1_accuracy_sd, 3):>15} "
                     f"{pm(r.exact_match_mean, r.exact_match_sd, 1):>13} {pm(r.f1_mean, r.f1_sd, 1):>13}")
    if len(diffs):
        w = max(len(f"{a}/{b}") for a, b in zip(diffs["sweep"], diffs["variant"])) + 1
        lines += ["", "Paired by seed: the row's student minus the same seed's student it is compared with; mean "
                  "[95% t interval over seeds] and the seeds where the row wins. Last column: the F1 difference "
                  "paired question by question (per question averaged over the seeds; 95% t interval over the "
                  "questions). An interval that spans 0 is not a finding.", "",
                  f"{'sweep/variant':{w}} {'minus':{w}} {'seeds':>5} {'answer loss':>29} {'top-1':>29} {'EM':>23} "
                  f"{'F1':>23} {'F1 over questions':>24}"]
        for r in diffs.itertuples():
            by_q = (f"{r.f1_q_gain:+.1f} [{r.f1_q_ci95_low:+.1f}, {r.f1_q_ci95_high:+.1f}]" if r.f1_q_questions >= 2
                    else "fewer than 2 questions")
            lines.append(f"{r.sweep + '/' + r.variant:{w}} {r.vs:{w}} {r.paired_seeds:>5} {ci(r, 'answer_loss', 3):>29} "
                         f"{ci(r, 'top1_accuracy', 3):>29} {ci(r, 'exact_match', 1):>23} {ci(r, 'f1', 1):>23} "
                         f"{by_q:>24}")
    overrides = summary[summary["overrides"] != "{}"][["sweep", "overrides"]].drop_duplicates()
    if len(overrides):
        lines += ["", "Settings that differ from the profile:"]
        lines += [f"  {r.sweep}: {r.overrides}" for r in overrides.itertuples()]
    return "\n".join(lines) + "\n"


def sweeps_dir(base: StudyParams) -> Path:
    return base.report_dir / "sweeps"


def write_summary(base: StudyParams, reference: tuple[str, str] = ("default", "ce_baseline")) -> Path:
    """summary.txt/.csv/.json, seed_scores.png and paired_differences.png in reports/<run>/sweeps/."""
    folder = sweeps_dir(base)
    recs = runs.records(base)
    summary, diffs = summarize(recs), paired_differences(recs, reference)
    origin = runs.base_models_digest(base)
    paths.write_text_atomic(folder / "summary.txt", summary_text(summary, diffs) +
                            f"\nBase models (tuned teacher and pruned student, from dvc.lock): {origin}\n")
    paths.write_text_atomic(folder / "summary.csv", pd.concat([summary, diffs]).to_csv(index=False))
    paths.write_text_atomic(folder / "summary.json", json.dumps(
        {"base_models": origin, "reference": "/".join(reference), "summary": summary.to_dict("records"),
         "paired_differences": diffs.to_dict("records"),
         # what every interval above is recomputed from: each student's F1 per question
         "records": [{k: r[k] for k in ("sweep", "variant", "seed", "f1", "f1_per_question")} for r in recs]},
        indent=1))
    n = int(summary["questions"].iloc[0])
    fig = plots.seed_scores(recs, f"{base.run_name}: students over seeds ({n} validation questions)")
    plots.save(fig, folder, "seed_scores")
    plt.close(fig)
    if len(diffs):
        fig = plots.seed_differences(seed_differences(recs, reference), "/".join(reference),
                                     f"{base.run_name}: each setting minus {'/'.join(reference)}, paired by seed "
                                     f"({n} validation questions)")
    else:  # one setting and one variant: nothing to pair yet (the file is still written: the stage declares it)
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No pairs yet: only {'/'.join(reference)} was trained", ha="center", va="center")
    plots.save(fig, folder, "paired_differences")
    plt.close(fig)
    return folder / "summary.txt"


def paired_gain(base: StudyParams, name: str = "default") -> tuple[dict[str, Any] | None, str]:
    """The sweep's distilled-minus-CE-only row for this run's own base models, or None and why there is none."""
    summary_json = sweeps_dir(base) / "summary.json"
    if not summary_json.exists():
        return None, "no seed sweep of this run yet: `make sweep` measures the spread"
    summary = json.loads(summary_json.read_text())
    if summary.get("base_models") != runs.base_models_digest(base) or runs.base_models_digest(base) == "unrecorded":
        return None, "the seed sweep on record was trained from other base models than this run's: `make sweep`"
    for row in summary.get("paired_differences", []):
        if (row["sweep"], row["variant"], row["vs"]) == (name, "distilled", f"{name}/ce_baseline"):
            return row, ""
    return None, f"the seed sweep on record has no distilled-vs-CE-only pair for setting {name!r}"
