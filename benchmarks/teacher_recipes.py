"""Which teacher recipe buys the most F1 per CPU minute? Each recipe tunes the profile's base teacher on SQuAD
train questions (the teacher's own subset, the far end of the data shuffle) and is scored on the same dev
questions, each in a fresh process so its wall time and peak memory are its own.

A recipe is `name:key=value,key=value` over the teacher_finetune_* keys and lora_r, e.g.
  lora16x12:teacher_finetune_steps=12
  full200:teacher_finetune_use_lora=false,teacher_finetune_train_size=200,teacher_finetune_steps=25,teacher_finetune_lr=5e-5
It prints a table and writes reports/<run>/teacher_recipes.json (F1, EM, answer loss, tuning seconds,
F1 gained over zero-shot per tuning minute). Tuned weights go to a temporary folder and are deleted.
Run: python benchmarks/teacher_recipes.py params/<profile>.yaml --questions 96 RECIPE [RECIPE ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.core import params, paths
from distill.parts import benchmark, models, sources
from distill.study import steps, training

ZERO_SHOT = "zero-shot"


def parse_recipe(text: str) -> tuple[str, dict[str, str]]:
    name, _, body = text.partition(":")
    if not name or (body and "=" not in body):
        raise SystemExit(f"error: recipe {text!r}: expected name:key=value,key=value (or {ZERO_SHOT})")
    return name, dict(kv.split("=", 1) for kv in body.split(",") if kv)


def measure(profile: str, recipe: str, questions: int, work: str) -> dict:
    name, overrides = parse_recipe(recipe)
    p = params.load(profile, [f"{k}={v}" for k, v in overrides.items()])
    p = p.replace(run_name=f"_recipe_{name}", output_dir=work, bench_size=questions, teacher_finetune=True)
    models.setup_torch(p.seed, p.torch_threads)
    device = models.resolve_device(p.device)
    sets = steps.load_data(p)
    tuning_s = 0.0
    if name == ZERO_SHOT:
        source = sources.resolve_source(p.teacher, p.squad_dir)
        model = models.freeze(models.load_model(source, dtype=p.model_dtype, device=device))
        tokenizer = models.load_tokenizer(source)
    else:
        start = time.perf_counter()
        training.finetune_teacher(p, sets.teacher_rows, device)
        tuning_s = time.perf_counter() - start
        model, tokenizer = steps.load_teacher(p, device, quantize=False)
    scores = benchmark.evaluate(model, tokenizer, sets.bench_rows, max_length=p.max_length,
                                max_new_tokens=p.max_new_tokens, batch_size=p.bench_batch_size, seed=p.seed,
                                device=device)
    return {"recipe": name, "overrides": overrides, "n_questions": scores["n_examples"],
            "exact_match": scores["exact_match"], "f1": scores["f1"], "answer_loss": scores["answer_loss"],
            "top1_accuracy": scores["top1_accuracy"], "tuning_s": tuning_s,
            "examples_seen": 0 if name == ZERO_SHOT else p.teacher_finetune_steps * p.batch_size * p.grad_accum_steps,
            "train_size": 0 if name == ZERO_SHOT else len(sets.teacher_rows),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params")
    parser.add_argument("recipes", nargs="+", help=f"name:key=value,... ({ZERO_SHOT} scores the untuned teacher)")
    parser.add_argument("--questions", type=int, default=96, help="dev questions scored (the same for every recipe)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.params, args.one, args.questions, args.work)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

    p = params.load(args.params)
    for recipe in args.recipes:  # every recipe is checked before the first one runs
        try:
            params.load(args.params, [f"{k}={v}" for k, v in parse_recipe(recipe)[1].items()])
        except params.ParamsError as err:
            raise SystemExit(f"error: recipe {recipe!r}: {err}") from None
    out_file = p.report_dir / "teacher_recipes.json"
    done = {r["recipe"]: r for r in json.loads(out_file.read_text())["records"]} if out_file.exists() else {}
    for recipe in args.recipes:
        name = parse_recipe(recipe)[0]
        with tempfile.TemporaryDirectory(prefix=f"teacher_recipe_{name}_") as work:
            res = subprocess.run([sys.executable, __file__, args.params, recipe, "--questions", str(args.questions),
                                  "--one", recipe, "--work", work], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        done[name] = json.loads(res.stdout.strip().splitlines()[-1])
        r = done[name]
        print(f"{name:14} F1 {r['f1']:5.1f}  EM {r['exact_match']:5.1f}  answer loss {r['answer_loss']:.3f}  "
              f"tuning {r['tuning_s']:6.0f} s  ({r['examples_seen']} examples seen)", flush=True)
        base = done.get(ZERO_SHOT)
        for rec in done.values():
            if base and rec["tuning_s"] > 0:
                rec["f1_gain_per_tuning_minute"] = (rec["f1"] - base["f1"]) / (rec["tuning_s"] / 60)
        paths.write_text_atomic(out_file, json.dumps({"run": p.run_name, "questions": args.questions,
                                                      "records": list(done.values())}, indent=1))
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
