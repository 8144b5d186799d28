"""Peak memory and time of the KD divergence over a large vocabulary: whole, chunked, and from a sampled cache.

Each variant runs forward + backward of the divergence on one sequence of random logits in a fresh process
(peak RSS is per process), side by side in one run, and the ratios are printed:
  whole        kd_divergence over the full [1, T, V] student and teacher logits at once
  chunk N      the same, N positions at a time (kd_chunk_size)
  cached k     sampled_kd_divergence from k sampled teacher tokens per position (the teacher cache's format):
               no teacher logits at all, chunked like the profile
Without a profile: Gemma's 256,000 words, 256 positions, bfloat16 logits (the GPU reference run's shapes). With
one (`python benchmarks/kd_loss_memory.py params/<profile>.yaml`): its teacher's real vocabulary (read from the
converted model's config), max_length positions, model_dtype, kd_chunk_size and teacher_cache_k; the numbers go
to reports/<run>/kd_loss_memory.json too. Run: make bench-loss  (LOSS_PROFILE=<profile> for a profile's shapes)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(vocab: int, seq: int, dtype: str, chunk: int, cached_k: int) -> dict:
    import torch

    from distill.kd.losses import kd_divergence, sampled_kd_divergence

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    # filled in place: randn(dtype=bfloat16) would pass through a float32 temporary and raise the peak before the
    # measurement starts, hiding what the divergence itself adds
    student = torch.empty(1, seq, vocab, dtype=dt).normal_(generator=g).requires_grad_(True)
    mask = torch.ones(1, seq, dtype=torch.bool)
    if cached_k:
        ids = torch.stack([torch.randperm(vocab, generator=g)[:cached_k] for _ in range(seq)])[None]
        logprobs = torch.log_softmax(torch.randn(1, seq, cached_k, generator=g), -1) - 1.0
        counts = torch.ones(1, seq, cached_k)
    else:
        teacher = torch.empty(1, seq, vocab, dtype=dt).normal_(generator=g)
    base = reset_peak()
    start = time.perf_counter()
    if cached_k:
        loss = sampled_kd_divergence(student, ids, logprobs, counts, mask, temperature=2.0, chunk_size=chunk or None)
    else:
        loss = kd_divergence(student, teacher, mask, temperature=2.0, chunk_size=chunk or None)
    loss.backward()
    return {"chunk": chunk, "cached_k": cached_k, "loss": float(loss), "seconds": time.perf_counter() - start,
            "student_logits_mb": student.numel() * student.element_size() / 1e6,
            "peak_rss_mb": _status_mb("VmHWM"), "rss_before_mb": base}


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def reset_peak() -> float:
    """Reset this process's peak RSS to its current RSS (Linux: clear_refs 5), so the peak measured next is what
    the divergence adds, not a transient of imports or input building; returns the RSS now, in MB. Where the
    kernel refuses, the baseline is the peak so far (the extra is then a lower bound)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _status_mb("VmHWM")
    return _status_mb("VmRSS")


def shapes(profile: str | None) -> dict:
    if not profile:
        return {"vocab": 256_000, "seq": 256, "dtype": "bfloat16", "chunk": 64, "k": 12, "run": None}
    from transformers import AutoConfig  # heavy: only with a profile

    from distill.core import params
    from distill.parts import sources

    p = params.load(profile)
    vocab = AutoConfig.from_pretrained(sources.resolve_source(p.teacher, p.squad_dir)).get_text_config().vocab_size
    return {"vocab": int(vocab), "seq": p.max_length, "dtype": p.model_dtype, "chunk": p.kd_chunk_size or 64,
            "k": p.teacher_cache_k, "run": p.run_name, "report_dir": str(p.report_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", help="a params/<profile>.yaml for its shapes (default: Gemma's GPU shapes)")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # vocab seq dtype chunk cached_k: one variant
    args = parser.parse_args()
    if args.one:
        vocab, seq, dtype, chunk, k = args.one
        print(json.dumps(one(int(vocab), int(seq), dtype, int(chunk), int(k))))
        return
    s = shapes(args.params)
    rows = []
    for chunk, k in ((0, 0), (s["chunk"], 0), (16, 0), (s["chunk"], s["k"])):
        cmd = [sys.executable, __file__, "--one", str(s["vocab"]), str(s["seq"]), s["dtype"], str(chunk), str(k)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    whole = rows[0]
    whole_extra = whole["peak_rss_mb"] - whole["rss_before_mb"]
    print(f"KD forward+backward, {s['dtype']} student logits [1, {s['seq']}, {s['vocab']:,}] "
          f"({whole['student_logits_mb']:.0f} MB){', profile ' + s['run'] if s['run'] else ''}, 2 threads")
    print("(the cached variant's targets are random draws: its loss is not comparable, its memory and time are)")
    print(f"{'variant':<18}{'peak RSS MB':>12}{'extra MB':>10}{'seconds':>9}{'loss':>10}{'memory vs whole':>17}")
    for r in rows:
        r["extra_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
        r["memory_vs_whole"] = r["extra_mb"] / whole_extra
        r["variant"] = (f"cached {r['cached_k']}, chunk {r['chunk']}" if r["cached_k"] else
                        f"chunk {r['chunk']}" if r["chunk"] else "whole")
        print(f"{r['variant']:<18}{r['peak_rss_mb']:>12.0f}{r['extra_mb']:>10.0f}{r['seconds']:>9.2f}{r['loss']:>10.4f}"
              f"{r['memory_vs_whole']:>16.2f}x")
    if s["run"]:
        from pathlib import Path

        from distill.core import paths

        out = Path(s["report_dir"]) / "kd_loss_memory.json"
        paths.write_text_atomic(out, json.dumps({"shapes": s, "variants": rows}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
