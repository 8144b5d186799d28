"""The study as a DVC pipeline: which stages a run has, what each reads and writes, and `dvc repro`.

Every run gets `pipelines/<run_name>/`: `params.yaml` (the profile plus `--set` overrides, every key
explicit, validated), `dvc.yaml` (generated here from those params) and `dvc.lock` (written by DVC:
the hash of every input and output of every stage that ran). DVC decides what is up to date; a stage
re-runs only when its code, its upstream outputs or the params keys it lists change.

What DVC cannot express, and this module adds: a profile written as a partial YAML (defaults from the
schema) with command-line overrides, turned into one explicit params file; the list of report files a
stage writes, which depends on the params (no recovery phase, no recovery chart); and one lock per run
held while the params file is written and DVC runs, so a second run of the same name cannot rewrite the
params under the first.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from distill.core import paths, procs
from distill.core.params import PRECISION_KEYS, ParamsError, StudyParams, from_mapping
from distill.parts import data, teacher_answers, teacher_cache
from distill.report import fourbit_report, signal_report, sweeps
from distill.report.results import METRICS
from distill.study import capacity, sweep
from distill.study.cache import answer_users, cache_users
from distill.study.layout import (
    MODELS,
    VARIANTS,
    base_models_dirs,
    base_run_dir,
    merged_dir,
    model_dir,
    pipeline_dir,
    project_relative,
    run_dir_cache,
    scores_file,
    speed_file,
    tuned_teacher_dir,
    variant_dir,
    variant_params,
)

# The code a stage runs, by layer of lib/distill (DVC hashes each folder): a change in a layer re-runs the stages
# that run it. Every stage computes with ENGINE; a stage that renders a notebook's page also runs REPORT and its
# notebook. The pipeline layer (this folder: DVC, papermill, preflight) only orders and launches stages: a change
# there re-runs nothing.
LIB = "lib/distill"
ENGINE = [f"{LIB}/{layer}" for layer in ("core", "kd", "parts", "study")]
REPORT = [*ENGINE, f"{LIB}/report"]


def code_digest() -> str:
    """One hash of every file of the code any stage depends on (the layer folders and the notebooks), as DVC sees
    them (no __pycache__): taken when a stage starts and again before DVC records it."""
    digest = hashlib.md5()
    roots = [paths.PROJECT_ROOT / d for d in REPORT] + [paths.PROJECT_ROOT / "notebooks"]
    for f in sorted(x for root in roots for x in root.rglob("*") if x.is_file() and "__pycache__" not in x.parts):
        digest.update(f.relative_to(paths.PROJECT_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def notebook_code(notebook: str) -> list[str]:
    """A notebook stage's code: the notebook and every layer it calls."""
    return [f"notebooks/{notebook}.py", *REPORT]


# The params keys each stage reads, by the code it runs (a key not listed here never re-runs the stage).
RUNTIME = ["seed", "device", "torch_threads", "model_dtype", "squad_dir", "data_pool_rows"]
SUBSETS = ["train_size", "eval_size", "teacher_finetune", "teacher_finetune_train_size", "recovery_size",
           "bench_size", "max_length"]  # steps.load_data draws every subset from one seeded shuffle
