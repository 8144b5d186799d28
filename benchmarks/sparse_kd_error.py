"""How far each sparse teacher target is from the dense divergence, on a profile's real teacher and student.

For real training batches of the profile, the teacher's and the (untrained, pruned) student's logits:
the dense forward KL at the profile's temperature per position, and the same from top-k targets with
the bucket tail, with the renormalised tail, and from k sampled tokens, for k in 8, 16, 32, 64, 128.
Prints, per target and k: the mean relative error of the per-position divergence (|sparse - dense| /
dense, with its sd over positions) and the cosine between the sparse and the dense gradient with
respect to the student's logits (1 = the same direction). Writes reports/<run>/sparse_kd_error.json.
Needs the run's teacher and student (make study). Run: python benchmarks/sparse_kd_error.py params/<profile>.yaml
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from distill.core import params, paths
from distill.kd import losses
from distill.parts import data, models, teacher_cache
from distill.study import steps

KS = (8, 16, 32, 64, 128)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", default="params/smollm2-135m_to_pruned20_cpu.yaml")
    parser.add_argument("--examples", type=int, default=8, help="training examples measured")
    args = parser.parse_args()

    import torch


    p = params.load(args.params)
    models.setup_torch(p.seed, p.torch_threads)
    device = models.resolve_device(p.device)
    teacher, tok = steps.load_teacher(p, device)
    student, _ = steps.load_student(p, device)
    vocab = len(tok)
    feats = data.encode_examples(steps.load_data(p).train_rows[: args.examples], tok, p.max_length, p.seed).features
    batch = data.TrainCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
    mask = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    T = p.temperature
    rows = mask.nonzero().tolist()

    def per_position(fn) -> list[float]:
        out = []
        for b, t in rows:
            one = torch.zeros_like(mask)
            one[b, t] = True
            out.append(float(fn(one)))
        return out

    def grad_of(fn) -> torch.Tensor:
        x = s_logits.clone().requires_grad_(True)
        fn(x, mask).backward()
        return x.grad[mask].flatten()

    dense_rows = per_position(lambda m: losses.kd_divergence(s_logits, t_logits, m, temperature=T))
    dense_grad = grad_of(lambda x, m: losses.kd_divergence(x, t_logits, m, temperature=T))
    gen = torch.Generator().manual_seed(0)
    results = {"run_name": p.run_name, "temperature": T, "positions": len(rows), "examples": len(feats),
               "dense_mean": statistics.mean(dense_rows), "targets": {}}
    print(f"{p.run_name}: {len(rows)} positions of {len(feats)} training examples, T = {T}, dense forward KL "
          f"mean {results['dense_mean']:.4f}")
    print(f"{'target':22} {'k':>4} {'rel. error mean':>16} {'sd':>8} {'grad cosine':>12} {'bytes/token':>12}")
    for k in KS:
        flat = t_logits.reshape(-1, vocab)
        top = teacher_cache.sparse_targets(flat, T, "topk", k, None)
        smp = teacher_cache.sparse_targets(flat, T, "sampled", k, gen)
        shape = (*t_logits.shape[:2], k)
        ids, lp = top["ids"].reshape(shape), top["logprobs"].float().reshape(shape)
        s_ids, s_lp = smp["ids"].reshape(shape), smp["logprobs"].float().reshape(shape)
        counts = smp["counts"].float().reshape(shape)
        variants = {
            "topk, bucket tail": lambda x, m: losses.sparse_kd_divergence(x, ids, lp, m, temperature=T, tail="bucket"),
            "topk, renormalised": lambda x, m: losses.sparse_kd_divergence(x, ids, lp, m, temperature=T,
                                                                           tail="renormalize"),
            "sampled": lambda x, m: losses.sampled_kd_divergence(x, s_ids, s_lp, counts, m, temperature=T)}
        for name, fn in variants.items():
            values = per_position(lambda m: fn(s_logits, m))
            rel = [abs(v - d) / max(d, 1e-8) for v, d in zip(values, dense_rows)]
            g = grad_of(fn)
            cos = float(torch.nn.functional.cosine_similarity(g, dense_grad, dim=0))
            nbytes = k * (4 + 2) + (k * 2 if name == "sampled" else 0)
            results["targets"].setdefault(name, {})[k] = {"rel_error_mean": statistics.mean(rel),
                                                         "rel_error_sd": statistics.stdev(rel),
                                                         "grad_cosine": cos, "bytes_per_token": nbytes}
            print(f"{name:22} {k:>4} {statistics.mean(rel):>16.4f} {statistics.stdev(rel):>8.4f} {cos:>12.4f} "
                  f"{nbytes:>12}", flush=True)
    out = p.report_dir / "sparse_kd_error.json"
    paths.write_text_atomic(out, json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
