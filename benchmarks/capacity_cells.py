"""A capacity grid's finished cells as a capacity.json that `python -m distill compare` reads.

A whole grid takes 84 minutes on 2 cores; to compare two code versions (or machines) on part of it, run the same
cells in both checkouts, then put each one's cell score files (`artifacts/<run>/capacity/**/*_<N>q.json`, as the
scoring stages wrote them: scores, answers by question id, per-question F1) together as records:

    python benchmarks/capacity_cells.py <checkout A>/artifacts/capacity_cpu/capacity reports/<somewhere>/A [--cells ...]
    python benchmarks/capacity_cells.py <checkout B>/artifacts/capacity_cpu/capacity reports/<somewhere>/B [--cells ...]
    python -m distill compare reports/<somewhere>/A reports/<somewhere>/B

Each folder gets `capacity.json`: {"records": [each score file's JSON, whole], "question_ids", "n_questions",
"cells": [the score files' paths under capacity_dir]}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capacity_dir", help="artifacts/<run>/capacity of a checkout")
    parser.add_argument("out", help="the folder to write capacity.json into")
    parser.add_argument("--cells", nargs="+", help="only these score files, relative to capacity_dir (e.g. "
                        "teacher/scores_300q.json keep22/seed0/scores/distilled_300q.json); default: every one")
    args = parser.parse_args()
    root, out = Path(args.capacity_dir), Path(args.out)
    if args.cells:
        files = [root / c for c in args.cells]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            print(f"no such cell score file: {', '.join(missing)}", file=sys.stderr)
            return 2
    else:
        files = sorted(f for f in root.rglob("*q.json") if "scores" in f.parts or f.name.startswith("scores_"))
    if not files:
        print(f"{root}: no cell score files (*_<N>q.json); give artifacts/<run>/capacity of a grid run", file=sys.stderr)
        return 2
    records = [json.loads(f.read_text()) for f in files]
    ids = {tuple(r.get("question_ids", [])) for r in records}
    if len(ids) != 1:
        print(f"{root}: the cells were scored on different questions; compare cells of one grid", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    question_ids = list(next(iter(ids)))
    grid = {"records": records, "question_ids": question_ids, "n_questions": len(question_ids),
            "cells": [f.relative_to(root).as_posix() for f in files]}
    (out / "capacity.json").write_text(json.dumps(grid, indent=1))
    print(f"{out / 'capacity.json'}: {len(records)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
