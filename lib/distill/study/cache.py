"""The run's teacher cache, filled once for every training run that reads it.

The run's distilled student, its sweeps' seed runs and its capacity grid's students share one cache folder;
the teacher first answers the teacher-answered questions none of them has yet (parts.teacher_answers), then
runs once per training example none of them has targets for (see parts.teacher_cache for the format).
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
from distill.parts import models, teacher_answers, teacher_cache
from distill.study import capacity, launch, layout, steps, sweep
from distill.study.layout import variant_params


def training_runs(p: StudyParams) -> list[StudyParams]:
    """Every training run of the pipeline that may read from the teacher: the run's distilled student, its
    sweeps' distilled seed runs and every arm of its capacity grid."""
    runs = [variant_params(p, "distilled")]
    reg = sweep.load_registry(p)
    for name, entry in reg["sweeps"].items():
        if "distilled" in entry["variants"]:
            runs += [variant_params(sweep.seed_params(p, name, seed, entry["set"]), "distilled")
                     for seed in entry["seeds"]]
    runs += [capacity.arm_params(p, keep, seed, arm) for keep, seed in capacity.cells(p) for arm in capacity.arms(p)]
    return runs


def cache_users(p: StudyParams) -> list[StudyParams]:
    """The training runs that read the teacher cache (its divergence's targets)."""
    return [r for r in training_runs(p) if r.uses_teacher_cache]


def answer_users(p: StudyParams) -> list[StudyParams]:
    """The training runs that train on teacher-answered questions."""
    return [r for r in training_runs(p) if r.teacher_answered_size]


def teacher_key(p: StudyParams) -> tuple[str, str]:
    """Which teacher a run's cached targets and answers come from: its weights' folder and how they are held."""
    return steps.teacher_source(p), p.teacher_precision


def cache_config(p: StudyParams, tokenizer) -> dict[str, Any]:
    """What a training run's cached targets depend on (teacher_cache.cache_config from the run's params)."""
    return teacher_cache.cache_config(steps.teacher_source(p), tokenizer, p.max_length, p.temperature, p.teacher_cache,
                                      p.teacher_cache_k, p.distill_positions, p.teacher_precision)


def answer_stores(p: StudyParams) -> dict[Path, dict[str, Any]]:
    """{answer store: {"params": a run that uses it, "views": {run name: its teacher-answered rows}}}."""
    stores: dict[Path, dict[str, Any]] = {}
    for up in answer_users(p):
        store = teacher_answers.store_dir(layout.base_run_dir(up), up)
        entry = stores.setdefault(store, {"params": up, "views": {}})
        entry["views"][up.run_name] = steps.load_data(up).answered_rows
    return stores


def fill_answers(stores: dict[Path, dict[str, Any]], teacher, tokenizer, device, rank: int) -> None:
    """The teacher answers every question of these stores none of them has yet (rank 0; the others wait)."""
    if rank == 0:
        for store, entry in stores.items():
            up = entry["params"]
            config = teacher_answers.answers_config(steps.teacher_source(up), tokenizer, up.max_length,
                                                    up.max_new_tokens, up.seed if up.teacher_seed < 0 else up.teacher_seed,
                                                    up.teacher_precision)
            t0 = time.perf_counter()
            got = teacher_answers.fill(store, config, entry["views"], teacher, tokenizer, device, up.bench_batch_size)
            print(f"{store.name}: {got['questions']} teacher-answered questions, {got['asked']} asked now "
                  f"({got['empty']} left unanswered); {time.perf_counter() - t0:.1f} s", flush=True)
    group.barrier()


def fill_teacher_cache(p: StudyParams, params_path: str | Path) -> int:
    """Fill the run's teacher cache for every training run that reads it (the teacher runs once per new example).

    Runs whose teachers differ (another source, or another precision such as NF4) get their own stores, each filled
    by its own teacher, loaded once. With num_processes > 1 the stage launches itself on that many processes
    (accelerate), each running the teacher on its share of the batches."""
    rank, world = group.world()
    if p.num_processes > 1 and world == 1:
        launch.launch(p, ["stage", str(params_path), "teacher-cache"], stream=sys.stdout)
        return 0
    procs.follow_launcher()
    models.setup_torch(p.seed, launch.threads_per_process(p) if world > 1 else p.torch_threads)
    device = launch.rank_device(p)
    answers = answer_stores(p)
    stores: dict[Path, dict[str, Any]] = {}
    for up in cache_users(p):
        stores.setdefault(teacher_cache.store_dir(layout.base_run_dir(up), up), {"params": up, "runs": []})["runs"].append(up)
    if rank == 0:
        for old in layout.run_dir_cache(p).glob("*/"):
            if old not in set(stores) | set(answers):  # settings no run uses any more
                shutil.rmtree(old)
    teachers = sorted({teacher_key(e["params"]) for e in [*answers.values(), *stores.values()]})
    for key in teachers:
        users = [e["params"] for e in [*answers.values(), *stores.values()] if teacher_key(e["params"]) == key]
        teacher, tokenizer = steps.load_teacher(users[0], device)
        if len(teachers) > 1:
            print(f"teacher {Path(key[0]).name} ({key[1]})", flush=True)
        # the answers first: a store's training features include the teacher-answered questions
        fill_answers({s: e for s, e in answers.items() if teacher_key(e["params"]) == key}, teacher, tokenizer,
                     device, rank)
        for store, entry in stores.items():
            up = entry["params"]
            if teacher_key(up) != key:
                continue
            config = cache_config(up, tokenizer)
            views = {run.run_name: steps.training_features(run, tokenizer) for run in entry["runs"]}
            t0 = time.perf_counter()
            report = teacher_cache.fill(store, config, views, teacher, device, up.batch_size,
                                        tokenizer.pad_token_id, part=(rank, world))
            if report is not None:
                print(f"{store.name}: {report.line()}; {time.perf_counter() - t0:.1f} s"
                      f"{f' on {world} processes' if world > 1 else ''}", flush=True)
        del teacher
    return 0
