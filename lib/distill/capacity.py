"""The capacity grid: how small can the student get, and where does distillation pay?

Students of several sizes are cut from the run's tuned teacher (the layers `prune_method` ranks highest,
from the importance 00_teacher measured), and each is trained CE-only and distilled from the run's teacher
cache, once per seed. Per seed every size sees the same training examples, windows and batch order, so a
difference between sizes is the size's. Every model answers the same `capacity_questions` validation
questions; each is also timed answering `latency_prompts` of them one at a time (batch 1): greedy until its
answer ends (what a user waits for, longer for a model that rambles) and at a fixed answer length of
`max_new_tokens` tokens (the architecture's cost alone).

The analysis and the report's numbers live in `capacity_report` (only the report stage reads it).

    python -m distill run params/capacity_cpu.yaml --only capacity-report     (make capacity)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import paths
from .params import StudyParams

VARIANTS = ("ce_baseline", "distilled")


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
    q = base.capacity_questions
    if model == "teacher":
        return capacity_dir(base) / "teacher" / f"scores_{q}q.json"
    return seed_dir(base, keep, seed) / "scores" / f"{model}_{q}q.json"


def seed_params(base: StudyParams, keep: int, seed: int) -> StudyParams:
    """The params one grid cell trains with: the base run's, this seed, the student of `keep` layers; the base
    run's tuned teacher and teacher cache."""
    from .pipeline import project_relative

    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    # the leading underscore keeps the cells' own training reports out of git (see .gitignore)
    return base.replace(seed=seed, student=rel(student_dir(base, keep)), capacity_keep=[],
                        run_name=f"_{base.run_name}_keep{keep}_seed{seed}", output_dir=rel(seed_dir(base, keep, seed)),
                        deploy_dir="", base_run_dir=rel(base.run_dir))


def cells(base: StudyParams) -> list[tuple[int, int]]:
    return [(keep, seed) for keep in sorted(base.capacity_keep, reverse=True) for seed in base.capacity_seeds]


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
def stages(base: StudyParams) -> list:
    """The grid's DVC stages: cut the students, train and score each cell, score the teacher, the report."""
    if not base.capacity_keep:
        return []
    from . import study
    from .pipeline import RUNTIME, SCORING, Stage, base_models_dirs, project_relative, train_stage

    rel = lambda path, what="output_dir": project_relative(path, what)  # noqa: E731
    lib = "lib/distill"
    code = [f"{lib}/{m}.py" for m in ("params", "data", "models", "sources", "tiny", "study", "paths", "stage",
                                      "capacity")]
    scoring_code = [*code, f"{lib}/benchmark.py", f"{lib}/metrics.py", f"{lib}/merge.py", f"{lib}/sweep.py"]
    made = [rel(d) for d in base_models_dirs(base)]
    teacher_dir = [rel(study.tuned_teacher_dir(base))] if base.teacher_finetune else []
    out = [Stage("capacity-students", ["capacity-students"],
                 RUNTIME + ["capacity_keep", "prune_method", "teacher", "teacher_finetune"],
                 deps=[*code, f"{lib}/pruning.py", *made], outs=[rel(student_dir(base, k)) for k in base.capacity_keep],
                 title=f"Capacity grid: students of {', '.join(map(str, sorted(base.capacity_keep)))} layers")]
    keys = [k for k in SCORING if k != "bench_size"] + ["capacity_questions", "latency_prompts"]
    score_files = [rel(score_file(base, "teacher"))]
    out.append(Stage("capacity-score-teacher", ["capacity-score", "teacher"],
                     keys + ["teacher", "teacher_load_in_4bit", "bnb_compute_dtype"],
                     deps=[*scoring_code, *teacher_dir], outs=score_files[:], title="Capacity grid: the teacher"))
    for keep, seed in cells(base):
        sp = seed_params(base, keep, seed)
        student = rel(student_dir(base, keep))
        for variant in VARIANTS:
            name = f"capacity-keep{keep}-seed{seed}-{variant}"
            train = train_stage(sp, variant, name, ["capacity-train", str(keep), str(seed), variant])
            train.params = [k for k in train.params if k not in ("seed", "student")]  # this cell's are in its name
            train.deps.append(student)
            train.deps_models.append(student)
            out.append(train)
            f = rel(score_file(base, variant, keep, seed))
            score_files.append(f)
            out.append(Stage(f"score-{name}", ["capacity-score", variant, str(keep), str(seed)], keys,
                             deps=[*scoring_code, *train.persist, student, *teacher_dir], outs=[f],
                             title=f"Capacity grid: {keep} layers, seed {seed}, {variant}"))
    rep = rel(base.report_dir, "reports")
    out.append(Stage("capacity-report", ["capacity-report"],
                     ["run_name", "capacity_keep", "capacity_seeds", "capacity_questions"],
                     deps=["notebooks/04_capacity.py", f"{lib}/capacity_report.py", f"{lib}/plots.py", f"{lib}/runner.py",
                           f"{lib}/summaries.py",
                           f"{lib}/stats.py", *score_files],
                     reports=[f"{rep}/{f}" for f in REPORT_FILES] + [f"{rel(base.run_dir)}/executed/04_capacity.ipynb"],
                     notebook="04_capacity", title="Capacity: how small can the student get?"))
    return out


