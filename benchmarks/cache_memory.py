"""Peak memory of the teacher-cache fill with and without giving the freed logits back to the system.

Both arms fill a fresh store with the profile's tuned teacher for the same examples (the distilled student's
training features of seeds 0, 1, 2, ... until `--examples`), through the study's own `teacher_cache.fill`, each in a
fresh process, side by side in one run:
  kept       `procs.release_freed_memory` replaced by a no-op (the code before it was called after each batch)
  released   the study's code
It prints each arm's peak RSS and fill time and their ratios. Run `make study` first (it makes the tuned teacher).
Run: python benchmarks/cache_memory.py [params/<profile>.yaml] [--examples 240]
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

import torch

from distill.core import params, procs
from distill.parts import models, teacher_cache
from distill.study import cache, steps
from distill.study.layout import variant_params


def fill_once(p, examples: int, keep_freed: bool) -> dict:
    if keep_freed:
        procs.release_freed_memory = lambda: None
    models.setup_torch(p.seed, p.torch_threads)
    teacher, tokenizer = steps.load_teacher(p, torch.device("cpu"))
    features, seed = [], 0
    while len(features) < examples:
        features += steps.training_features(variant_params(p.replace(seed=seed), "distilled"), tokenizer)
        seed += 1
    features = features[:examples]
    config = cache.cache_config(p, tokenizer)
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        report = teacher_cache.fill(Path(store) / "store", config, {"bench": features}, teacher, "cpu", p.batch_size,
                                    tokenizer.pad_token_id, log=lambda *_: None)
        seconds = time.perf_counter() - start
    return {"examples": report.examples, "positions": report.positions, "fill_s": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", default="params/smollm2-135m_to_pruned20_cpu.yaml")
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--arm", choices=["kept", "released"], help=argparse.SUPPRESS)  # one arm, in its own process
    args = parser.parse_args()
    p = params.load(args.params)
    if args.arm:
        print(json.dumps(fill_once(p, args.examples, args.arm == "kept")))
        return 0
    try:
        steps.teacher_source(p)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    arms = {}
    for arm in ("kept", "released"):
        out = subprocess.run([sys.executable, __file__, args.params, "--examples", str(args.examples), "--arm", arm],
                             capture_output=True, text=True, check=True)
        arms[arm] = json.loads(out.stdout.strip().splitlines()[-1])
        a = arms[arm]
        print(f"{arm:9s} {a['examples']} examples, {a['positions']} positions: peak RSS {a['peak_rss_mb']:,.0f} MB, "
              f"fill {a['fill_s']:.0f} s", flush=True)
    kept, released = arms["kept"], arms["released"]
    print(f"released / kept: peak RSS {released['peak_rss_mb'] / kept['peak_rss_mb']:.2f}x, "
          f"fill time {released['fill_s'] / kept['fill_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
