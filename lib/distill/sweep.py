"""Seed sweeps: one training setting repeated over seeds, every student scored on the same questions.

A difference between two students of one run is noise until it exceeds the seed-to-seed spread. A
sweep trains the study's students (01_distill and, unless told otherwise, the CE-only baseline) once
per seed, all from the base run's tuned teacher and pruned student, so that only the seed moves: it
draws the training examples, their windows, the LoRA init and the batch order. Every student is then
scored on one fixed set of validation questions (the base run's, so seeds do not also change the
exam): teacher-forced answer loss and top-1 accuracy, and EM/F1 of greedy answers. The summary gives
mean and standard deviation over seeds, and each setting's difference to a reference paired by seed
(same seed, same training examples).

    python -m distill sweep params/<profile>.yaml --name default --seeds 0,1,2
    python -m distill sweep params/<profile>.yaml --name answer_positions --seeds 0,1,2 \
        --set distill_positions=answer --variants distilled
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import pandas as pd

from . import benchmark, data, models, paths, plots, stats, study
from .params import ParamsError, StudyParams

VARIANT_STEPS = {"distilled": "01_distill", "ce_baseline": "01_distill_ce_baseline"}
SCORES = ("answer_loss", "top1_accuracy", "exact_match", "f1")
LOWER_IS_BETTER = {"answer_loss"}
SHARED_MODELS = ("teacher", "student_init")  # folders of the base run that every seed run reuses
REFERENCES = ("teacher", "student_before")
SET_BY_SWEEP = {"run_name", "seed", "output_dir", "deploy_dir"}
MADE_BY_BASE_RUN = {"student", "model_dtype", "squad_dir", "data_pool_rows"}  # and every teacher* and prune_* key


class StaleSeedRun(RuntimeError):
    """A seed run was made from a teacher or pruned student the base run has since replaced."""


def seed_run_name(base: StudyParams, name: str, seed: int) -> str:
    # the leading underscore keeps per-seed reports out of git (see .gitignore); the summary is committed
    return f"_{base.run_name}_{name}_seed{seed}"


def seed_params(base: StudyParams, name: str, seed: int, overrides: dict[str, Any]) -> StudyParams:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ParamsError(f"--name {name!r}: use letters, digits, - and _ only (it names folders)")
    for key in overrides:
        if key in SET_BY_SWEEP:
            raise ParamsError(f"--set {key}: the sweep sets it (seeds come from --seeds, folders from --name)")
        if key in MADE_BY_BASE_RUN or key.startswith(("teacher", "prune_")):
            raise ParamsError(f"--set {key}: a sweep reuses the base run's teacher and pruned student; for another "
                              f"{key}, run a profile with it (python -m distill run ... --set {key}=...) and sweep that")
    run_name = seed_run_name(base, name, seed)
    # beside the base run: under artifacts/ by default, or in the base run's own output_dir when it has one
    output_dir = str(base.run_dir.parent / run_name) if base.output_dir else ""
    return base.replace(**overrides, seed=seed, run_name=run_name, output_dir=output_dir, deploy_dir="")


def share_base_models(base: StudyParams, p: StudyParams) -> None:
    """Give a seed run the base run's tuned teacher and pruned student (hard links: no extra disk)."""
    for name in SHARED_MODELS:
        src, dst = base.run_dir / name, p.run_dir / name
        if not (src / "config.json").exists():
            if name == "teacher" and not base.teacher_finetune or name == "student_init" and base.student != "prune":
                continue
            raise FileNotFoundError(f"{src}: the base run has no {name}; make it first with "
                                    f"`python -m distill run <params> --only 00_teacher`")
        if dst.exists():
            stale = [f.name for f in src.iterdir() if f.is_file() and not (
                (dst / f.name).exists() and filecmp.cmp(f, dst / f.name, shallow=True))]
            if stale:
                raise StaleSeedRun(f"{p.run_dir}: trained from an older {name} of {base.run_name} ({', '.join(stale)} "
                                   f"changed since); delete {p.run_dir} to retrain it, or use another --name")
            continue
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        tmp.rename(dst)