PRECISION = list(PRECISION_KEYS)
TEACHER = ["teacher", *PRECISION, "teacher_finetune_use_lora", "teacher_finetune_steps", "teacher_finetune_lr"]
STUDENT = ["student", "prune_layers", "prune_keep", "prune_method", "prune_keep_full_attention"]
TRAINER = ["batch_size", "grad_accum_steps", "warmup_ratio", "weight_decay", "logging_steps",
           "gradient_checkpointing", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
STUDENT_TRAINING = ["use_lora", "learning_rate", "max_steps", "eval_steps", "recovery_steps", "alpha_ce"]
TEACHER_TERMS = ["gamma_kl", "beta_mse", "temperature", "kd_kind", "jsd_beta", "kd_chunk_size",
                 "distill_positions", "layer_map", "hidden_loss", "lmbda", "onpolicy_temperature",
                 "onpolicy_max_new_tokens"]
GENERATION = ["max_new_tokens", "bench_batch_size"]
PROCESSES = ["num_processes", "accelerate_config"]  # training and the teacher cache may run on N processes
SCORING = ["seed", "device", "torch_threads", "model_dtype", "squad_dir", "data_pool_rows", "bench_size",
           "max_length", *GENERATION]
# the page (reports/<run>/<name>.html) of each variant's training stage
TRAIN_REPORTS = {"distilled": "01_distill", "ce_baseline": "01_distill_ce_baseline"}


@dataclass
class Stage:
    """One DVC stage: the command's arguments, and what it reads and writes (paths relative to the project)."""
    name: str
    args: list[str]
    params: list[str]
    deps: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)  # cached in .dvc/cache, linked back
    persist: list[str] = field(default_factory=list)  # kept across re-runs: training checkpoints
    reports: list[str] = field(default_factory=list)  # committed files: not cached
    notebook: str = ""  # the notebook a notebook stage executes ...
    report: str = ""  # ... and the name of its executed copy and page (reports/<run>/<report>.html)
    title: str = ""
    extra_params: dict[str, list[str]] = field(default_factory=dict)  # keys of other params files (sweeps.yaml)
    deps_models: list[str] = field(default_factory=list)  # the model folders among deps
    metrics: list[str] = field(default_factory=list)  # small JSON files for `dvc metrics show`, not cached


def params_file(p: StudyParams) -> Path:
    return pipeline_dir(p) / "params.yaml"


def stages(p: StudyParams) -> list[Stage]:
    """The run's stages in the order they run."""
    rel = lambda path, what="output_dir": project_relative(path, what)  # noqa: E731
    run, rep = rel(p.run_dir), rel(p.report_dir, "reports")
    out: list[Stage] = []

    made = [rel(d) for d in base_models_dirs(p)]  # the teacher and pruned student, when the run makes them
    teacher_reports = ["teacher.json", "teacher_em_f1.png"]
    if p.teacher_finetune:
        teacher_reports.append("teacher_finetune_loss.png")
    if p.student == "prune":
        teacher_reports += ["layer_importance.png", "pruned_student_answer_loss.png"]
    out.append(Stage(
        "teacher", ["teacher"], RUNTIME + SUBSETS + TEACHER + STUDENT + TRAINER + GENERATION,
        deps=notebook_code("00_teacher"),
        outs=made, reports=[f"{rep}/{f}" for f in teacher_reports] + [f"{run}/executed/00_teacher.ipynb"],
        notebook="00_teacher", report="00_teacher", title="Teacher: zero-shot, SQuAD fine-tune, pruned student"))

    users, answering = cache_users(p), answer_users(p)
    if users or answering:
        reg = sweep_registry_file(p)
        out.append(Stage(
            "teacher-cache", ["teacher-cache"],
            RUNTIME + SUBSETS + ["teacher", *PRECISION, "teacher_cache",
                                 "teacher_cache_k", "temperature", "distill_positions", "gamma_kl", "recovery_steps",
                                 "batch_size", *PROCESSES,
                                 *(["teacher_answered_size", "teacher_seed", "max_new_tokens", "bench_batch_size"]
                                   if answering else []),
                                 *(["capacity_keep", "capacity_seeds"] if p.capacity_keep else []),
                                 *(["capacity_arms"] if p.capacity_arms else [])],
            deps=[*ENGINE, *made], persist=[rel(run_dir_cache(p))],
            extra_params={reg: ["sweeps"]} if reg else {},
            title=f"Teacher cache: sparse targets of {len(users)} training run(s)"
                  + (f", answers for {len(answering)}" if answering else "")))

    for variant in VARIANTS:
        out.append(train_stage(variant_params(p, variant), f"train-{variant}", ["train", variant]))

    merged = [rel(merged_dir(p, v), "deploy_dir") for v in reversed(VARIANTS)]
    merge_reports = ["merge.json", "merge_logit_check.png"]
    if p.qualitative_examples:
        merge_reports.append("answers_side_by_side.csv")
    out.append(Stage(
        "merge", ["merge"], RUNTIME + SUBSETS + STUDENT + ["teacher", *PRECISION,
                                                           "deploy_dir", "qualitative_examples", *GENERATION],
        deps=[*notebook_code("02_merge"), *made, *[rel(variant_dir(p, v)) for v in reversed(VARIANTS)]],
        # persist: DVC must not delete a deployment before the merge: it is replaced only by a checked new one
        outs=[], persist=merged, reports=[f"{rep}/{f}" for f in merge_reports] + [f"{run}/executed/02_merge.ipynb"],
        notebook="02_merge", report="02_merge", title="Merge the adapters; answers side by side"))

    for model in MODELS:
        source = model_dir(p, model)
        keys = SCORING + (["teacher", *PRECISION] if model == "teacher" else [])
        keys += ["student"] if model == "student_before" else []
        model_deps = [rel(source, "deploy_dir")] if source is not None else []
        out.append(Stage(f"score-{model}", ["score", model], keys, deps=[*ENGINE, *model_deps],
                         outs=[rel(scores_file(p, model))], title=f"EM/F1 and answer loss: {model}"))
        out.append(Stage(f"speed-{model}", ["speed", model], keys + ["bench_warmup", "latency_prompts"],
                         deps=[*ENGINE, *model_deps], outs=[rel(speed_file(p, model))],
                         title=f"latency, throughput, memory: {model} alone in its process"))

    bench_reports = ["results.txt", "results.csv", "results.json", "results.md", "f1_vs_latency.png"]
    bench_reports += [f"{col}_by_model.png" for col, _, _ in METRICS] + [f"predictions_{m}.json" for m in MODELS]
    out.append(Stage(
        "report", ["report"], ["run_name", "seed", "bench_size", "max_new_tokens", "bench_batch_size"],
        deps=[*notebook_code("03_benchmark"),
              *[rel(scores_file(p, m)) for m in MODELS], *[rel(speed_file(p, m)) for m in MODELS]],
        reports=[f"{rep}/{f}" for f in bench_reports] + [f"{run}/executed/03_benchmark.ipynb"],
        metrics=[f"{rep}/metrics.json"], notebook="03_benchmark", report="03_benchmark",
        title="Teacher vs students: size, speed, memory, EM/F1"))
    return out + sweep_stages(p) + capacity_stages(p)


