"""The capacity grid: how small can the student get, and where does distillation pay?

Students of several sizes are cut from the run's tuned teacher (the layers `prune_method` ranks highest,
from the importance 00_teacher measured), and each is trained CE-only and distilled from the run's teacher
cache, once per seed. Per seed every size sees the same training examples, windows and batch order, so a
difference between sizes is the size's. Every model answers the same `capacity_questions` validation
questions; each is also timed answering `latency_prompts` of them one at a time (batch 1): greedy until its
answer ends (what a user waits for, longer for a model that rambles) and at a fixed answer length of
`max_new_tokens` tokens (the architecture's cost alone).

The analysis and the report's numbers live in `report.capacity_report`, the scoring in `study.scoring`.

    python -m distill run params/capacity_cpu.yaml --only capacity-report     (make capacity)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.core.params import StudyParams, precision_settings
from distill.parts import models, pruning, teacher_cache
from distill.study import layout, steps
from distill.study.layout import project_relative

# The grid's trainings when the profile names no capacity_arms: the study's two students, CE-only first (each
# size's baseline is trained, scored and shown before its distilled twin).
DEFAULT_ARMS = {"ce_baseline": {"variant": "ce_baseline"}, "distilled": {"variant": "distilled"}}
REPORT_FILES = ("capacity.json", "capacity_table.csv", "capacity_f1_vs_params.png", "capacity_f1_vs_latency.png",
                "capacity_distillation_gain.png")


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
    """A grid model's scores; the teacher's names its precision unless it is float32 (e.g. `-nf4-float32`)."""
    q = base.capacity_questions
    if model == "teacher":
        return capacity_dir(base) / "teacher" / f"scores_{q}q{teacher_cache.precision_suffix(base)}.json"
    return seed_dir(base, keep, seed) / "scores" / f"{model}_{q}q.json"


def teacher_held(base: StudyParams, precision: str) -> StudyParams:
    """The grid's params with its teacher held in a 4-bit `precision` (e.g. nf4-float32), to score or load it."""
    return base.replace(fidelity_precisions=[], **precision_settings(precision))


def fidelity_file(base: StudyParams, precision: str) -> Path:
    """The teacher in `precision` measured against the float32 teacher (scoring.measure_fidelity)."""
    return capacity_dir(base) / "teacher" / f"fidelity_{base.capacity_questions}q-{precision}.json"


def seed_params(base: StudyParams, keep: int, seed: int) -> StudyParams:
    """The params one grid cell trains with: the base run's, this seed, the student of `keep` layers; the base
    run's tuned teacher and teacher cache."""
    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    # the leading underscore keeps the cells' own training reports out of git (see .gitignore)
    return base.replace(seed=seed, student=rel(student_dir(base, keep)), capacity_keep=[], capacity_arms={}, fidelity_precisions=[],
                        teacher_seed=base.seed if base.teacher_seed < 0 else base.teacher_seed, run_name=f"_{base.run_name}_keep{keep}_seed{seed}", output_dir=rel(seed_dir(base, keep, seed)),
                        deploy_dir="", base_run_dir=rel(base.run_dir))


def arms(base: StudyParams) -> dict[str, dict[str, Any]]:
    """The trainings of every grid cell, {arm: its settings}, the CE-only baseline among them."""
    return base.capacity_arms or DEFAULT_ARMS


def baseline_arm(base: StudyParams) -> str:
    """The arm every other is compared with: the CE-only student on the gold answers."""
    return next(a for a, s in arms(base).items() if s.get("variant") == "ce_baseline")


def arm_params(base: StudyParams, keep: int, seed: int, arm: str) -> StudyParams:
    """The params one arm of one cell trains with. The default arms train in the cell's folder as the study's two
    variants; named arms each train in a folder of their own, the cell's params with the arm's settings."""
    settings = dict(arms(base)[arm])
    variant = settings.pop("variant", "distilled")
    sp = seed_params(base, keep, seed)
    if base.capacity_arms:
        sp = sp.replace(run_name=f"{sp.run_name}_{arm}",
                        output_dir=project_relative(seed_dir(base, keep, seed) / arm, "output_dir"))
    return layout.variant_params(sp, variant).replace(**settings)


def cells(base: StudyParams) -> list[tuple[int, int]]:
    return [(keep, seed) for keep in sorted(base.capacity_keep, reverse=True) for seed in base.capacity_seeds]


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def make_students(base: StudyParams) -> list[dict[str, Any]]:
    """Cut every grid size from the tuned teacher, ranked by the importance 00_teacher measured."""
    info = json.loads((layout.student_init_dir(base) / "pruning.json").read_text(encoding="utf-8"))
    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    source = steps.teacher_source(base)
    teacher = models.load_model(source, dtype=base.model_dtype, device=device)
    tokenizer = models.load_tokenizer(source)
    n_layers = len(models.decoder_layers(teacher))
    too_big = [k for k in base.capacity_keep if k >= n_layers]
    if too_big:
        raise ValueError(f"capacity_keep: {too_big} is not smaller than the teacher's {n_layers} layers; give sizes "
                         f"below {n_layers}")
    made = []
    for keep in sorted(base.capacity_keep, reverse=True):
        layers = steps.pruned_layers(base, teacher.config, info["importance"], keep=keep)
        student = pruning.prune_layers(teacher, layers)
        meta = {"kept_layers": layers, "importance": info["importance"], "method": base.prune_method}
        models.atomic_save_pretrained(student, tokenizer, student_dir(base, keep),
                                      extra=lambda tmp, m=meta: (tmp / "pruning.json").write_text(json.dumps(m, indent=1)))
        made.append({"layers": keep, "kept": layers, "params_m": models.count_params(student) / 1e6})
        print(f"{keep} layers {layers}: {made[-1]['params_m']:.1f} M parameters", flush=True)
        del student
    return made

