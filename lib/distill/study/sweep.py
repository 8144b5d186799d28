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

import yaml

from distill.core import paths
from distill.core.params import ParamsError, StudyParams
from distill.parts import metrics, models
from distill.study import merge, steps
from distill.study.layout import VARIANTS, pipeline_dir, project_relative

SCORES = ("answer_loss", "top1_accuracy", "exact_match", "f1")
REFERENCES = ("teacher", "student_before")
SET_BY_SWEEP = {"run_name", "seed", "output_dir", "deploy_dir", "base_run_dir", "variant"}
MADE_BY_BASE_RUN = {"student", "model_dtype", "squad_dir", "data_pool_rows"}  # and every teacher* and prune_* key
CACHE_KEYS = {"teacher_cache", "teacher_cache_k"}  # how the teacher's targets are read, not which teacher
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def registry_file(base: StudyParams) -> Path:
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
    check_setting(name, overrides)
    # the leading underscore keeps per-seed reports out of git (see .gitignore); the summary is committed
    return base.replace(capacity_keep=[], capacity_arms={}, fidelity_precisions=[], **overrides, seed=seed,
                        teacher_seed=base.seed if base.teacher_seed < 0 else base.teacher_seed, run_name=f"_{base.run_name}_{name}_seed{seed}",
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


def load_student_or_reference(p: StudyParams, who: str, device):
    """(model, tokenizer): a seed run's trained variant (merged in memory by `merge.merged_student`, logits
    checked), or a reference model as the study loads it (the teacher 4-bit where the profile says so)."""
    if who == "teacher":
        return steps.load_teacher(p, device)
    if who == "student_before":
        return steps.load_student(p, device)
    probe = steps.load_data(p).eval_rows[:4]
    merged, tokenizer, _ = merge.merged_student(p, who, device, probe)
    return models.freeze(merged), tokenizer


def records(base: StudyParams) -> list[dict[str, Any]]:
    """One record per scored student and reference model, from the sweep stages' score files, with its F1 per
    question (`f1_per_question`, 0-100, by question id: its answer against the run's gold answers)."""
    reg = load_registry(base)
    q = int(reg["questions"])
    gold = {r["id"]: r["answers"]["text"] for r in steps.bench_rows(base, q)}

    def scored(s: dict[str, Any]) -> dict[str, Any]:
        per_q = [100.0 * r["f1"] for r in metrics.per_example_scores(s["predictions"],
                                                                     [gold[i] for i in s["question_ids"]])]
        if abs(sum(per_q) / len(per_q) - s["f1"]) > 1e-6:  # the gold answers are not the ones it was scored on
            raise ValueError(f"a sweep score file's answers re-score to F1 {sum(per_q) / len(per_q):.3f}, not its "
                             f"{s['f1']:.3f}: the run's questions changed since; re-run its sweep-score stages")
        return {**{k: s[k] for k in (*SCORES, "n_examples")}, "f1_per_question": dict(zip(s["question_ids"], per_q))}

    out = []
    for name, entry in reg["sweeps"].items():
        for seed in entry["seeds"]:
            for variant in entry["variants"]:
                s = json.loads(score_file(base, name, seed, variant, q).read_text())
                out.append({"sweep": name, "variant": variant, "seed": seed, "questions": q, **scored(s),
                            "overrides": json.dumps(entry["set"], sort_keys=True)})
    for model in REFERENCES:
        s = json.loads(score_file(base, "reference", None, model, q).read_text())
        out.append({"sweep": "reference", "variant": model, "seed": base.seed, "questions": q, **scored(s),
                    "overrides": "{}"})
    return out


def base_models_digest(base: StudyParams) -> str:
    """The content hashes DVC recorded for the run's tuned teacher and pruned student (its dvc.lock), shortened."""
    lock = pipeline_dir(base) / "dvc.lock"
    if not lock.exists():
        return "unrecorded"
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("teacher", {})
    hashes = [o.get("md5", "")[:8] for o in entry.get("outs", []) if o.get("md5", "").endswith(".dir")]
    return "-".join(hashes) or "unrecorded"

