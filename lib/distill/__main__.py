"""Command line: `python -m distill run|validate|pipeline|status|dag|sweep|compare|params|squad-subset|stage`
(`--help`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from distill.core import paths, procs
from distill.core.params import ParamsError, help_table, load, parse_overrides
from distill.parts import official
from distill.pipeline import dvc, preflight, runner, stage
from distill.pipeline.dvc import RunLocked, params_file, read_params
from distill.pipeline.preflight import PreflightError
from distill.report import reproduce
from distill.study import sweep

# set to see the traceback behind a command's one-line error
TRACEBACK_ENV = "DISTILL_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    """Every command a person types answers bad input with one line on stderr and a non-zero exit, never a traceback.
    The internal `stage` and `train-student` say a missing or wrong file in one line too (see `_main`); any other
    failure of theirs keeps its traceback, the record of a failed stage in DVC's and accelerate's logs."""
    if (argv if argv is not None else sys.argv[1:])[:1] in (["stage"], ["train-student"]):
        return _main(argv)  # what DVC and accelerate run: a failure's traceback is the record in their logs
    try:
        return _main(argv)
    except BrokenPipeError:  # piped into a command that closed early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush would raise again
        return 1
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        what = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "is not a folder"}[type(err)]
        print(f"error: {err.filename or err} {what}; check the path given", file=sys.stderr)
        return 2
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as err:  # a file given that is not what it should be
        print(f"error: {' '.join(str(err).split())[:600]}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (a user sees one line; DISTILL_TRACEBACK=1 shows the rest)
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {type(err).__name__}: {' '.join(str(err).split())[:600]} (set {TRACEBACK_ENV}=1 to see "
              "where)", file=sys.stderr)
        return 1


def _main(argv: list[str] | None = None) -> int:
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
    compare = sub.add_parser("compare", help="do two runs' results agree: exactly, within float tolerance, within "
                             "the seed spread of a sweep, or not (exit 0, 0, 1, 3); and what differs in their params, "
                             "packages and machines (a capacity grid's folder: its capacity.json, record by record)")
    compare.add_argument("run_a", help="reports/<run> (or a run name)")
    compare.add_argument("run_b", help="reports/<run> (or a run name)")
    stage_cmd = sub.add_parser("stage", help="(what DVC runs) one pipeline stage of a run's resolved params file")
    stage_cmd.add_argument("params_file", help="pipelines/<run>/params.yaml")
    stage_cmd.add_argument("kind", help="teacher, train, merge, score, speed or report")
    stage_cmd.add_argument("args", nargs="*", help="the variant (train), model (score, speed), or a sweep stage's arguments")
    rank = sub.add_parser("train-student", help="(what `accelerate launch` runs on each process) one student's "
                                                "training from a launch's params file")
    rank.add_argument("params_file", help="artifacts/<run>/students/<variant>/launch_params.json")
    args = parser.parse_args(argv)


    if args.command == "params":
        for name, kind, default, text in help_table():
            print(f"{name:30} {kind:28} default {default!r:22} {text}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "squad-subset":
        n = official.write_dev_subset(args.results_json, args.out)
        print(f"wrote {args.out}: {n} questions; re-score with: python evaluate-v1.1.py {args.out} "
              f"{Path(args.results_json).parent}/predictions_<model>.json")
        return 0
    if args.command == "compare":
        try:
            result = reproduce.compare_runs(args.run_a, args.run_b)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(reproduce.format_comparison(result))
        return reproduce.exit_code(result)
    if args.command in ("train-student", "stage") and not Path(args.params_file).is_file():
        what = "is a folder, not a file" if Path(args.params_file).is_dir() else "does not exist"
        print(f"error: {args.params_file} {what}; give the params file the pipeline wrote", file=sys.stderr)
        return 2
    if args.command == "train-student":
        from distill.study import training  # heavy (transformers' Trainer): only a launched rank needs it

        return training.rank_main(args.params_file)
    if args.command == "stage":
        procs.die_with_run()
        return stage.main(args.params_file, args.kind, *args.args)
    try:
        p = load(args.params, overrides=args.set)
    except ParamsError as err:
        print(f"error: {err}" if str(err).startswith(str(args.params)) else f"error: {args.params}: {err}",
              file=sys.stderr)
        return 2

    checks = lambda: preflight.check(p, log=lambda line: print(f"  {line}", file=sys.stderr))  # noqa: E731
    if args.command == "validate":
        try:  # data, models and folders, as a run checks them before any kernel starts
            checks()
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"error: {_os_error(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        print(f"ok: {args.params} is valid (run_name {p.run_name}); its data, models and folders were checked")
        return 0
    if args.command in ("pipeline", "status", "dag"):
        try:
            dvcfile = dvc.write_pipeline(p)
        except ParamsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.command == "pipeline":
            print(f"wrote {dvcfile} and its params.yaml")
            return 0
        dvc_args = ["status"] if args.command == "status" else ["dag", "--md"]
        return dvc.dvc(*dvc_args, str(dvcfile.relative_to(dvc.paths.PROJECT_ROOT))).returncode

    procs.die_with_parent(only_if_parent_is="make")  # kill -9 of `make study` ends the run, its DVC and its stages too
    only = [s for s in args.only.split(",") if s]
    try:
        return runner.run_study(p, only=only or None, force=args.force, before=checks)
    except (ParamsError, ValueError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a folder made read-only while the run ran
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); run the same command again to continue", file=sys.stderr)
        return 130


def _os_error(err: OSError) -> str:
    """One line for a write that the system refused, naming the file and the fix (or the error as it is, when it is
    not the file system's: a library's OSError for a model it cannot load)."""
    if err.errno is None:
        return " ".join(str(err).split())[:600]
    where = err.filename or "a file"
    fixes = {28: "free space on that disk (make clean removes old runs' artifacts) or write elsewhere with "
                 "--set output_dir=<folder>",
             30: "the file system is read-only: write elsewhere with --set output_dir=<folder>",
             13: "make the folder writable (chmod u+w) or write elsewhere with --set output_dir=<folder>"}
    return f"cannot write {where}: {err.strerror}; {fixes.get(err.errno, 'check the folder and the disk')}"


def _sweep(args: argparse.Namespace) -> int:
    try:
        base = load(args.params)
        recorded = params_file(base).exists()
        if recorded:  # the run as it was last run (its --set overrides included)
            base = read_params(params_file(base))
        overrides = parse_overrides(args.set)
        sweep.check_setting(args.name, overrides)
        if not all(s.strip().isdigit() for s in args.seeds.split(",") if s.strip()):
            raise ParamsError(f"--seeds {args.seeds}: expected comma-separated whole numbers, e.g. 0,1,2")
        if args.questions < 0:
            raise ParamsError(f"--questions {args.questions}: expected a count >= 1 (or 0: as recorded, else bench_size)")
        preflight.check(base, models=False, log=lambda line: print(f"  {line}", file=sys.stderr))
        if recorded:
            print(f"sweeping run {base.run_name} as its pipeline has it: {paths.shown(params_file(base))}")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        return runner.run_sweeps(base, lambda: sweep.register(base, args.name, seeds, variants, overrides, args.questions,
                                                       args.reference))
    except (ParamsError, PreflightError, ValueError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
