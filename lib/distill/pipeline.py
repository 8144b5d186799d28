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
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from . import paths
from .params import ParamsError, StudyParams, from_mapping

PIPELINES_DIR = paths.PROJECT_ROOT / "pipelines"
MODELS = ("teacher", "student_before", "ce_baseline", "distilled")
VARIANT_OVERRIDES = {"distilled": {"variant": "distilled"},
                     "ce_baseline": {"variant": "ce_baseline", "gamma_kl": 0.0, "beta_mse": 0.0}}

# The params keys each stage reads, by the code it runs (a key not listed here never re-runs the stage).
RUNTIME = ["seed", "device", "torch_threads", "model_dtype", "squad_dir", "data_pool_rows"]
SUBSETS = ["train_size", "eval_size", "teacher_finetune", "teacher_finetune_train_size", "recovery_size",
           "bench_size", "max_length"]  # study.load_data draws every subset from one seeded shuffle
TEACHER = ["teacher", "teacher_load_in_4bit", "bnb_compute_dtype", "teacher_finetune_use_lora",
           "teacher_finetune_steps", "teacher_finetune_lr"]
STUDENT = ["student", "prune_layers", "prune_keep", "prune_method"]
TRAINER = ["batch_size", "grad_accum_steps", "warmup_ratio", "weight_decay", "logging_steps",
           "gradient_checkpointing", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
STUDENT_TRAINING = ["use_lora", "learning_rate", "max_steps", "eval_steps", "recovery_steps", "alpha_ce"]
TEACHER_TERMS = ["gamma_kl", "beta_mse", "temperature", "kd_kind", "jsd_beta", "kd_chunk_size",
                 "distill_positions", "layer_map", "hidden_loss"]
GENERATION = ["max_new_tokens", "bench_batch_size"]
PROCESSES = ["num_processes", "accelerate_config"]  # training and the teacher cache may run on N processes
SCORING = ["seed", "device", "torch_threads", "model_dtype", "squad_dir", "data_pool_rows", "bench_size",
           "max_length", *GENERATION]


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
    notebook: str = ""
    title: str = ""
    extra_params: dict[str, list[str]] = field(default_factory=dict)  # keys of other params files (sweeps.yaml)
    deps_models: list[str] = field(default_factory=list)  # the model folders among deps
    metrics: list[str] = field(default_factory=list)  # small JSON files for `dvc metrics show`, not cached


def project_relative(path: Path, what: str) -> str:
    try:
        return Path(path).resolve().relative_to(paths.PROJECT_ROOT).as_posix()
    except ValueError:
        raise ParamsError(f"{what}: {path} is outside the project {paths.PROJECT_ROOT}; the pipeline (DVC) only "
                          f"tracks folders inside it: leave {what} empty or give a folder under the project") from None


def pipeline_dir(p: StudyParams) -> Path:
    return PIPELINES_DIR / p.run_name


def params_file(p: StudyParams) -> Path:
    return pipeline_dir(p) / "params.yaml"


def model_dir(p: StudyParams, model: str) -> Path | None:
    """The folder a scored model is loaded from when the pipeline made it (None: a spec outside the pipeline)."""
    from . import study

    if model == "teacher":
        return study.tuned_teacher_dir(p) if p.teacher_finetune else None
    if model == "student_before":
        return study.student_init_dir(p) if p.student == "prune" else None
    return study.merged_dir(p, model)


def scores_file(p: StudyParams, model: str) -> Path:
    return p.run_dir / "scores" / f"{model}.json"


def speed_file(p: StudyParams, model: str) -> Path:
    return p.run_dir / "speed" / f"{model}.json"


def stages(p: StudyParams) -> list[Stage]:
    """The run's stages in the order they run."""
    from . import study

    rel = lambda path, what="output_dir": project_relative(path, what)  # noqa: E731
    run, rep = rel(p.run_dir), rel(p.report_dir, "reports")
    lib = "lib/distill"
    common = [f"{lib}/{m}.py" for m in ("params", "data", "models", "sources", "tiny", "study", "paths", "stage")]
    train_code = [f"{lib}/training.py", f"{lib}/trainer.py", f"{lib}/losses.py"]
    scoring_code = [f"{lib}/benchmark.py", f"{lib}/metrics.py"]
    notebook_code = [f"{lib}/plots.py", f"{lib}/runner.py", f"{lib}/summaries.py"]
    out: list[Stage] = []

    made = []  # the teacher and pruned student, when the run makes them
    if p.teacher_finetune:
        made.append(rel(study.tuned_teacher_dir(p)))
    if p.student == "prune":
        made.append(rel(study.student_init_dir(p)))
    teacher_reports = ["teacher.json", "teacher_em_f1.png"]
    if p.teacher_finetune:
        teacher_reports.append("teacher_finetune_loss.png")
    if p.student == "prune":
        teacher_reports += ["layer_importance.png", "pruned_student_answer_loss.png"]
    out.append(Stage(
        "teacher", ["teacher"], RUNTIME + SUBSETS + TEACHER + STUDENT + TRAINER + GENERATION,
        deps=["notebooks/00_teacher.py", *common, f"{lib}/pruning.py", *train_code, *scoring_code, *notebook_code],
        outs=made, reports=[f"{rep}/{f}" for f in teacher_reports] + [f"{run}/executed/00_teacher.ipynb"],
        notebook="00_teacher", title="Teacher: zero-shot, SQuAD fine-tune, pruned student"))

    users = cache_users(p)
    if users:
        reg = sweep_registry_file(p)
        out.append(Stage(
            "teacher-cache", ["teacher-cache"],
            RUNTIME + SUBSETS + ["teacher", "teacher_load_in_4bit", "bnb_compute_dtype", "teacher_cache",
                                 "teacher_cache_k", "temperature", "distill_positions", "gamma_kl", "recovery_steps",
                                 "batch_size", *PROCESSES,
                                 *(["capacity_keep", "capacity_seeds"] if p.capacity_keep else [])],
            deps=[*common, f"{lib}/teacher_cache.py", f"{lib}/distributed.py", *made], persist=[rel(study.run_dir_cache(p))],
            extra_params={reg: ["sweeps"]} if reg else {},
            title=f"Teacher cache: sparse targets of {len(users)} training run(s)"))

    for variant in ("distilled", "ce_baseline"):
        out.append(train_stage(p, variant, f"train-{variant}", ["train", variant]))

    merged = [rel(study.merged_dir(p, v), "deploy_dir") for v in ("ce_baseline", "distilled")]
    merge_reports = ["merge.json", "merge_logit_check.png"]
    if p.qualitative_examples:
        merge_reports.append("answers_side_by_side.csv")
    out.append(Stage(
        "merge", ["merge"], RUNTIME + SUBSETS + STUDENT + ["teacher", "teacher_load_in_4bit", "bnb_compute_dtype",
                                                           "deploy_dir", "qualitative_examples", *GENERATION],
        deps=["notebooks/02_merge.py", *common, f"{lib}/merge.py", *scoring_code, *notebook_code, *made,
              *[rel(study.variant_dir(p, v)) for v in ("ce_baseline", "distilled")]],
        # persist: DVC must not delete a deployment before the merge: it is replaced only by a checked new one
        outs=[], persist=merged, reports=[f"{rep}/{f}" for f in merge_reports] + [f"{run}/executed/02_merge.ipynb"],
        notebook="02_merge", title="Merge the adapters; answers side by side"))

    for model in MODELS:
        source = model_dir(p, model)
        keys = SCORING + (["teacher", "teacher_load_in_4bit", "bnb_compute_dtype"] if model == "teacher" else [])
        keys += ["student"] if model == "student_before" else []
        model_deps = [rel(source, "deploy_dir")] if source is not None else []
        out.append(Stage(f"score-{model}", ["score", model], keys, deps=[*common, *scoring_code, *model_deps],
                         outs=[rel(scores_file(p, model))], title=f"EM/F1 and answer loss: {model}"))
        out.append(Stage(f"speed-{model}", ["speed", model], keys + ["bench_warmup", "latency_prompts"],
                         deps=[*common, *scoring_code, *model_deps], outs=[rel(speed_file(p, model))],
                         title=f"latency, throughput, memory: {model} alone in its process"))

    bench_reports = ["results.txt", "results.csv", "results.json", "results.md",
                     "f1_vs_latency.png"]
    from .results import METRICS

    bench_reports += [f"{col}_by_model.png" for col, _, _ in METRICS] + [f"predictions_{m}.json" for m in MODELS]
    out.append(Stage(
        "report", ["report"], ["run_name", "seed", "bench_size", "max_new_tokens", "bench_batch_size"],
        deps=["notebooks/03_benchmark.py", f"{lib}/results.py", *notebook_code,
              *[rel(scores_file(p, m)) for m in MODELS], *[rel(speed_file(p, m)) for m in MODELS]],
        reports=[f"{rep}/{f}" for f in bench_reports] + [f"{run}/executed/03_benchmark.ipynb"],
        metrics=[f"{rep}/metrics.json"], notebook="03_benchmark", title="Teacher vs students: size, speed, memory, EM/F1"))
    from . import capacity, sweep

    return out + sweep.stages(p) + capacity.stages(p)


TRAIN_REPORTS = {"distilled": "01_distill", "ce_baseline": "01_distill_ce_baseline"}


def base_models_dirs(p: StudyParams) -> list[Path]:
    """The tuned teacher and pruned student folders a run (or a sweep's seed run) trains from."""
    from . import study

    return ([study.tuned_teacher_dir(p)] if p.teacher_finetune else []) + \
        ([study.student_init_dir(p)] if p.student == "prune" else [])


def train_stage(p: StudyParams, variant: str, name: str, args: list[str]) -> Stage:
    """Training of one student variant (01_distill) for the run `p`: its keys, its model folders, its files."""
    from . import study

    rel = lambda path: project_relative(path, "output_dir")  # noqa: E731
    run, rep = rel(p.run_dir), project_relative(p.report_dir, "reports")
    lib = "lib/distill"
    vp = p.replace(**VARIANT_OVERRIDES[variant])
    keys = RUNTIME + SUBSETS + STUDENT + TRAINER + STUDENT_TRAINING + PROCESSES + ["teacher"]
    if vp.uses_teacher:
        keys += ["teacher_load_in_4bit", "bnb_compute_dtype", "teacher_placement"] + TEACHER_TERMS
    cache_view = []
    if vp.uses_teacher_cache:
        from . import teacher_cache

        keys += ["teacher_cache", "teacher_cache_k", "kd_sparse_tail"]
        cache_view = [rel(teacher_cache.view_file(study.base_run_dir(vp), vp))]
    report_name = TRAIN_REPORTS[variant]
    files = [f"token_lengths_{variant}.png", f"loss_components_{variant}.png",
             f"log_history_{variant}.json"]
    if p.recovery_steps:
        files.append(f"recovery_loss_components_{variant}.png")
    made = [rel(d) for d in base_models_dirs(p)]
    code = [f"{lib}/{m}.py" for m in ("params", "data", "models", "sources", "tiny", "study", "paths", "stage",
                                      "training", "trainer", "losses", "plots", "runner", "summaries", "teacher_cache",
                                      "student_training", "distributed")]
    return Stage(name, args, keys, deps=["notebooks/01_distill.py", *code, *made, *cache_view],
                 persist=[rel(study.variant_dir(p, variant))],
                 reports=[f"{rep}/{f}" for f in files] + [f"{run}/executed/{report_name}.ipynb"],
                 notebook="01_distill", deps_models=made,
                 title=("Distillation of the student" if variant == "distilled"
                        else "Baseline: the same student trained on CE only"))


def cache_users(p: StudyParams) -> list[StudyParams]:
    """The training runs that read the teacher cache: the run's distilled student, its sweeps' seed runs and its
    capacity grid's distilled students."""
    from . import capacity, sweep

    users = []
    main = p.replace(**VARIANT_OVERRIDES["distilled"])
    if main.uses_teacher_cache:
        users.append(main)
    reg = sweep.load_registry(p)
    for name, entry in reg["sweeps"].items():
        if "distilled" not in entry["variants"]:
            continue
        for seed in entry["seeds"]:
            sp = sweep.seed_params(p, name, seed, entry["set"]).replace(**VARIANT_OVERRIDES["distilled"])
            if sp.uses_teacher_cache:
                users.append(sp)
    for keep, seed in capacity.cells(p):
        cp = capacity.seed_params(p, keep, seed).replace(**VARIANT_OVERRIDES["distilled"])
        if cp.uses_teacher_cache:
            users.append(cp)
    return users


def sweep_registry_file(p: StudyParams) -> str | None:
    from . import sweep

    f = sweep.registry_file(p)
    return project_relative(f, "sweeps") if f.exists() else None


def stage_params(p: StudyParams, stage: str) -> StudyParams:
    """The params a stage runs with: the run's, with a training variant's own settings."""
    for variant, changes in VARIANT_OVERRIDES.items():
        if stage == f"train-{variant}":
            return p.replace(**changes)
    return p


def dvc_yaml(p: StudyParams) -> dict[str, Any]:
    here = pipeline_dir(p)
    wdir = os.path.relpath(paths.PROJECT_ROOT, here)
    params_rel = project_relative(params_file(p), "params file")
    out: dict[str, Any] = {}
    for s in stages(p):
        entry: dict[str, Any] = {"wdir": wdir,
                                 "cmd": " ".join(["python -m distill stage", params_rel, *s.args]),
                                 "deps": sorted(set(s.deps)),
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


HEADER = ("# Generated by `python -m distill run` from params/<profile>.yaml and --set overrides (lib/distill/pipeline.py);\n"
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
    dvc_text, params_text = pipeline_texts(p)
    for path, text in ((params_file(p), params_text), (here / "dvc.yaml", dvc_text)):
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            paths.write_text_atomic(path, text)
    return here / "dvc.yaml"


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


RUN_PID_ENV = "DISTILL_RUN_PID"


def dvc_env() -> dict[str, str]:
    """The stage commands say `python`: make it this interpreter (the project's .venv), whatever PATH says."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[RUN_PID_ENV] = str(os.getpid())  # a stage ends itself when this run is gone (see die_with_run)
    return env


def die_with_parent(only_if_parent_is: str | None = None) -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed `make study` takes its run along).

    `only_if_parent_is` limits that to a parent of that name: a run started from `make` is make's job and dies
    with it, while one started from a shell with nohup must outlive the shell.
    """
    if only_if_parent_is is not None:
        try:
            if Path(f"/proc/{os.getppid()}/comm").read_text().strip() != only_if_parent_is:
                return
        except OSError:
            return
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def die_with_run() -> None:
    """A stage started by a run (through DVC and its shell) ends as soon as that run process is gone, so a killed
    run leaves nothing behind that holds its outputs or the CPU; its kernel follows (ipykernel polls its parent)."""
    die_with(int(os.environ.get(RUN_PID_ENV, "0") or 0))


def die_with(pid: int) -> None:
    """End this process (exit 137) as soon as process `pid` is gone; 0 watches nothing."""
    if not pid:
        return
    import threading
    import time

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                pass
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True, name="die-with-run").start()


def dvc(*args: str, check: bool = False, capture: bool = False) -> subprocess.CompletedProcess:
    exe = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if exe is None:
        raise RuntimeError("dvc is not installed in this environment; run `make setup`")
    return subprocess.run([exe, *args], cwd=paths.PROJECT_ROOT, env=dvc_env(), check=check, text=True,
                          capture_output=capture, preexec_fn=die_with_parent)


def ensure_dvc_repo() -> None:
    if not (paths.PROJECT_ROOT / ".dvc" / "config").exists():
        raise RuntimeError(f"{paths.PROJECT_ROOT} has no .dvc/config; this checkout is incomplete "
                           "(a clone of the project has it), or run `dvc init` there")


def targets(p: StudyParams, names: list[str] | None = None) -> list[str]:
    dvcfile = project_relative(pipeline_dir(p) / "dvc.yaml", "run_name")
    return [f"{dvcfile}:{n}" for n in (names or [s.name for s in stages(p)])]


def measurements(p: StudyParams, model: str) -> dict[str, Any]:
    """What the score and speed stages measured for one model, as one record."""
    import json

    found = {}
    for kind, path in (("score", scores_file(p, model)), ("speed", speed_file(p, model))):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {kind} of {model}; run the pipeline (python -m distill run ...)")
        found[kind] = json.loads(path.read_text(encoding="utf-8"))
    return {**found["speed"], **found["score"]}
