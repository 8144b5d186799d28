"""Peak memory and time of the KD divergence at Gemma's 256,000-word vocabulary: whole vs chunked.

Each variant runs forward + backward in a fresh process (peak RSS is per process), side by side in
one run, and the ratios are printed. Run: make bench-loss  (or python benchmarks/kd_loss_memory.py)
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from distill.kd.losses import kd_divergence

VOCAB, SEQ = 256_000, 256


def one(chunk: int) -> dict:
    import torch


    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    student = torch.randn(1, SEQ, VOCAB, generator=g, dtype=torch.bfloat16).requires_grad_(True)
    teacher = torch.randn(1, SEQ, VOCAB, generator=g, dtype=torch.bfloat16)
    mask = torch.ones(1, SEQ, dtype=torch.bool)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    loss = kd_divergence(student, teacher, mask, temperature=2.0, chunk_size=chunk or None)
    loss.backward()
    return {"chunk": chunk, "loss": float(loss), "seconds": time.perf_counter() - start,
            "inputs_mb": 2 * student.numel() * 2 / 1e6, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": base}


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one(int(sys.argv[1]))))
        return
    rows = []
    for chunk in (0, 64, 16):
        out = subprocess.run([sys.executable, __file__, str(chunk)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    whole = rows[0]
    print(f"KD forward+backward, bf16 logits [1, {SEQ}, {VOCAB:,}] (inputs {whole['inputs_mb']:.0f} MB), 2 threads")
    print(f"{'variant':<16}{'peak RSS MB':>12}{'extra MB':>10}{'seconds':>9}{'loss':>10}{'memory vs whole':>17}")
    for r in rows:
        extra = r["peak_rss_mb"] - r["rss_before_mb"]
        whole_extra = whole["peak_rss_mb"] - whole["rss_before_mb"]
        name = "whole" if not r["chunk"] else f"chunk {r['chunk']}"
        print(f"{name:<16}{r['peak_rss_mb']:>12.0f}{extra:>10.0f}{r['seconds']:>9.2f}{r['loss']:>10.4f}"
              f"{extra / whole_extra:>16.2f}x")


if __name__ == "__main__":
    main()
