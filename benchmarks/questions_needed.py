"""How many dev questions does a sweep need so that an F1 difference of a given size is resolved?

From two arms of a finished sweep (the same seeds, the same scored questions) it takes each question's F1
difference d[q, s] (arm A minus arm B, seed s), then splits the spread of the difference into the part that
shrinks with more questions and the part that does not:
  sigma_q^2     the variance of d over questions within a seed (mean over seeds),
  sigma_seed^2  the variance of the per-seed mean difference that is not question noise:
                var_s(mean_q d) - sigma_q^2 / n (0 when negative).
It prints, for S seeds and n questions, the 95% half-width of the seed-level Student-t interval the sweep
summary reports, t(0.975, S-1) x sqrt((sigma_seed^2 + sigma_q^2 / n) / S), and the n at which that half-width
falls below --effect (none when the seed part alone is wider). The question-level interval (a paired
interval over questions of the seed-averaged difference, 1.96 x sd_q / sqrt(n)) is printed beside it.
Run: python benchmarks/questions_needed.py params/<profile>.yaml --a default/distilled --b default/ce_baseline
 or, from a signal grid's committed records: python benchmarks/questions_needed.py params/signal_cpu.yaml
    --signal reports/signal_cpu/signal.json --layers 16 --a kd_teacher --b ce_only
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from distill.core import params
from distill.parts import metrics
from distill.report import stats
from distill.study import layout, steps, sweep


def per_question_f1(score_file: Path, references: dict[str, list[str]]) -> dict[str, float]:
    scores = json.loads(score_file.read_text())
    refs = [references[q] for q in scores["question_ids"]]
    rows = metrics.per_example_scores(scores["predictions"], refs)
    return {q: 100.0 * r["f1"] for q, r in zip(scores["question_ids"], rows)}  # F1 points, as the summaries give them


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params")
    parser.add_argument("--a", required=True, help="sweep/variant, e.g. default/distilled (with --signal: an arm)")
    parser.add_argument("--b", required=True, help="sweep/variant it is compared with")
    parser.add_argument("--sweeps", help="the sweeps folder (default artifacts/<run>/sweeps)")
    parser.add_argument("--questions", type=int, help="the scored question count (default: the registry's)")
    parser.add_argument("--signal", help="a signal grid's signal.json: compare two of its arms at --layers")
    parser.add_argument("--layers", type=int, help="with --signal: the student size")
    parser.add_argument("--effect", type=float, default=3.0, help="F1 points the interval must resolve")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

    p = params.load(args.params)
    arms = {}
    if args.signal:  # the records keep each model's F1 per question
        records = json.loads(Path(args.signal).read_text())["records"]
        for arm in (args.a, args.b):
            arms[arm] = {f"seed{r['seed']}": {q: 100.0 * f for q, f in r["f1_per_question"].items()}
                         for r in records if r["arm"] == arm and r["layers"] == args.layers}
            if not arms[arm]:
                raise SystemExit(f"error: no records of arm {arm} at {args.layers} layers in {args.signal}")
    folder = Path(args.sweeps) if args.sweeps else layout.base_run_dir(p) / "sweeps"
    n_q = args.questions or sweep.load_registry(p).get("questions") or p.bench_size
    references = {} if args.signal else {r["id"]: r["answers"]["text"] for r in steps.bench_rows(p, n_q)}
    for arm in () if args.signal else (args.a, args.b):
        name, _, variant = arm.partition("/")
        files = sorted((folder / name).glob(f"seed*/scores/{variant}_{n_q}q.json"))
        if not files:
            raise SystemExit(f"error: no scores for {arm} on {n_q} questions under {folder / name}")
        arms[arm] = {f.parts[-3]: per_question_f1(f, references) for f in files}
    seeds = sorted(set(arms[args.a]) & set(arms[args.b]))
    if len(seeds) < 2:
        raise SystemExit(f"error: {args.a} and {args.b} share {len(seeds)} seed(s); need 2 or more")
    diffs = {s: {q: arms[args.a][s][q] - arms[args.b][s][q] for q in arms[args.a][s]} for s in seeds}
    n = len(next(iter(diffs.values())))
    sigma_q2 = statistics.fmean(statistics.variance(list(d.values())) for d in diffs.values())
    seed_means = [statistics.fmean(d.values()) for d in diffs.values()]
    sigma_seed2 = max(0.0, statistics.variance(seed_means) - sigma_q2 / n)
    averaged = [statistics.fmean(diffs[s][q] for s in seeds) for q in diffs[seeds[0]]]
    sd_avg = statistics.stdev(averaged)
    print(f"{args.a} minus {args.b}: {len(seeds)} seeds x {n} questions; mean F1 difference "
          f"{statistics.fmean(seed_means):+.2f}")
    print(f"  per-question sd within a seed {math.sqrt(sigma_q2):.1f} F1 points; seed-level sd beyond question "
          f"noise {math.sqrt(sigma_seed2):.2f}; sd of the seed-averaged per-question difference {sd_avg:.1f}")
    out = {"a": args.a, "b": args.b, "seeds": len(seeds), "questions": n, "effect": args.effect,
           "sigma_q": math.sqrt(sigma_q2), "sigma_seed": math.sqrt(sigma_seed2), "sd_seed_averaged": sd_avg,
           "designs": []}
    for s_count in (3, 5, 10):
        t = stats.t_quantile(0.975, s_count - 1)
        room = (args.effect / t) ** 2 * s_count - sigma_seed2
        need = math.ceil(sigma_q2 / room) if room > 0 else None
        out["designs"].append({"seeds": s_count, "t": t, "questions_needed": need})
        said = f"{need} questions" if need else "not reachable (the seed-to-seed part alone is wider)"
        print(f"  {s_count:2d} seeds: seed-level 95% interval within +-{args.effect:g} F1 needs {said}")
    q_need = math.ceil((1.96 * sd_avg / args.effect) ** 2)
    out["questions_needed_question_level"] = q_need
    print(f"  question-level paired interval (seed-averaged differences) within +-{args.effect:g} F1: {q_need} questions")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
