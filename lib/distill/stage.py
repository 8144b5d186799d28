"""What one pipeline stage runs: `python -m distill stage pipelines/<run>/params.yaml <kind> [model]`.

DVC calls these (see `pipeline.dvc_yaml`); each one is a fresh process, so a model's peak memory
measured by the speed stage is its own.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import paths, pipeline
from .params import StudyParams

NOTEBOOK_REPORTS = {"teacher": "00_teacher", "train-distilled": "01_distill",
                    "train-ce_baseline": "01_distill_ce_baseline", "merge": "02_merge", "report": "03_benchmark",
                    "capacity-report": "04_capacity"}


def record_file(p: StudyParams, report_name: str) -> Path:
    return p.run_dir / "executed" / f"{report_name}.json"


def run_notebook_stage(sp: StudyParams, spec: "pipeline.Stage", report_name: str) -> int:
    """Execute the stage's notebook with `sp` (papermill), render its HTML, and record how it went."""
    from .runner import StepFailed, execute_step, quiet_papermill

    executed_dir = sp.run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    sp.report_dir.mkdir(parents=True, exist_ok=True)
    quiet_papermill()
    start = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {"name": report_name, "stage": spec.name, "notebook": spec.notebook,
                              "title": spec.title, "start": start.isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    # a kill from here on leaves this record saying so, not an earlier run's "ok"
    paths.write_text_atomic(record_file(sp, report_name), json.dumps({**record, "status": "running"}, indent=1))
    try:
        execute_step(report_name, spec.notebook, sp.to_dict(), executed_dir, sp.report_dir)
        record["status"] = "ok"
        code = 0
    except StepFailed as err:
        record.update(status="failed", failure=str(err))
        print(f"FAILED: {err}", flush=True)
        code = 1
    record["wall_s"] = time.perf_counter() - t0
    paths.write_text_atomic(record_file(sp, report_name), json.dumps(record, indent=1))
    return code


def score_stage(p: StudyParams, model: str) -> int:
    """EM/F1 (greedy answers), teacher-forced answer loss and top-1 of one model on the run's questions."""
    from . import benchmark, models, study

    models.setup_torch(p.seed, p.torch_threads)
    device = models.resolve_device(p.device)
    rows = study.bench_rows(p, p.bench_size)
    model_obj, tokenizer = study.load_scored_model(p, model, device)
    t0 = time.perf_counter()
    result = benchmark.evaluate(model_obj, tokenizer, rows, max_length=p.max_length, max_new_tokens=p.max_new_tokens,
                                batch_size=p.bench_batch_size, seed=p.seed, device=device,
                                progress=f"{p.run_name} score {model}")
    keep = ("exact_match", "f1", "answer_loss", "top1_accuracy", "answer_tokens", "n_examples", "dropped", "windowed",
            "raw_generations", "predictions", "references")
    out = {k: result[k] for k in keep}
    out.update(model=model, question_ids=result["question_ids"], wall_s=time.perf_counter() - t0)
    paths.write_text_atomic(pipeline.scores_file(p, model), json.dumps(out, indent=1))
    print(f"{p.run_name} {model}: EM {out['exact_match']:.1f} F1 {out['f1']:.1f} answer loss "
          f"{out['answer_loss']:.3f} on {len(rows)} questions", flush=True)
    return 0


def speed_stage(p: StudyParams, model: str) -> int:
    """Size, latency, throughput and peak memory of one model, alone in this process."""
    from . import benchmark, models, study

    source, four_bit = study.scored_source(p, model)
    rows_file = pipeline.speed_file(p, model).with_suffix(".rows.json")
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text(json.dumps(study.bench_rows(p, p.bench_size)))
    try:
        result = benchmark.run_model_benchmark(dict(
            source=source, load_in_4bit=four_bit, rows_file=str(rows_file), seed=p.seed, device=p.device,
            threads=p.torch_threads, dtype=p.model_dtype, max_length=p.max_length, max_new_tokens=p.max_new_tokens,
            batch_size=p.bench_batch_size, warmup_batches=p.bench_warmup, bnb_compute_dtype=p.bnb_compute_dtype,
            latency_prompts=min(p.latency_prompts, p.bench_size), score=False))
    finally:
        rows_file.unlink(missing_ok=True)
    result.update(model=model, device=str(models.resolve_device(p.device)))
    paths.write_text_atomic(pipeline.speed_file(p, model), json.dumps(result, indent=1))
    print(f"{p.run_name} {model}: batch 1 {result['latency_batch1_ms_median']:.0f} ms median "
          f"(p90 {result['latency_batch1_ms_p90']:.0f}), batch {p.bench_batch_size} "
          f"{result['throughput_examples_per_s']:.2f} answers/s, peak {result['peak_memory_mb']:.0f} MB", flush=True)
    return 0


def sweep_score_stage(p: StudyParams, name: str, seed: str, model: str, questions: int) -> int:
    """One sweep student (adapter merged in memory) or reference model on the sweeps' questions."""
    from . import benchmark, models, study, sweep

    if name == "reference":
        sp, source_model = p, model
    else:
        entry = sweep.load_registry(p)["sweeps"][name]
        sp, source_model = sweep.seed_params(p, name, int(seed), entry["set"]), model
    models.setup_torch(sp.seed, sp.torch_threads)
    device = models.resolve_device(sp.device)
    rows = study.bench_rows(p, questions)  # the base run's questions, whatever the seed
    loaded, tokenizer = sweep.load_student_or_reference(sp, source_model, device)
    result = benchmark.evaluate(loaded, tokenizer, rows, max_length=sp.max_length, max_new_tokens=sp.max_new_tokens,
                                batch_size=sp.bench_batch_size, seed=p.seed, device=device)
    out = {k: result[k] for k in (*sweep.SCORES, "n_examples", "answer_tokens", "predictions")}
    out["question_ids"] = result["question_ids"]
    f = sweep.score_file(p, name, None if name == "reference" else int(seed), model, questions)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    print(f"{name} seed {seed} {model}: " + ", ".join(f"{k} {out[k]:.3f}" for k in sweep.SCORES), flush=True)
    return 0


def teacher_cache_stage(p: StudyParams, params_path: str | Path) -> int:
    """Fill the run's teacher cache for every training run that reads it (the teacher runs once per new example).

    With num_processes > 1 the stage launches itself on that many processes (accelerate), each running the
    teacher on its share of the batches."""
    from . import distributed, models, study, teacher_cache

    rank, world = distributed.world()
    if p.num_processes > 1 and world == 1:
        distributed.launch(p, ["stage", str(params_path), "teacher-cache"], stream=sys.stdout)
        return 0
    distributed.follow_launcher()
    users = pipeline.cache_users(p)
    models.setup_torch(p.seed, distributed.threads_per_process(p) if world > 1 else p.torch_threads)
    device = distributed.rank_device(p)
    teacher, tokenizer = study.load_teacher(p, device)
    stores: dict[Path, dict[str, Any]] = {}
    for up in users:
        store = teacher_cache.store_dir(study.base_run_dir(up), up)
        entry = stores.setdefault(store, {"params": up, "views": {}})
        entry["views"][up.run_name] = study.training_features(up, tokenizer)
    kept = set(stores)
    if rank == 0:
        for old in study.run_dir_cache(p).glob("*/"):
            if old not in kept:  # settings no run uses any more
                import shutil

                shutil.rmtree(old)
    for store, entry in stores.items():
        up = entry["params"]
        config = teacher_cache.cache_config(study.teacher_source(up), tokenizer, up.max_length, up.temperature,
                                            up.teacher_cache, up.teacher_cache_k, up.distill_positions)
        t0 = time.perf_counter()
        report = teacher_cache.fill(store, config, entry["views"], teacher, device, up.batch_size,
                                    tokenizer.pad_token_id, part=(rank, world))
        if report is not None:
            print(f"{store.name}: {report.line()}; {time.perf_counter() - t0:.1f} s"
                  f"{f' on {world} processes' if world > 1 else ''}", flush=True)
    return 0


def main(params_path: str, kind: str, *args: str) -> int:
    p = pipeline.read_params(params_path)
    if kind in ("score", "speed"):
        if not args or args[0] not in pipeline.MODELS:
            raise SystemExit(f"error: {kind} takes one of {', '.join(pipeline.MODELS)}, not {args}")
        return score_stage(p, args[0]) if kind == "score" else speed_stage(p, args[0])
    if kind == "sweep-train":
        from . import sweep

        name, seed, variant = args
        entry = sweep.load_registry(p)["sweeps"][name]
        sp = pipeline.stage_params(sweep.seed_params(p, name, int(seed), entry["set"]), f"train-{variant}")
        spec = next(s for s in pipeline.stages(p) if s.name == f"sweep-{name}-seed{seed}-{variant}")
        return run_notebook_stage(sp, spec, pipeline.TRAIN_REPORTS[variant])
    if kind == "sweep-score":
        name, seed, model, questions = args
        return sweep_score_stage(p, name, seed, model, int(questions))
    if kind == "capacity-students":
        from . import capacity

        capacity.make_students(p)
        return 0
    if kind == "capacity-train":
        from . import capacity

        keep, seed, variant = args
        sp = pipeline.stage_params(capacity.seed_params(p, int(keep), int(seed)), f"train-{variant}")
        spec = next(s for s in pipeline.stages(p) if s.name == f"capacity-keep{keep}-seed{seed}-{variant}")
        return run_notebook_stage(sp, spec, pipeline.TRAIN_REPORTS[variant])
    if kind == "capacity-score":
        from . import capacity

        if args[0] == "teacher":
            capacity.score(p, "teacher")
        else:
            variant, keep, seed = args
            capacity.score(p, variant, int(keep), int(seed))
        return 0
    if kind == "teacher-cache":
        return teacher_cache_stage(p, params_path)
    if kind == "sweep-summary":
        from . import sweep

        reference = tuple(sweep.load_registry(p).get("reference", "default/ce_baseline").split("/", 1))
        print(sweep.write_summary(p, reference).read_text(), flush=True)
        return 0
    name = f"train-{args[0]}" if kind == "train" else kind
    if name not in NOTEBOOK_REPORTS:
        raise SystemExit(f"error: unknown stage {kind} {' '.join(args)}".strip())
    spec = next(s for s in pipeline.stages(p) if s.name == name)
    return run_notebook_stage(pipeline.stage_params(p, name), spec, NOTEBOOK_REPORTS[name])
