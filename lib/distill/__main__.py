"""Command line: `python -m distill run|validate|params|bench-model` (see `--help`)."""
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


if __name__ == "__main__":
    sys.exit(main())