REPORT_FILES = ("capacity.json", "capacity_table.csv", "capacity_f1_vs_params.png",
                "capacity_f1_vs_latency.png", "capacity_distillation_gain.png")


def make_students(base: StudyParams) -> list[dict[str, Any]]:
    """Cut every grid size from the tuned teacher, ranked by the importance 00_teacher measured."""
    from . import models, pruning, study

    info = json.loads((study.student_init_dir(base) / "pruning.json").read_text(encoding="utf-8"))
    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    source = study.teacher_source(base)
    teacher = models.load_model(source, dtype=base.model_dtype, device=device)
    tokenizer = models.load_tokenizer(source)
    n_layers = len(models.decoder_layers(teacher))
    too_big = [k for k in base.capacity_keep if k >= n_layers]
    if too_big:
        raise ValueError(f"capacity_keep: {too_big} is not smaller than the teacher's {n_layers} layers; give sizes "
                         f"below {n_layers}")
    made = []
    for keep in sorted(base.capacity_keep, reverse=True):
        layers = pruning.choose_layers(n_layers, keep, base.prune_method, info["importance"])
        student = pruning.prune_layers(teacher, layers)
        meta = {"kept_layers": layers, "importance": info["importance"], "method": base.prune_method}
        models.atomic_save_pretrained(student, tokenizer, student_dir(base, keep),
                                      extra=lambda tmp, m=meta: (tmp / "pruning.json").write_text(json.dumps(m, indent=1)))
        made.append({"layers": keep, "kept": layers, "params_m": models.count_params(student) / 1e6})
        print(f"{keep} layers {layers}: {made[-1]['params_m']:.1f} M parameters", flush=True)
        del student
    return made


def score(base: StudyParams, model: str, keep: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Score one model of the grid on the capacity questions (EM/F1, answer loss, top-1) and time it at batch 1."""
    import time

    from . import benchmark, metrics, models, study, sweep

    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    rows = study.bench_rows(base, base.capacity_questions)  # the base run's questions, whatever the cell's seed
    if model == "teacher":
        sp = base
        loaded, tokenizer = study.load_teacher(base, device)
    else:
        sp = seed_params(base, keep, seed)
        loaded, tokenizer = sweep.load_student_or_reference(sp, model, device)
    t0 = time.perf_counter()
    kwargs = dict(max_length=sp.max_length, max_new_tokens=sp.max_new_tokens, seed=base.seed, device=device)
    result = benchmark.evaluate(loaded, tokenizer, rows, batch_size=sp.bench_batch_size, **kwargs)
    latency = benchmark.request_latency(loaded, tokenizer, rows[:base.latency_prompts], **kwargs)
    per_question = metrics.per_example_scores(result["predictions"], result["references"])
    out = {"variant": model, "layers": keep if keep is not None else len(models.decoder_layers(loaded)),
           "params_m": models.count_params(loaded) / 1e6, "seed": base.seed if seed is None else seed,
           "n_questions": result["n_examples"], **{k: result[k] for k in ("exact_match", "f1", "answer_loss",
                                                                          "top1_accuracy", "answer_tokens")},
           **latency, "throughput_batched_examples_per_s": result["throughput_examples_per_s"],
           "question_ids": result["question_ids"], "f1_per_question": [r["f1"] for r in per_question],
           "em_per_question": [r["exact_match"] for r in per_question],
           "predictions": dict(zip(result["question_ids"], result["predictions"])),
           "wall_s": time.perf_counter() - t0}
    f = score_file(base, model, keep, seed)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    print(f"{model} {out['layers']} layers seed {out['seed']}: EM {out['exact_match']:.1f} F1 {out['f1']:.1f} "
          f"answer loss {out['answer_loss']:.3f}; batch-1 latency (median of {out['latency_batch1_prompts']}) "
          f"{out['latency_batch1_ms_median']:.0f} ms to the answer's end, {out['latency_batch1_fixed_ms_median']:.0f} "
          f"ms for {sp.max_new_tokens} tokens; {out['wall_s']:.0f} s", flush=True)
    return out