def run_pages(p: StudyParams) -> list[Stage]:
    """The notebook stages whose pages are the run's own (reports/<run>/<report>.html); a sweep's or a capacity
    cell's training page belongs to that seed run."""
    return [s for s in stages(p) if s.report and not s.name.startswith(("sweep-", "capacity-keep"))]


def train_stage(vp: StudyParams, name: str, args: list[str]) -> Stage:
    """Training of one student (01_distill) with the params `vp` (a variant's, a sweep seed's or a grid arm's):
    its keys, its model folders, its files."""
    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    run, rep = rel(vp.run_dir), project_relative(vp.report_dir, "reports")
    variant = vp.variant
    keys = RUNTIME + SUBSETS + STUDENT + TRAINER + STUDENT_TRAINING + PROCESSES + ["teacher"]
    if vp.uses_teacher:
        keys += [*PRECISION, "teacher_placement"] + TEACHER_TERMS
    teacher_files = []
    if vp.uses_teacher_cache:
        keys += ["teacher_cache", "teacher_cache_k", "kd_sparse_tail"]
        teacher_files.append(rel(teacher_cache.view_file(base_run_dir(vp), vp)))
    if vp.teacher_answered_size:
        keys += ["teacher_answered_size", "teacher_seed", "max_new_tokens", *PRECISION]
        teacher_files.append(rel(teacher_answers.view_file(base_run_dir(vp), vp)))
    report_name = TRAIN_REPORTS[variant]
    files = [f"token_lengths_{variant}.png", f"loss_components_{variant}.png",
             f"log_history_{variant}.json"]
    if vp.recovery_steps:
        files.append(f"recovery_loss_components_{variant}.png")
    made = [rel(d) for d in base_models_dirs(vp)]
    return Stage(name, args, keys, deps=[*notebook_code("01_distill"), *made, *teacher_files],
                 persist=[rel(variant_dir(vp, variant))],
                 reports=[f"{rep}/{f}" for f in files] + [f"{run}/executed/{report_name}.ipynb"],
                 notebook="01_distill", report=report_name, deps_models=made,
                 title=("Distillation of the student" if variant == "distilled"
                        else "Baseline: the same student trained on CE only"))


