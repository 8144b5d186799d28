"""One distillation step on N processes x T threads against 1 process x N*T threads, same global batch.

Both arms train the profile's distilled student through the study's own path (`training.train_student`:
in this process for 1, `accelerate launch` DDP over gloo for N), from the profile's run (its pruned student and
teacher cache: run `make study` first), side by side in one run:
  one_process     1 process  x N*T threads, batch_size b, accumulation a
  N_processes     N processes x T threads, batch_size b / N each, accumulation a
The step time is each train log's `step_seconds` (wall time per optimizer step, gradient all-reduce included),
the median over the steps after the first (warm-up), with no evaluation in between. It prints the ratio and
writes reports/<run>/process_step.json.
Run: make bench-processes   (or python benchmarks/process_step.py params/<profile>.yaml --processes 2)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from distill.core import params, paths
from distill.study import training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def arm(p, processes: int, threads: int, steps: int, folder: Path) -> dict:
    arm_p = p.replace(num_processes=processes, torch_threads=threads, batch_size=p.batch_size // processes,
                      output_dir=str(folder), base_run_dir=str(p.run_dir), max_steps=steps, eval_steps=steps,
                      logging_steps=1, recovery_steps=0, resume=False, variant="distilled")
    start = time.perf_counter()
    outcome = training.train_student(arm_p)
    wall = time.perf_counter() - start
    times = [e["step_seconds"] for e in outcome.history if "step_seconds" in e][1:]
    losses = [round(e["loss"], 4) for e in outcome.history if "loss" in e]
    return {"processes": processes, "threads_per_process": threads, "batch_per_process": arm_p.batch_size,
            "grad_accum_steps": arm_p.grad_accum_steps, "median_step_s": statistics.median(times), "step_s": times,
            "train_losses": losses, "wall_s_with_loading": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", default="params/smollm2-135m_to_pruned20_cpu.yaml")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process in the multi-process arm")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm (the first is warm-up)")
    args = parser.parse_args()

    p = params.load(args.params)
    if p.batch_size % args.processes:
        raise SystemExit(f"error: batch_size {p.batch_size} cannot be split between {args.processes} processes")
    if not (p.run_dir / "student_init").exists() and p.student == "prune":
        raise SystemExit(f"error: {paths.shown(p.run_dir)} has no pruned student; run `make study` first")
    work = p.run_dir / "bench_processes"
    one = arm(p, 1, args.processes * args.threads, args.steps, work / "one_process")
    many = arm(p, args.processes, args.threads, args.steps, work / f"{args.processes}_processes")
    ratio = one["median_step_s"] / many["median_step_s"]
    out = {"run_name": p.run_name, "global_batch": p.batch_size * p.grad_accum_steps, "one_process": one,
           f"{args.processes}_processes": many, "speedup": ratio}
    print(f"{p.run_name}: one distillation step, global batch {out['global_batch']}, median of {args.steps - 1} steps")
    for name, r in (("one_process", one), (f"{args.processes}_processes", many)):
        print(f"  {name:14} {r['processes']} x {r['threads_per_process']} threads, batch {r['batch_per_process']} "
              f"each: {r['median_step_s']:.2f} s per step (losses {r['train_losses']})")
    print(f"  {args.processes} processes x {args.threads} thread vs 1 process x {args.processes * args.threads} "
          f"threads: {ratio:.2f}x the speed")
    paths.write_text_atomic(p.report_dir / "process_step.json", json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
