"""Seed sweeps: one training setting repeated over seeds, every student scored on the same questions.

A difference between two students of one run is noise until it exceeds the seed-to-seed spread. A
sweep trains the study's students once per seed, all from the run's own tuned teacher and pruned
student, so that only the seed moves: it draws the training examples, their windows, the LoRA init and
the batch order. Every student is then scored on one fixed set of validation questions (the run's, so
seeds do not also change the exam). The summary gives mean and standard deviation over seeds, and each
setting's difference to a reference paired by seed (same seed, same training examples).

Sweeps are stages of the run's DVC pipeline (`pipelines/<run>/dvc.yaml`), registered in
`pipelines/<run>/sweeps.yaml`: DVC trains and scores what is missing or out of date and nothing else,
and re-trains every seed when the teacher or the pruned student they depend on changes, so a summary
never pairs students of two different base models.

    python -m distill sweep params/<profile>.yaml --name default --seeds 0,1,2
    python -m distill sweep params/<profile>.yaml --name answer_positions --seeds 0,1,2 \
        --set distill_positions=answer --variants distilled
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from . import paths, plots, stats
from .params import ParamsError, StudyParams

VARIANTS = ("distilled", "ce_baseline")
SCORES = ("answer_loss", "top1_accuracy", "exact_match", "f1")
LOWER_IS_BETTER = {"answer_loss"}
REFERENCES = ("teacher", "student_before")
SET_BY_SWEEP = {"run_name", "seed", "output_dir", "deploy_dir", "base_run_dir", "variant"}
MADE_BY_BASE_RUN = {"student", "model_dtype", "squad_dir", "data_pool_rows"}  # and every teacher* and prune_* key
CACHE_KEYS = {"teacher_cache", "teacher_cache_k"}  # how the teacher's targets are read, not which teacher
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def registry_file(base: StudyParams) -> Path:
    from .pipeline import pipeline_dir

    return pipeline_dir(base) / "sweeps.yaml"


def load_registry(base: StudyParams) -> dict[str, Any]:
    f = registry_file(base)
    return yaml.safe_load(f.read_text(encoding="utf-8")) if f.exists() else {"questions": 0, "sweeps": {}}


def check_setting(name: str, overrides: dict[str, Any]) -> None:
    if not NAME.match(name):
        raise ParamsError(f"--name {name!r}: use letters, digits, - and _ only (it names folders and stages)")
    for key in overrides:
        if key in SET_BY_SWEEP:
            raise ParamsError(f"--set {key}: the sweep sets it (seeds come from --seeds, folders from --name)")
        if key in MADE_BY_BASE_RUN or key.startswith(("teacher", "prune_")) and key not in CACHE_KEYS:
            raise ParamsError(f"--set {key}: a sweep reuses the base run's teacher and pruned student; for another "
                              f"{key}, run a profile with it (python -m distill run ... --set {key}=...) and sweep that")


def seed_run_dir(base: StudyParams, name: str, seed: int) -> Path:
    return base.run_dir / "sweeps" / name / f"seed{seed}"


def seed_params(base: StudyParams, name: str, seed: int, overrides: dict[str, Any]) -> StudyParams:
    """The params one seed of a setting trains with: the base run's, the setting, the seed; the base run's models."""
    from .pipeline import project_relative

    check_setting(name, overrides)
    # the leading underscore keeps per-seed reports out of git (see .gitignore); the summary is committed
    return base.replace(**overrides, seed=seed, run_name=f"_{base.run_name}_{name}_seed{seed}",
                        output_dir=project_relative(seed_run_dir(base, name, seed), "output_dir"), deploy_dir="",
                        base_run_dir=project_relative(base.run_dir, "output_dir"))


def register(base: StudyParams, name: str, seeds: list[int], variants: list[str], overrides: dict[str, Any],
             questions: int, reference: str = "default/ce_baseline") -> dict[str, Any]:
    """Add a setting's seeds to pipelines/<run>/sweeps.yaml; extending keeps the seeds it has, a name keeps its
    setting, and every sweep of a run scores the same number of questions (differences are paired on one exam)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ParamsError(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if not seeds:
        raise ParamsError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    for s in seeds:
        seed_params(base, name, s, overrides)  # validates the setting's keys and values for every seed
    reg = load_registry(base)
    recorded_q = int(reg.get("questions") or 0)
    if questions and recorded_q and questions != recorded_q:
        raise ParamsError(f"--questions {questions}: the sweeps of {base.run_name} score {recorded_q} questions, and "
                          f"differences are only paired on the same questions; drop --questions, or remove "
                          f"{registry_file(base)} to start the sweeps over")
    reg["questions"] = questions or recorded_q or base.bench_size
    reg["reference"] = reference
    old = reg["sweeps"].get(name)
    if old is not None and old["set"] != overrides:
        raise ParamsError(f"--name {name}: it holds seeds trained with {json.dumps(old['set'])}; give the setting "
                          f"{json.dumps(overrides)} its own --name")
    entry = old or {"set": overrides, "seeds": [], "variants": []}
    entry["seeds"] = sorted(set(entry["seeds"]) | set(seeds))
    entry["variants"] = [v for v in VARIANTS if v in set(entry["variants"]) | set(variants)]
    reg["sweeps"][name] = entry
    ref_sweep, _, ref_variant = reference.partition("/")
    if ref_variant not in VARIANTS or ref_sweep not in reg["sweeps"]:
        raise ParamsError(f"--reference {reference}: expected SWEEP/VARIANT of a registered sweep (registered: "
                          f"{', '.join(reg['sweeps'])}), e.g. {name}/ce_baseline")
    paths.write_text_atomic(registry_file(base), "# Seed sweeps of this run (python -m distill sweep); DVC stages "
                            "sweep-* in dvc.yaml come from here.\n" + yaml.safe_dump(reg, sort_keys=False))
    return reg


def score_file(base: StudyParams, name: str, seed: int | None, model: str, questions: int) -> Path:
    folder = base.run_dir / "sweeps" / "reference" if seed is None else seed_run_dir(base, name, seed)
    return folder / "scores" / f"{model}_{questions}q.json"


def stages(base: StudyParams) -> list:
    """The sweep stages of a run's pipeline: train each (setting, seed, variant), score it, the references, summary."""
    from .pipeline import SCORING, Stage, model_dir, project_relative, train_stage

    reg = load_registry(base)
    if not reg["sweeps"]:
        return []
    q = int(reg["questions"])
    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    lib = "lib/distill"
    scoring_deps = [f"{lib}/{m}.py" for m in ("params", "data", "models", "sources", "tiny", "study", "paths",
                                              "stage", "benchmark", "metrics", "merge", "sweep")]
    regfile = project_relative(registry_file(base), "sweeps")
    out, score_files = [], []
    for model in REFERENCES:
        src = model_dir(base, model)
        f = score_file(base, "reference", None, model, q)
        score_files.append(rel(f))
        keys = [k for k in SCORING if k != "bench_size"] + (["teacher", "teacher_load_in_4bit"] if model == "teacher"
                                                            else ["student"])
        out.append(Stage(f"sweep-score-{model}", ["sweep-score", "reference", "-", model, str(q)], keys,
                         deps=[*scoring_deps, *([rel(src)] if src else [])], outs=[rel(f)],
                         title=f"{model} on the sweeps' {q} questions"))
    for name, entry in reg["sweeps"].items():
        for seed in entry["seeds"]:
            for variant in entry["variants"]:
                sp = seed_params(base, name, seed, entry["set"])
                train = train_stage(sp, variant, f"sweep-{name}-seed{seed}-{variant}",
                                    ["sweep-train", name, str(seed), variant])
                train.params = [k for k in train.params if k not in entry["set"] and k != "seed"]
                train.extra_params = {regfile: [f"sweeps.{name}.set"]}
                out.append(train)
                f = score_file(base, name, seed, variant, q)
                score_files.append(rel(f))
                keys = [k for k in SCORING if k not in ("bench_size", "seed") and k not in entry["set"]]
                out.append(Stage(f"sweep-score-{name}-seed{seed}-{variant}",
                                 ["sweep-score", name, str(seed), variant, str(q)], keys,
                                 deps=[*scoring_deps, *train.persist, *train.deps_models],
                                 outs=[rel(f)], title=f"{name} seed {seed} {variant} on {q} questions"))
                out[-1].extra_params = {regfile: [f"sweeps.{name}.set"]}
    folder = project_relative(sweeps_dir(base), "reports")
    summary_outs = [f"{folder}/summary.txt", f"{folder}/summary.csv", f"{folder}/summary.json",
                    f"{folder}/seed_scores.png", f"{folder}/paired_differences.png"]
    out.append(Stage("sweep-summary", ["sweep-summary"], ["run_name"],
                     deps=[f"{lib}/sweep.py", f"{lib}/stats.py", f"{lib}/plots.py", *score_files],
                     reports=summary_outs, title="Seed sweeps: mean, spread and paired differences"))
    out[-1].extra_params = {regfile: ["sweeps", "reference"]}
    return out


def load_student_or_reference(p: StudyParams, who: str, device):
    """(model, tokenizer): a seed run's trained variant (merged in memory by `merge.merged_student`, logits
    checked), or a reference model as the study loads it (the teacher 4-bit where the profile says so)."""
    from . import merge, models, study

    if who == "teacher":
        return study.load_teacher(p, device)
    if who == "student_before":
        return study.load_student(p, device)
    probe = study.load_data(p).eval_rows[:4]
    merged, tokenizer, _ = merge.merged_student(p, who, device, probe)
    return models.freeze(merged), tokenizer


def records(base: StudyParams) -> list[dict[str, Any]]:
    """One record per scored student and reference model, from the sweep stages' score files."""
    reg = load_registry(base)
    q = int(reg["questions"])
    out = []
    for name, entry in reg["sweeps"].items():
        for seed in entry["seeds"]:
            for variant in entry["variants"]:
                s = json.loads(score_file(base, name, seed, variant, q).read_text())
                out.append({"sweep": name, "variant": variant, "seed": seed, "questions": q,
                            **{k: s[k] for k in (*SCORES, "n_examples")}, "overrides": json.dumps(entry["set"],
                                                                                                  sort_keys=True)})
    for model in REFERENCES:
        s = json.loads(score_file(base, "reference", None, model, q).read_text())
        out.append({"sweep": "reference", "variant": model, "seed": base.seed, "questions": q,
                    **{k: s[k] for k in (*SCORES, "n_examples")}, "overrides": "{}"})
    return out


def base_models(base: StudyParams) -> str:
    """The content hashes DVC recorded for the run's tuned teacher and pruned student (its dvc.lock), shortened."""
    from .pipeline import pipeline_dir

    lock = pipeline_dir(base) / "dvc.lock"
    if not lock.exists():
        return "unrecorded"
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("teacher", {})
    hashes = [o.get("md5", "")[:8] for o in entry.get("outs", []) if o.get("md5", "").endswith(".dir")]
    return "-".join(hashes) or "unrecorded"


def summarize(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every score, one row per (sweep, variant)."""
    out = []
    for (sweep, variant), g in pd.DataFrame(records).groupby(["sweep", "variant"], sort=False):
        row: dict[str, Any] = {"sweep": sweep, "variant": variant, "seeds": len(g),
                               "questions": int(g["n_examples"].iloc[0]), "overrides": g["overrides"].iloc[0]}
        for k in SCORES:
            row[f"{k}_mean"], row[f"{k}_sd"] = stats.mean_sd(g[k].tolist())
        out.append(row)
    return pd.DataFrame(out)


def _minus(df: pd.DataFrame, rows: pd.Series, ref_rows: pd.Series, vs: str) -> pd.DataFrame:
    ref = df[ref_rows].set_index("seed")[list(SCORES)]
    paired = df[rows & df["seed"].isin(ref.index)].reset_index(drop=True)
    out = paired[["sweep", "variant", "seed"]].copy()
    out["vs"] = vs
    out[list(SCORES)] = paired[list(SCORES)].to_numpy() - ref.loc[paired["seed"]].to_numpy()
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


def paired_differences(records: list[dict[str, Any]], reference: tuple[str, str]) -> pd.DataFrame:
    """Each pair of `seed_differences` summarised: mean and sd over seeds, and how many seeds the row won."""
    out = []
    for (sweep, variant, vs), g in seed_differences(records, reference).groupby(["sweep", "variant", "vs"], sort=False):
        row: dict[str, Any] = {"sweep": sweep, "variant": variant, "vs": vs, "paired_seeds": len(g)}
        for k in SCORES:
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
                  "[95% t interval] and the seeds where the row wins. An interval that spans 0 is not a finding.", "",
                  f"{'sweep/variant':{w}} {'minus':{w}} {'seeds':>5} {'answer loss':>29} {'top-1':>29} {'EM':>23} "
                  f"{'F1':>23}"]
        for r in diffs.itertuples():
            lines.append(f"{r.sweep + '/' + r.variant:{w}} {r.vs:{w}} {r.paired_seeds:>5} {ci(r, 'answer_loss', 3):>29} "
                         f"{ci(r, 'top1_accuracy', 3):>29} {ci(r, 'exact_match', 1):>23} {ci(r, 'f1', 1):>23}")
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
    recs = records(base)
    summary, diffs = summarize(recs), paired_differences(recs, reference)
    origin = base_models(base)
    paths.write_text_atomic(folder / "summary.txt", summary_text(summary, diffs) +
                            f"\nBase models (tuned teacher and pruned student, from dvc.lock): {origin}\n")
    paths.write_text_atomic(folder / "summary.csv", pd.concat([summary, diffs]).to_csv(index=False))
    paths.write_text_atomic(folder / "summary.json", json.dumps(
        {"base_models": origin, "reference": "/".join(reference), "summary": summary.to_dict("records"),
         "paired_differences": diffs.to_dict("records")}, indent=1))
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
    if summary.get("base_models") != base_models(base) or base_models(base) == "unrecorded":
        return None, "the seed sweep on record was trained from other base models than this run's: `make sweep`"
    for row in summary.get("paired_differences", []):
        if (row["sweep"], row["variant"], row["vs"]) == (name, "distilled", f"{name}/ce_baseline"):
            return row, ""
    return None, f"the seed sweep on record has no distilled-vs-CE-only pair for setting {name!r}"
