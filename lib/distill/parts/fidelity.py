"""How far one teacher's next-token distributions lie from a reference teacher's on the same tokens.

The question a 4-bit teacher raises: the student learns from the teacher's distribution, so what NF4 changes in
it is what the student inherits. Both teachers read the same teacher-forced examples; on every row that predicts
an answer token this measures KL(reference || other) over the whole vocabulary at each temperature (mean and 90th
percentile over rows), whether the two agree on the top token, and how far apart the sparse sampled targets the
teacher cache would store from each lie (total variation between the two k-draw empirical distributions, drawn
with the same random numbers), beside the same distance between two caches of the reference drawn with different
random numbers: the sampling's own noise floor.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distill.kd.losses import loss_rows
from distill.parts.data import pad_batch
from distill.parts.teacher_cache import sparse_targets


@torch.no_grad()
def kl_rows(reference_logits: torch.Tensor, other_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(reference || other) per row of [P, V] logits at `temperature`, in nats (float64 sums)."""
    p_log = torch.log_softmax(reference_logits.double() / temperature, dim=-1)
    q_log = torch.log_softmax(other_logits.double() / temperature, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def sampled_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], vocab: int) -> torch.Tensor:
    """Total variation per row between two sampled sparse targets (`teacher_cache.sparse_targets`, format sampled):
    half the summed absolute difference of their empirical distributions over the drawn ids."""
    def dense(t: dict[str, torch.Tensor]) -> torch.Tensor:
        counts = t["counts"].double()
        out = torch.zeros(counts.shape[0], vocab, dtype=torch.float64)
        out.scatter_add_(1, t["ids"].long(), counts)
        return out / counts.sum(-1, keepdim=True)
    return 0.5 * (dense(a) - dense(b)).abs().sum(-1)


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "p90": float(np.quantile(v, 0.9))} if len(v) else {"mean": 0.0, "p90": 0.0}


@torch.no_grad()
def compare(reference, other, features: list[dict[str, Any]], *, temperatures: list[float], cache_temperature: float,
            cache_k: int, pad_id: int, batch_size: int, seed: int, device: torch.device | str = "cpu",
            vocab: int | None = None) -> dict[str, Any]:
    """`other` against `reference` on the rows that predict the gold answer's tokens of `features`, over the first
    `vocab` logits (the tokenizer's words, as the teacher cache keeps them; None: every logit). The caches compared
    are in the sampled format (the study's profiles' `teacher_cache: sampled`).

    Returns {"rows", "kl": {T: {"mean", "p90"}}, "top1_agreement", "cache_distance": {"mean", "p90"},
    "cache_noise_floor": {"mean", "p90"}} (KL in nats per answer token; distances in [0, 1])."""
    reference.eval()
    other.eval()
    kl: dict[float, list[float]] = {float(t): [] for t in temperatures}
    agree, distance, floor = [], [], []
    gen_a, gen_b, gen_floor = (torch.Generator().manual_seed(s) for s in (seed, seed, seed + 1))
    for i in range(0, len(features), batch_size):
        batch = pad_batch(features[i:i + batch_size], pad_id, side="right")
        _, rows, _ = loss_rows(batch["labels"], batch["attention_mask"], "answer")
        if not rows.any():
            continue
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                  "logits_to_keep": rows.to(device), "use_cache": False}
        ref = reference(**inputs).logits.float()
        width = ref.shape[-1]
        ref = ref.reshape(-1, width)[:, :vocab].cpu()
        oth = other(**inputs).logits.float().reshape(-1, width)[:, :vocab].cpu()
        for t in kl:
            kl[t] += kl_rows(ref, oth, t).tolist()
        agree += (ref.argmax(-1) == oth.argmax(-1)).tolist()
        # the same random numbers for both teachers: what differs is their distributions, not the draws
        a = sparse_targets(ref, cache_temperature, "sampled", cache_k, gen_a)
        b = sparse_targets(oth, cache_temperature, "sampled", cache_k, gen_b)
        again = sparse_targets(ref, cache_temperature, "sampled", cache_k, gen_floor)
        distance += sampled_distance(a, b, ref.shape[-1]).tolist()
        floor += sampled_distance(a, again, ref.shape[-1]).tolist()
    return {"rows": len(agree), "kl": {t: summary(v) for t, v in kl.items()},
            "top1_agreement": float(np.mean(agree)) if agree else 0.0,
            "cache_distance": summary(distance), "cache_noise_floor": summary(floor)}