def sweep_stages(base: StudyParams) -> list[Stage]:
    """The sweep stages of a run's pipeline: train each (setting, seed, variant), score it, the references, summary."""
    reg = sweep.load_registry(base)
    if not reg["sweeps"]:
        return []
    q = int(reg["questions"])
    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    regfile = project_relative(sweep.registry_file(base), "sweeps")
    out, score_files = [], []
    for model in sweep.REFERENCES:
        src = model_dir(base, model)
        f = sweep.score_file(base, "reference", None, model, q)
        score_files.append(rel(f))
        keys = [k for k in SCORING if k != "bench_size"] + (["teacher", *PRECISION] if model == "teacher"
                                                            else ["student"])
        out.append(Stage(f"sweep-score-{model}", ["sweep-score", "reference", "-", model, str(q)], keys,
                         deps=[*ENGINE, *([rel(src)] if src else [])], outs=[rel(f)],
                         title=f"{model} on the sweeps' {q} questions"))
    for name, entry in reg["sweeps"].items():
        for seed in entry["seeds"]:
            for variant in entry["variants"]:
                sp = variant_params(sweep.seed_params(base, name, seed, entry["set"]), variant)
                train = train_stage(sp, f"sweep-{name}-seed{seed}-{variant}", ["sweep-train", name, str(seed), variant])
                train.params = [k for k in train.params if k not in entry["set"] and k != "seed"]
                train.extra_params = {regfile: [f"sweeps.{name}.set"]}
                out.append(train)
                f = sweep.score_file(base, name, seed, variant, q)
                score_files.append(rel(f))
                keys = [k for k in SCORING if k not in ("bench_size", "seed") and k not in entry["set"]]
                out.append(Stage(f"sweep-score-{name}-seed{seed}-{variant}",
                                 ["sweep-score", name, str(seed), variant, str(q)], keys,
                                 deps=[*ENGINE, *train.persist, *train.deps_models],
                                 outs=[rel(f)], title=f"{name} seed {seed} {variant} on {q} questions"))
                out[-1].extra_params = {regfile: [f"sweeps.{name}.set"]}
    folder = project_relative(sweeps.sweeps_dir(base), "reports")
    summary_outs = [f"{folder}/summary.txt", f"{folder}/summary.csv", f"{folder}/summary.json",
                    f"{folder}/seed_scores.png", f"{folder}/paired_differences.png"]
    # squad_dir, data_pool_rows, seed: which questions were scored, whose gold answers re-score each student
    out.append(Stage("sweep-summary", ["sweep-summary"], ["run_name", "squad_dir", "data_pool_rows", "seed"],
                     deps=[*REPORT, *score_files],
                     reports=summary_outs, title="Seed sweeps: mean, spread and paired differences"))
    out[-1].extra_params = {regfile: ["sweeps", "reference"]}
    return out


