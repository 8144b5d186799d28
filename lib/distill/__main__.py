"""Command line: `python -m distill run|validate|sweep|params|bench-model` (see `--help`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill", description="distill-study: run and check the study")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="validate a params file, then run the notebooks and render reports/<run>/")
    run.add_argument("params", help="params/<profile>.yaml (or just the profile name)")
    run.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    val = sub.add_parser("validate", help="only validate a params file")
    val.add_argument("params")
    for p in (run, val):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one params key (YAML value), e.g. --set seed=1 --set run_name=x_seed1")
    sweep = sub.add_parser("sweep", help="train and score the students over several seeds from the base run's "
                           "teacher and pruned student; writes reports/<run>/sweeps/summary.txt")
    sweep.add_argument("params")
    sweep.add_argument("--name", required=True, help="names this setting, e.g. default or answer_positions")
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    sweep.add_argument("--variants", default="distilled,ce_baseline", help="which students to train and score")
    sweep.add_argument("--questions", type=int, default=0, help="validation questions scored (0 = as many as the sweeps already recorded, "
                       "else bench_size)")
    sweep.add_argument("--reference", default="default/ce_baseline",
                       help="SWEEP/VARIANT the paired differences are taken against")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a params key changed for this sweep's students, e.g. --set distill_positions=answer")
    sub.add_parser("params", help="list every params key with its type, default and meaning")
    bench = sub.add_parser("bench-model", help="(internal) benchmark one model in this process")
    bench.add_argument("spec")
    bench.add_argument("out")
    args = parser.parse_args(argv)

    from .params import ParamsError, help_table, load

    if args.command == "params":
        for name, kind, default, text in help_table():
            print(f"{name:30} {kind:28} default {default!r:22} {text}")
        return 0
    if args.command == "bench-model":
        from .benchmark import run_model_benchmark

        result = run_model_benchmark(json.loads(Path(args.spec).read_text()))
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.command == "sweep":
        return _sweep(args)
    try:
        p = load(args.params, overrides=args.set)
    except ParamsError as err:
        print(f"error: {args.params}: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"ok: {args.params} is valid (run_name {p.run_name})")
        return 0
    from .runner import run_study

    only = [s for s in args.only.split(",") if s]
    try:
        return run_study(p, only=only or None)
    except (ParamsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    from . import sweep
    from .params import ParamsError, load, parse_overrides

    try:
        base = load(args.params)
        overrides = parse_overrides(args.set)
        if not all(s.strip().isdigit() for s in args.seeds.split(",") if s.strip()):
            raise ParamsError(f"--seeds {args.seeds}: expected comma-separated whole numbers, e.g. 0,1,2")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        reference = tuple(args.reference.split("/", 1))
        if len(reference) != 2:
            raise ParamsError(f"--reference {args.reference}: expected SWEEP/VARIANT, e.g. default/ce_baseline")
        n_questions = sweep.sweep_questions(base, args.questions)
        records = sweep.run_sweep(base, args.name, seeds, variants, overrides, n_questions)
    except (ParamsError, ValueError, FileNotFoundError, sweep.StaleSeedRun) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sweep.save_records(base, args.name, records)
    sweep.save_records(base, "reference", sweep.score_references(base, n_questions))
    summary = sweep.write_summary(base, reference)
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
