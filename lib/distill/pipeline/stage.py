"""What one pipeline stage runs: `python -m distill stage pipelines/<run>/params.yaml <kind> [args]`.

DVC calls these (see `dvc.dvc_yaml`); each one is a fresh process, so a model's peak memory measured by
the speed stage is its own. A stage is a notebook executed with papermill (its page rendered), or one
step of the study layer (scoring, timing, the teacher cache, cutting the capacity grid's students).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from distill.core import paths
from distill.core.params import StudyParams
from distill.pipeline import dvc
from distill.pipeline.runner import StepFailed, execute_step, quiet_papermill
from distill.report import sweeps
from distill.study import cache, capacity, layout, scoring, sweep


def run_notebook_stage(sp: StudyParams, spec: dvc.Stage) -> int:
    """Execute the stage's notebook with `sp` (papermill), render its HTML, and record how it went."""
    executed_dir = sp.run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    sp.report_dir.mkdir(parents=True, exist_ok=True)
    quiet_papermill()
    start = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {"name": spec.report, "stage": spec.name, "notebook": spec.notebook,
                              "title": spec.title, "start": start.isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    # a kill from here on leaves this record saying so, not an earlier run's "ok"
    paths.write_text_atomic(layout.record_file(sp, spec.report), json.dumps({**record, "status": "running"}, indent=1))
    try:
        execute_step(spec.report, spec.notebook, sp.to_dict(), executed_dir, sp.report_dir)
        record["status"] = "ok"
        code = 0
    except StepFailed as err:
        record.update(status="failed", failure=str(err))
        print(f"FAILED: {err}", flush=True)
        code = 1
    record["wall_s"] = time.perf_counter() - t0
    paths.write_text_atomic(layout.record_file(sp, spec.report), json.dumps(record, indent=1))
    return code


def _spec(p: StudyParams, name: str) -> dvc.Stage:
    return next(s for s in dvc.stages(p) if s.name == name)


def main(params_path: str, kind: str, *args: str) -> int:
    """Run one stage; refuse to let DVC record it (exit 3) when the code it depends on changed while it ran: DVC
    hashes dependencies when a stage ends, so it would record code that did not make the outputs."""
    before = dvc.code_digest()
    code = _run(params_path, kind, *args)
    if code == 0 and dvc.code_digest() != before:
        print(f"error: the code under {dvc.LIB}/ or notebooks/ changed while stage {kind} {' '.join(args)} ran; its "
              "outputs were made by the code as it was, so DVC does not record them: run the same command again",
              flush=True)
        return 3
    return code


def _run(params_path: str, kind: str, *args: str) -> int:
    p = dvc.read_params(params_path)
    if kind in ("score", "speed"):
        if not args or args[0] not in layout.MODELS:
            raise SystemExit(f"error: {kind} takes one of {', '.join(layout.MODELS)}, not {args}")
        (scoring.score_model if kind == "score" else scoring.time_model)(p, args[0])
        return 0
    if kind == "sweep-train":
        name, seed, variant = args
        entry = sweep.load_registry(p)["sweeps"][name]
        sp = layout.variant_params(sweep.seed_params(p, name, int(seed), entry["set"]), variant)
        return run_notebook_stage(sp, _spec(p, f"sweep-{name}-seed{seed}-{variant}"))
    if kind == "sweep-score":
        name, seed, model, questions = args
        scoring.score_sweep_model(p, name, seed, model, int(questions))
        return 0
    if kind == "capacity-students":
        capacity.make_students(p)
        return 0
    if kind == "capacity-train":
        keep, seed, variant = args
        sp = capacity.arm_params(p, int(keep), int(seed), variant)
        return run_notebook_stage(sp, _spec(p, f"capacity-keep{keep}-seed{seed}-{variant}"))
    if kind == "capacity-score":
        if args[0] == "teacher":  # in float32, or in the 4-bit precision named after it
            scoring.score_capacity_model(capacity.teacher_held(p, args[1]) if args[1:] else p, "teacher")
        else:
            variant, keep, seed = args
            scoring.score_capacity_model(p, variant, int(keep), int(seed))
        return 0
    if kind == "fidelity":
        scoring.measure_fidelity(p, args[0])
        return 0
    if kind == "teacher-cache":
        return cache.fill_teacher_cache(p, params_path)
    if kind == "sweep-summary":
        reference = tuple(sweep.load_registry(p).get("reference", "default/ce_baseline").split("/", 1))
        print(sweeps.write_summary(p, reference).read_text(), flush=True)
        return 0
    name = f"train-{args[0]}" if kind == "train" else kind
    spec = next((s for s in dvc.stages(p) if s.name == name and s.notebook), None)
    if spec is None:
        raise SystemExit(f"error: unknown stage {kind} {' '.join(args)}".strip())
    return run_notebook_stage(dvc.stage_params(p, name), spec)