def capacity_stages(base: StudyParams) -> list[Stage]:
    """The grid's DVC stages: cut the students, train and score each cell, score the teacher, the report; and the
    teacher's 4-bit fidelity (a run may measure it without a grid: then no students, only the teachers)."""
    if not base.capacity_keep and not base.fidelity_precisions:
        return []
    rel = lambda path, what="output_dir": project_relative(path, what)  # noqa: E731
    made = [rel(d) for d in base_models_dirs(base)]
    teacher_dir = [rel(tuned_teacher_dir(base))] if base.teacher_finetune else []
    out = [Stage("capacity-students", ["capacity-students"],
                 RUNTIME + ["capacity_keep", "prune_method", "prune_keep_full_attention", "teacher", "teacher_finetune"],
                 deps=[*ENGINE, *made], outs=[rel(capacity.student_dir(base, k)) for k in base.capacity_keep],
                 title=f"Capacity grid: students of {', '.join(map(str, sorted(base.capacity_keep)))} layers")
           ] if base.capacity_keep else []
    keys = [k for k in SCORING if k != "bench_size"] + ["capacity_questions", "latency_prompts"]
    score_files = [rel(capacity.score_file(base, "teacher"))]
    out.append(Stage("capacity-score-teacher", ["capacity-score", "teacher"],
                     keys + ["teacher", *PRECISION],
                     deps=[*ENGINE, *teacher_dir], outs=score_files[:], title="Capacity grid: the teacher"))
    fidelity_files = []
    for precision in base.fidelity_precisions:  # the same teacher held in 4 bits: its scores, and its distance
        f = rel(capacity.score_file(capacity.teacher_held(base, precision), "teacher"))
        fidelity_files += [f, rel(capacity.fidelity_file(base, precision))]
        out.append(Stage(f"capacity-score-teacher-{precision}", ["capacity-score", "teacher", precision],
                         keys + ["teacher"], deps=[*ENGINE, *teacher_dir], outs=[f],
                         title=f"Capacity grid: the teacher in {precision}"))
        out.append(Stage(f"fidelity-{precision}", ["fidelity", precision],
                         keys + ["teacher", "temperature", "teacher_cache_k", "batch_size"],
                         deps=[*ENGINE, *teacher_dir], outs=[fidelity_files[-1]],
                         title=f"Teacher fidelity: {precision} against float32"))
    arms = capacity.arms(base)
    for keep, seed in capacity.cells(base):
        student = rel(capacity.student_dir(base, keep))
        for variant in arms:
            name = f"capacity-keep{keep}-seed{seed}-{variant}"
            train = train_stage(capacity.arm_params(base, keep, seed, variant), name,
                                ["capacity-train", str(keep), str(seed), variant])
            # this cell's seed and student are in its name; a named arm's own settings are its params entry
            train.params = [k for k in train.params if k not in ("seed", "student", *arms[variant])]
            if base.capacity_arms:
                train.params.append(f"capacity_arms.{variant}")
            train.deps.append(student)
            train.deps_models.append(student)
            out.append(train)
            f = rel(capacity.score_file(base, variant, keep, seed))
            score_files.append(f)
            out.append(Stage(f"score-{name}", ["capacity-score", variant, str(keep), str(seed)], keys,
                             deps=[*ENGINE, *train.persist, student, *teacher_dir], outs=[f],
                             title=f"Capacity grid: {keep} layers, seed {seed}, {variant}"))
    rep = rel(base.report_dir, "reports")
    if base.capacity_keep:
        if base.capacity_arms:  # the signal grid: arms compared per size
            notebook, title = "05_signal", "Which of the teacher's signals pays, at which size?"
            files = ["signal.json", "signal_table.csv", "signal_gains.png",
                     f"{signal_report.PREDICTIONS_DIR}/{signal_report.prediction_name(None, 'teacher', None)}",
                     *(f"{signal_report.PREDICTIONS_DIR}/{signal_report.prediction_name(k, a, s)}"
                       for k, s in capacity.cells(base) for a in capacity.arms(base))]
        else:
            notebook, title, files = ("04_capacity", "Capacity: how small can the student get?",
                                      list(capacity.REPORT_FILES))
        out.append(Stage("capacity-report", ["capacity-report"],
                         ["run_name", "capacity_keep", "capacity_seeds", "capacity_questions",
                          *(["capacity_arms"] if base.capacity_arms else [])],
                         deps=[*notebook_code(notebook), *score_files],
                         reports=[f"{rep}/{f}" for f in files] + [f"{rel(base.run_dir)}/executed/{notebook}.ipynb"],
                         notebook=notebook, report=notebook, title=title))
    if base.fidelity_precisions:
        files = ["fourbit.json", "fourbit_fidelity.png",
                 *(f"{fourbit_report.PREDICTIONS_DIR}/{fourbit_report.teacher_prediction_name(t)}"
                   for t in [fourbit_report.REFERENCE, *base.fidelity_precisions]),
                 *(f"{fourbit_report.PREDICTIONS_DIR}/{signal_report.prediction_name(k, a, s)}"
                   for k, s in capacity.cells(base) for a in capacity.arms(base))]
        out.append(Stage("fourbit-report", ["fourbit-report"],
                         ["run_name", "teacher", "capacity_keep", "capacity_seeds", "capacity_questions",
                          "capacity_arms", "fidelity_precisions", "temperature"],
                         deps=[*notebook_code("06_fourbit"), *score_files, *fidelity_files],
                         reports=[f"{rep}/{f}" for f in files] + [f"{rel(base.run_dir)}/executed/06_fourbit.ipynb"],
                         notebook="06_fourbit", report="06_fourbit",
                         title="What does a 4-bit teacher cost the student?"))
    return out


def sweep_registry_file(p: StudyParams) -> str | None:
    f = sweep.registry_file(p)
    return project_relative(f, "sweeps") if f.exists() else None


