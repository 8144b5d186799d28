"""Command line: `python -m distill run|validate|pipeline|status|dag|sweep|params|squad-subset|stage` (`--help`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill", description="distill-study: run and check the study")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="validate a params file, then run the notebooks and render reports/<run>/")
    run.add_argument("params", help="params/<profile>.yaml (or just the profile name)")
    run.add_argument("--only", default="", help="comma-separated pipeline stages to bring up to date, with what they "
                     "need upstream (default: the whole study); see pipelines/<run>/dvc.yaml")
    run.add_argument("--force", action="store_true", help="re-run the stages even when DVC finds them up to date")
    val = sub.add_parser("validate", help="only validate a params file")
    val.add_argument("params")
    pipe = sub.add_parser("pipeline", help="write pipelines/<run>/dvc.yaml and params.yaml without running them")
    pipe.add_argument("params")
    status = sub.add_parser("status", help="what is out of date in a run's pipeline, and why (dvc status)")
    status.add_argument("params")
    dag = sub.add_parser("dag", help="the stages of a run's pipeline and what feeds what (dvc dag)")
    dag.add_argument("params")
    for p in (run, val, pipe, status, dag):
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
    subset = sub.add_parser("squad-subset", help="the SQuAD v1.1 dev file restricted to a run's scored questions, in "
                            "the official layout: the official evaluate-v1.1.py re-scores predictions_<model>.json "
                            "against it")
    subset.add_argument("results_json", help="reports/<run>/results.json")
    subset.add_argument("out", help="where to write the dev subset (JSON)")
    stage = sub.add_parser("stage", help="(what DVC runs) one pipeline stage of a run's resolved params file")
    stage.add_argument("params_file", help="pipelines/<run>/params.yaml")
    stage.add_argument("kind", help="teacher, train, merge, score, speed or report")
    stage.add_argument("args", nargs="*", help="the variant (train), model (score, speed), or a sweep stage's arguments")
    args = parser.parse_args(argv)

    from .params import ParamsError, help_table, load

    if args.command == "params":
        for name, kind, default, text in help_table():
            print(f"{name:30} {kind:28} default {default!r:22} {text}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "squad-subset":
        from .official import write_dev_subset

        n = write_dev_subset(args.results_json, args.out)
        print(f"wrote {args.out}: {n} questions; re-score with: python evaluate-v1.1.py {args.out} "
              f"{Path(args.results_json).parent}/predictions_<model>.json")
        return 0
    if args.command == "stage":
        from .pipeline import die_with_run
        from .stage import main as stage_main

        die_with_run()
        return stage_main(args.params_file, args.kind, *args.args)
    try:
        p = load(args.params, overrides=args.set)
    except ParamsError as err:
        print(f"error: {args.params}: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"ok: {args.params} is valid (run_name {p.run_name})")
        return 0
    if args.command in ("pipeline", "status", "dag"):
        from . import pipeline

        try:
            dvcfile = pipeline.write_pipeline(p)
        except ParamsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.command == "pipeline":
            print(f"wrote {dvcfile} and its params.yaml")
            return 0
        dvc_args = ["status"] if args.command == "status" else ["dag", "--md"]
        return pipeline.dvc(*dvc_args, str(dvcfile.relative_to(pipeline.paths.PROJECT_ROOT))).returncode
    from .pipeline import RunLocked, die_with_parent
    from .runner import run_study

    die_with_parent(only_if_parent_is="make")  # kill -9 of `make study` ends the run, its DVC and its stages too
    only = [s for s in args.only.split(",") if s]
    try:
        return run_study(p, only=only or None, force=args.force)
    except (ParamsError, ValueError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    from . import sweep
    from .params import ParamsError, load, parse_overrides
    from .pipeline import RunLocked
    from .runner import run_sweeps

    from .pipeline import params_file, read_params

    try:
        base = load(args.params)
        if params_file(base).exists():  # the run as it was last run (its --set overrides included)
            base = read_params(params_file(base))
            print(f"sweeping run {base.run_name} as its pipeline has it: {params_file(base)}")
        overrides = parse_overrides(args.set)
        if not all(s.strip().isdigit() for s in args.seeds.split(",") if s.strip()):
            raise ParamsError(f"--seeds {args.seeds}: expected comma-separated whole numbers, e.g. 0,1,2")
        if args.questions < 0:
            raise ParamsError(f"--questions {args.questions}: expected a count >= 1 (or 0: as recorded, else bench_size)")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        return run_sweeps(base, lambda: sweep.register(base, args.name, seeds, variants, overrides, args.questions,
                                                       args.reference))
    except (ParamsError, ValueError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