def base_fingerprint(base: StudyParams) -> str:
    """Names the base run's tuned teacher and pruned student by content (or by spec, when the run made none):
    records trained from other models carry another fingerprint and are never mixed with these."""
    digest = hashlib.sha256()
    for name, spec in zip(SHARED_MODELS, (base.teacher, base.student)):
        folder = base.run_dir / name
        files = sorted(f for f in folder.iterdir() if f.is_file()) if (folder / "config.json").exists() else []
        digest.update(f"{name}:{spec}".encode() if not files else name.encode())
        for f in files:
            with f.open("rb") as fh:
                digest.update(f.name.encode() + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()[:16]


def recorded_bases(base: StudyParams) -> set[str]:
    """The fingerprints of the base models the run's recorded sweeps were trained from."""
    return {r.get("base_models", "unrecorded") for r in load_records(sweeps_dir(base))}


def check_recorded_base(base: StudyParams, fingerprint: str) -> None:
    """Stop before any training when the run's recorded sweeps came from other base models than the run has now."""
    other = recorded_bases(base) - {fingerprint}
    if other:
        raise StaleSeedRun(f"{sweeps_dir(base)}: its recorded students were trained from other base models "
                           f"({', '.join(sorted(other))}) than {base.run_name} has now ({fingerprint}); pairing them "
                           f"with new seeds would mix two experiments. Move that folder away to start the sweeps over.")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def trained(p: StudyParams, variant: str) -> bool:
    return (study.variant_dir(p, variant) / "best").is_dir()


def train_seed(base: StudyParams, p: StudyParams, variants: list[str], log: Callable[[str], None] = print) -> None:
    """Run the training notebooks this seed still lacks (a finished variant is not trained again)."""
    from .runner import run_study

    share_base_models(base, p)
    missing = [VARIANT_STEPS[v] for v in variants if not trained(p, v)]
    if not missing:
        log(f"{p.run_name}: {', '.join(variants)} already trained")
        return
    if run_study(p, only=missing, log=log) != 0:
        raise RuntimeError(f"{p.run_name}: training failed; see {p.report_dir}/index.html")


def questions(base: StudyParams, n: int) -> list[dict[str, Any]]:
    """The base run's validation questions (a prefix of the same shuffle for any n)."""
    dev = data.load_squad("validation", base.squad_dir, base.data_pool_rows)
    return data.disjoint_subsets(dev, [n], base.seed)[0]


def scored_source(p: StudyParams, who: str) -> str:
    """Where a scored model comes from: a trained variant's best checkpoint, or a reference model."""
    if who == "teacher":
        return study.teacher_source(p)
    if who == "student_before":
        return study.student_source(p)
    return str(study.variant_dir(p, who) / "best")


def load_scored_model(p: StudyParams, who: str, device):
    """(model, tokenizer): a trained variant (adapter merged into its base), or a reference model as the study
    loads it (the teacher 4-bit where the profile says so)."""
    from peft import PeftModel

    if who == "teacher":
        return study.load_teacher(p, device)
    if who == "student_before":
        return study.load_student(p, device)
    best = Path(scored_source(p, who))
    if not (best / "adapter_config.json").exists():
        return models.load_model(str(best), dtype=p.model_dtype, device=device), models.load_tokenizer(str(best))
    base_model, _ = study.load_student(p, device)
    merged = PeftModel.from_pretrained(base_model, str(best)).merge_and_unload().eval()
    return merged, models.load_tokenizer(str(best))


def score(p: StudyParams, who: str, rows: list[dict[str, Any]], base_seed: int, device) -> dict[str, Any]:
    """Quality scores of one model on `rows`, cached beside the run; a model saved after its cache is scored again."""
    cache = p.run_dir / f"scores_{who}_{len(rows)}q.json"
    source = Path(scored_source(p, who))
    if cache.exists() and (not source.exists() or cache.stat().st_mtime > source.stat().st_mtime):
        return json.loads(cache.read_text())
    model, tokenizer = load_scored_model(p, who, device)
    result = benchmark.evaluate(model, tokenizer, rows, max_length=p.max_length, max_new_tokens=p.max_new_tokens,
                                batch_size=p.bench_batch_size, seed=base_seed, device=device)
    out = {k: result[k] for k in (*SCORES, "n_examples", "answer_tokens")}
    paths.write_text_atomic(cache, json.dumps(out, indent=1))
    return out


def run_sweep(base: StudyParams, name: str, seeds: list[int], variants: list[str], overrides: dict[str, Any],
              n_questions: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train what is missing, score every student; returns one record per (seed, variant)."""
    unknown = set(variants) - set(VARIANT_STEPS)
    if unknown:
        raise ParamsError(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANT_STEPS)}")
    if not seeds:
        raise ParamsError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
    runs = [seed_params(base, name, s, overrides) for s in seeds]  # validate every seed's params first
    recorded = sweeps_dir(base) / f"{name}.json"
    setting = json.dumps(overrides, sort_keys=True)
    if recorded.exists() and any(r["overrides"] != setting for r in json.loads(recorded.read_text())):
        raise ParamsError(f"--name {name}: {recorded} holds seeds trained with other settings; give this setting "
                          f"its own --name")
    fingerprint = base_fingerprint(base)
    check_recorded_base(base, fingerprint)
    rows = questions(base, n_questions)
    device = models.resolve_device(base.device)
    records = []
    for p in runs:
        train_seed(base, p, variants, log)
        for v in variants:
            models.setup_torch(p.seed, p.torch_threads)
            s = score(p, v, rows, base.seed, device)
            log(f"{p.run_name} {v}: " + ", ".join(f"{k} {s[k]:.3f}" for k in SCORES))
            records.append({"sweep": name, "variant": v, "seed": p.seed, "questions": n_questions,
                            "base_models": fingerprint, **s, "overrides": setting})
    return records


def score_references(base: StudyParams, n_questions: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The study's teacher and its untrained student on the same questions (the ceiling and the start)."""
    rows = questions(base, n_questions)
    device = models.resolve_device(base.device)
    fingerprint = base_fingerprint(base)
    out = []
    for who in REFERENCES:
        models.setup_torch(base.seed, base.torch_threads)
        s = score(base, who, rows, base.seed, device)
        log(f"{base.run_name} {who}: " + ", ".join(f"{k} {s[k]:.3f}" for k in SCORES))
        out.append({"sweep": "reference", "variant": who, "seed": base.seed, "questions": n_questions,
                    "base_models": fingerprint, **s, "overrides": "{}"})
    return out


# --------------------------------------------------------------------------------------------
# Summary across sweeps
# --------------------------------------------------------------------------------------------
def sweeps_dir(base: StudyParams) -> Path:
    return base.report_dir / "sweeps"


def save_records(base: StudyParams, name: str, records: list[dict[str, Any]]) -> Path:
    """Add a sweep's records to `<name>.json`: a (variant, seed) scored again replaces its old record, the
    others stay (extending a sweep to more seeds must not drop the seeds it already has)."""
    out = sweeps_dir(base) / f"{name}.json"
    fresh = {(r["variant"], r["seed"]) for r in records}
    kept = [r for r in (json.loads(out.read_text()) if out.exists() else []) if (r["variant"], r["seed"]) not in fresh]
    merged = sorted(kept + records, key=lambda r: r["seed"])  # stable: variants keep their order within a seed
    paths.write_text_atomic(out, json.dumps(merged, indent=1))
    return out


def load_records(folder: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    # the profile's own setting first, the other settings by name, the reference models last
    order = {"default.json": "0", "reference.json": "2"}
    for f in sorted(folder.glob("*.json"), key=lambda f: order.get(f.name, "1") + f.name):
        if f.name != "summary.json":
            records += json.loads(f.read_text())
    return records


def questions_asked(record: dict[str, Any]) -> int:
    # records written before the field existed scored every question they were given
    return int(record.get("questions", record["n_examples"]))


def sweep_questions(base: StudyParams, asked: int) -> int:
    """How many validation questions a new sweep scores: `asked`, else what the recorded sweeps scored, else
    bench_size. Sweeps on different questions are never compared, so a mismatch stops before any training."""
    recorded = {questions_asked(r) for r in load_records(sweeps_dir(base))}
    if len(recorded) > 1:
        raise ParamsError(f"{sweeps_dir(base)}: its sweeps scored different numbers of questions {sorted(recorded)}; "
                          "keep the files of one count there")
    if asked and recorded and asked not in recorded:
        raise ParamsError(f"--questions {asked}: the sweeps in {sweeps_dir(base)} scored {recorded.pop()} questions, "
                          "and differences are only paired on the same questions; drop --questions or move those "
                          "files away to start over")
    return asked or (recorded.pop() if recorded else base.bench_size)


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


def write_summary(base: StudyParams, reference: tuple[str, str] = ("default", "ce_baseline")) -> Path:
    """summary.txt/.csv/.json in reports/<base run>/sweeps/ from every sweep recorded there."""
    folder = sweeps_dir(base)
    records = load_records(folder)
    if not records:
        raise FileNotFoundError(f"{folder}: no sweep records; run `python -m distill sweep <params> --name ...` first")
    summary, diffs = summarize(records), paired_differences(records, reference)
    paths.write_text_atomic(folder / "summary.txt", summary_text(summary, diffs))
    paths.write_text_atomic(folder / "summary.csv", pd.concat([summary, diffs]).to_csv(index=False))
    paths.write_text_atomic(folder / "summary.json", json.dumps(
        {"summary": summary.to_dict("records"), "paired_differences": diffs.to_dict("records")}, indent=1))
    n = int(summary["questions"].iloc[0])
    fig = plots.seed_scores(records, f"{base.run_name}: students over seeds ({n} validation questions)")
    plots.save(fig, folder, "seed_scores")
    plt.close(fig)
    if len(diffs):
        fig = plots.seed_differences(seed_differences(records, reference), "/".join(reference),
                                     f"{base.run_name}: each setting minus {'/'.join(reference)}, paired by seed "
                                     f"({n} validation questions)")
        plots.save(fig, folder, "paired_differences")
        plt.close(fig)
    return folder / "summary.txt"


def report_note(base: StudyParams) -> str:
    """What the benchmark report says about seed spread: the sweep summary when there is one, and whether its
    students came from the teacher and pruned student this run has now (content fingerprints, not file times,
    so a fresh clone or a re-made teacher is told apart)."""
    summary = sweeps_dir(base) / "summary.txt"
    if not summary.exists():
        return ("No seed sweep for this run yet: the gap between the distilled and the CE-only student above is "
                "one seed's, not a finding. Measure the spread with\n"
                f"    python -m distill sweep params/<profile>.yaml --name default --seeds 0,1,2   (or: make sweep)")
    recorded = sorted(recorded_bases(base))
    current = base_fingerprint(base)
    if recorded == [current]:
        origin = f"its students were trained from this run's teacher and pruned student (base models {current})"
    else:
        origin = (f"NOTE: its students were trained from other base models ({', '.join(recorded)}) than this run has "
                  f"now ({current}), e.g. a teacher re-made on another machine; its pairs compare students of those "
                  "models. Move that folder away and run `make sweep` to measure this run's")
    return f"{summary}: {origin}.\n\n{summary.read_text()}"