def stage_params(p: StudyParams, stage: str) -> StudyParams:
    """The params a stage runs with: the run's, with a training variant's own settings."""
    for variant in VARIANTS:
        if stage == f"train-{variant}":
            return variant_params(p, variant)
    return p


def dvc_yaml(p: StudyParams) -> dict[str, Any]:
    here = pipeline_dir(p)
    wdir = os.path.relpath(paths.PROJECT_ROOT, here)
    params_rel = project_relative(params_file(p), "params file")
    inputs_rel = project_relative(inputs_file(p), "params file")
    out: dict[str, Any] = {}
    for s in stages(p):
        entry: dict[str, Any] = {"wdir": wdir,
                                 "cmd": " ".join(["python -m distill stage", params_rel, *s.args]),
                                 "deps": sorted({*s.deps, inputs_rel}),  # every stage: data outside the project
                                 "params": [{params_rel: sorted(set(s.params))}, *({f: k} for f, k in
                                                                                  s.extra_params.items())]}
        outs: list[Any] = list(s.outs)
        outs += [{o: {"persist": True}} for o in s.persist]
        outs += [{o: {"cache": False}} for o in s.reports]
        if outs:
            entry["outs"] = outs
        if s.metrics:
            entry["metrics"] = [{m: {"cache": False}} for m in s.metrics]
        out[s.name] = entry
    return {"stages": out}


HEADER = ("# Generated by `python -m distill run` from params/<profile>.yaml and --set overrides (lib/distill/pipeline/dvc.py);\n"
          "# edit the profile, not this file. `dvc status {d}` says what is out of date.\n")


def pipeline_texts(p: StudyParams) -> tuple[str, str]:
    """(dvc.yaml, params.yaml) of a run, as `write_pipeline` writes them."""
    rel = project_relative(pipeline_dir(p), "run_name")
    params_text = ("# The resolved params of run " + p.run_name + ": the profile, its --set overrides and every "
                   "default, validated.\n" + yaml.safe_dump(p.to_dict(), sort_keys=False))
    dvc_text = HEADER.format(d=f"{rel}/dvc.yaml") + yaml.safe_dump(dvc_yaml(p), sort_keys=False, width=120)
    return dvc_text, params_text


def write_pipeline(p: StudyParams) -> Path:
    """Write pipelines/<run>/params.yaml and dvc.yaml (rewritten only when their text changes)."""
    here = pipeline_dir(p)
    check_no_overlap(p)
    dvc_text, params_text = pipeline_texts(p)
    inputs_text = json.dumps(input_fingerprint(p), indent=1) + "\n"
    for path, text in ((params_file(p), params_text), (inputs_file(p), inputs_text), (here / "dvc.yaml", dvc_text)):
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            paths.write_text_atomic(path, text)
    return here / "dvc.yaml"


def inputs_file(p: StudyParams) -> Path:
    """pipelines/<run>/inputs.json: what the run's stages read from outside the project, by content."""
    return pipeline_dir(p) / "inputs.json"


def input_fingerprint(p: StudyParams) -> dict[str, Any]:
    """What the run reads from outside the pipeline's outputs, by content (sizes and SHA-256s, not paths: another path to
    the same bytes changes nothing): the SQuAD files, and the teacher and student when they are local folders
    (`tiny:` and `gguf:` models are made from the data and a pinned wheel; a hub id is its name). Every stage depends
    on inputs.json, so another copy makes `status` name it and `run` re-run what reads it."""
    memo_file = pipeline_dir(p) / ".inputs_memo.json"  # digests by (path, size, mtime): unchanged files are not re-read
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    used: dict[str, str] = {}

    def sha256(f: Path) -> str:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = teacher_cache.sha256_file(f)
        used[key] = memo[key]
        return memo[key]

    folder = data.resolve_squad_dir(p.squad_dir)
    out: dict[str, Any] = {"squad": "the hub's rajpurkar/squad (fetched by name, not hashed)"}
    if folder is not None:
        out["squad"] = {}
        for split, f in data.squad_files(folder).items():
            if f is None:
                raise data.DataUnavailableError(f"{folder}: no {split} split; point squad_dir (or $SQUAD_DIR) at a "
                                                "folder holding train and validation JSON Lines")
            out["squad"][split] = {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256(f)}
    for key in ("teacher", "student"):
        spec = getattr(p, key)
        local = paths.resolve(spec) if not spec.startswith(("tiny:", "gguf:")) and spec != "prune" else None
        if local is not None and local.is_dir():
            files = sorted(x for x in local.rglob("*") if x.is_file())
            out[key] = {x.relative_to(local).as_posix(): sha256(x) for x in files}
    if used != memo:
        paths.write_text_atomic(memo_file, json.dumps(used))
    return out


