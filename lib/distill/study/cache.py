"""The run's teacher cache, filled once for every training run that reads it.

The run's distilled student, its sweeps' seed runs and its capacity grid's distilled students share one cache
folder; the teacher runs once per example none of them has yet (see parts.teacher_cache for the format).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from distill.core import procs
from distill.core.params import StudyParams
from distill.kd import group
from distill.parts import models, teacher_cache
from distill.study import capacity, launch, layout, steps, sweep
from distill.study.layout import variant_params


def cache_users(p: StudyParams) -> list[StudyParams]:
    """The training runs that read the teacher cache: the run's distilled student, its sweeps' seed runs and its
    capacity grid's distilled students."""
    users = []
    main = variant_params(p, "distilled")
    if main.uses_teacher_cache:
        users.append(main)
    reg = sweep.load_registry(p)
    for name, entry in reg["sweeps"].items():
        if "distilled" not in entry["variants"]:
            continue
        for seed in entry["seeds"]:
            sp = variant_params(sweep.seed_params(p, name, seed, entry["set"]), "distilled")
            if sp.uses_teacher_cache:
                users.append(sp)
    for keep, seed in capacity.cells(p):
        cp = variant_params(capacity.seed_params(p, keep, seed), "distilled")
        if cp.uses_teacher_cache:
            users.append(cp)
    return users


def fill_teacher_cache(p: StudyParams, params_path: str | Path) -> int:
    """Fill the run's teacher cache for every training run that reads it (the teacher runs once per new example).

    With num_processes > 1 the stage launches itself on that many processes (accelerate), each running the
    teacher on its share of the batches."""
    rank, world = group.world()
    if p.num_processes > 1 and world == 1:
        launch.launch(p, ["stage", str(params_path), "teacher-cache"], stream=sys.stdout)
        return 0
    procs.follow_launcher()
    users = cache_users(p)
    models.setup_torch(p.seed, launch.threads_per_process(p) if world > 1 else p.torch_threads)
    device = launch.rank_device(p)
    teacher, tokenizer = steps.load_teacher(p, device)
    stores: dict[Path, dict[str, Any]] = {}
    for up in users:
        store = teacher_cache.store_dir(layout.base_run_dir(up), up)
        entry = stores.setdefault(store, {"params": up, "views": {}})
        entry["views"][up.run_name] = steps.training_features(up, tokenizer)
    kept = set(stores)
    if rank == 0:
        for old in layout.run_dir_cache(p).glob("*/"):
            if old not in kept:  # settings no run uses any more
                shutil.rmtree(old)
    for store, entry in stores.items():
        up = entry["params"]
        config = teacher_cache.cache_config(steps.teacher_source(up), tokenizer, up.max_length, up.temperature,
                                            up.teacher_cache, up.teacher_cache_k, up.distill_positions)
        t0 = time.perf_counter()
        report = teacher_cache.fill(store, config, entry["views"], teacher, device, up.batch_size,
                                    tokenizer.pad_token_id, part=(rank, world))
        if report is not None:
            print(f"{store.name}: {report.line()}; {time.perf_counter() - t0:.1f} s"
                  f"{f' on {world} processes' if world > 1 else ''}", flush=True)
    return 0