def check_no_overlap(p: StudyParams) -> None:
    """DVC refuses every pipeline of the project once two of them write overlapping folders: say it before writing
    this run's pipeline, naming the other run and the fix (ParamsError)."""
    mine = {"output folder": p.run_dir.resolve(), "deploy_dir": p.deploy_path.resolve()}
    for other_file in sorted(pipeline_dir(p).parent.glob("*/params.yaml")):
        if other_file.parent.name == p.run_name:
            continue
        try:
            other = read_params(other_file)
        except (OSError, ValueError, yaml.YAMLError):
            continue  # a broken pipeline of another run is that run's to mend; DVC names it if it is in the way
        theirs = {"output folder": other.run_dir.resolve(), "deploy_dir": other.deploy_path.resolve()}
        for what, a in mine.items():
            for their_what, b in theirs.items():
                if a == b or a in b.parents or b in a.parents:
                    raise ParamsError(f"run {p.run_name}'s {what} {paths.shown(a)} overlaps run {other.run_name}'s "
                                      f"{their_what} {paths.shown(b)} ({paths.shown(other_file)}); give this run "
                                      f"other folders, or delete {paths.shown(other_file.parent)}/ if that run is "
                                      "gone")


def read_params(path: str | Path) -> StudyParams:
    """A pipeline's resolved params file (what each stage command reads)."""
    values = yaml.safe_load(paths.resolve(path).read_text(encoding="utf-8")) or {}
    return from_mapping(values)


@contextmanager
def run_lock(p: StudyParams) -> Iterator[None]:
    """One run at a time per run_name and per artifacts folder (two run names may share an output_dir); the kernel
    drops a lock when its holder dies, so a killed run leaves no stale lock."""
    lock_dir = paths.PROJECT_ROOT / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    folder = paths.shown(p.run_dir)
    locks = {f"distill-run-{p.run_name}.lock": (f"run {p.run_name} is already running", "give this run another "
                                                "run_name (--set run_name=...)"),
             f"distill-dir-{paths.hash_config(str(p.run_dir.resolve()))}.lock": (
                 f"output folder {folder} is being written by another run", "set another output_dir")}
    with ExitStack() as held:
        for name, (busy, fix) in locks.items():
            held.enter_context(_flock(lock_dir / name, p, busy, fix))
        yield


@contextmanager
def _flock(lock_path: Path, p: StudyParams, busy: str, fix: str) -> Iterator[None]:
    fh = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLocked(f"{busy} ({holder}); wait for it to finish, or {fix}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, run {p.run_name}")
        fh.flush()
        yield
    finally:
        fh.close()


class RunLocked(RuntimeError):
    pass


def dvc_env() -> dict[str, str]:
    """The stage commands say `python`: make it this interpreter (the project's .venv), whatever PATH says."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[procs.RUN_PID_ENV] = str(os.getpid())  # a stage ends itself when this run is gone (see die_with_run)
    return env


def dvc(*args: str, check: bool = False, capture: bool = False) -> subprocess.CompletedProcess:
    exe = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if exe is None:
        raise RuntimeError("dvc is not installed in this environment; run `make setup`")
    return subprocess.run([exe, *args], cwd=paths.PROJECT_ROOT, env=dvc_env(), check=check, text=True,
                          capture_output=capture, preexec_fn=procs.die_with_parent)


def ensure_dvc_repo() -> None:
    if not (paths.PROJECT_ROOT / ".dvc" / "config").exists():
        raise RuntimeError(f"{paths.PROJECT_ROOT} has no .dvc/config; this checkout is incomplete "
                           "(a clone of the project has it), or run `dvc init` there")


def targets(p: StudyParams, names: list[str] | None = None) -> list[str]:
    dvcfile = project_relative(pipeline_dir(p) / "dvc.yaml", "run_name")
    return [f"{dvcfile}:{n}" for n in (names or [s.name for s in stages(p)])]

