"""Loss terms of the study, as pure functions (plus the learned width projection they may use).

All terms compute in float32 whatever the input dtype, and a term whose mask selects nothing is an
exact zero that keeps the graph (never NaN).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd")
PROJECTION_FILE = "hidden_projection.safetensors"


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum().float() * 0.0


def answer_ce(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Causal-LM cross-entropy on the gold answer: logits[:, t] predict labels[:, t + 1]; -100 is ignored.

    The sum over answer tokens is divided by `num_items_in_batch` (the whole accumulation window's
    answer tokens) when given, so gradient accumulation is exact; else by this batch's count.
    """
    pred = logits[:, :-1].float()
    target = labels[:, 1:]
    valid = target != -100
    if not valid.any():
        return _zero(logits)
    total = F.cross_entropy(pred[valid], target[valid], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else valid.sum()
    return total / denom


def _pointwise(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float, kind: str,
               beta: float) -> torch.Tensor:
    """Divergence per row of [N, V] logits (float32), before the T^2 factor."""
    log_s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":  # KL(t || s)
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if kind == "reverse_kl":  # KL(s || t)
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    # generalized JSD (GKD): m = beta t + (1 - beta) s, computed in log space for stability
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1 - beta)]), dim=0)
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5,
                  chunk_size: int | None = None, num_items=None, vocab_size: int | None = None) -> torch.Tensor:
    """Mean over masked positions of T^2 * D(teacher, student) between temperature-softened distributions.

    Logits are `[batch, seq, vocab]` and already aligned; `mask` is `[batch, seq]` bool. kinds:
    forward_kl = KL(t||s), reverse_kl = KL(s||t), jsd = beta KL(t||m) + (1-beta) KL(s||m) with
    m = beta t + (1-beta) s. Only the masked rows are gathered; `chunk_size` bounds the float32
    working memory to chunk_size x vocab per step (each chunk is recomputed in backward).
    `vocab_size` slices padded embedding rows off both (teacher and student may differ there).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: got {kind!r}; expected one of {KINDS}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta: got {beta}; the generalized JSD needs 0 < beta < 1")
    if vocab_size is not None:
        student_logits, teacher_logits = student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    elif student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocab {student_logits.shape[-1]} != teacher vocab {teacher_logits.shape[-1]}; "
                         "pass vocab_size (the tokenizer's size) to compare on the shared vocabulary")
    mask = mask.bool()
    if not mask.any():
        return _zero(student_logits)
    s_rows, t_rows = student_logits[mask], teacher_logits[mask].detach()
    n = s_rows.shape[0]
    step = chunk_size or n
    total = _zero(student_logits)
    for i in range(0, n, step):
        s, t = s_rows[i:i + step], t_rows[i:i + step]
        if chunk_size and s.requires_grad:
            per_row = checkpoint(_pointwise, s, t, temperature, kind, beta, use_reentrant=False)
        else:
            per_row = _pointwise(s, t, temperature, kind, beta)
        total = total + per_row.sum()
    denom = num_items if num_items is not None else n
    return temperature ** 2 * total / denom


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i -> teacher layer round((i + 1) * n_teacher / n_student) - 1 (last maps to last)."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def check_layer_map(layer_map: list[int], n_student: int, n_teacher: int) -> None:
    if len(layer_map) != n_student:
        raise ValueError(f"layer_map: {len(layer_map)} entries for a student of {n_student} layers")
    bad = [t for t in layer_map if not 0 <= t < n_teacher]
    if bad:
        raise ValueError(f"layer_map: teacher layers {bad} out of range [0, {n_teacher})")


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor,
                      kind: str = "mse", projection: nn.Module | None = None) -> torch.Tensor:
    """One mapped layer pair, over masked positions.

    mse: mean squared error divided by the teacher states' mean square (detached): Gemma scales its
    embeddings by sqrt(hidden), so raw MSE would grow with width and dwarf the other terms; the
    normalised loss is scale free (1.0 = as far as predicting zeros). cosine: mean (1 - cos).
    """
    mask = mask.bool()
    if not mask.any():
        return _zero(student_hidden)
    s = student_hidden[mask].float()
    t = teacher_hidden[mask].float().detach()
    if projection is not None:
        s = projection(s)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(f"hidden sizes differ (student {s.shape[-1]}, teacher {t.shape[-1]}): pass a projection")
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if kind != "mse":
        raise ValueError(f"hidden_loss: got {kind!r}; expected mse or cosine")
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)


def hidden_losses(student_hiddens, teacher_hiddens, layer_map: list[int], mask: torch.Tensor,
                  kind: str = "mse", projection: nn.Module | None = None) -> torch.Tensor:
    """Mean over student layers of the loss against the mapped teacher layer.

    HF's `hidden_states[i + 1]` is layer i's output (index 0 is the embeddings); the last entry is
    after the final norm in Llama/Gemma, which both sides share, so the pairing stays like for like.
    """
    check_layer_map(layer_map, len(student_hiddens) - 1, len(teacher_hiddens) - 1)
    terms = [hidden_state_loss(student_hiddens[i + 1], teacher_hiddens[t + 1], mask, kind, projection)
             for i, t in enumerate(layer_map)]
    return torch.stack(terms).mean()


class HiddenProjection(nn.Module):
    """A learned linear map from the student's width to the teacher's, trained with the student."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.linear = nn.Linear(student_dim, teacher_dim, bias=False)
        # Identity when widths match, else a semi-orthogonal map: norms are kept from the first step,
        # so the hidden term starts at a meaningful size instead of the noise of a random init.
        with torch.no_grad():
            if student_dim == teacher_dim:
                self.linear.weight.copy_(torch.eye(teacher_dim))
            else:
                nn.init.orthogonal_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / PROJECTION_FILE
        w = self.linear.weight
        save_file({"weight": w.detach().cpu().contiguous()}, str(path),
                  metadata={"student_dim": str(w.shape[1]), "teacher_dim": str(w.shape[0])})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "HiddenProjection":
        from safetensors import safe_open

        with safe_open(str(Path(folder) / PROJECTION_FILE), framework="pt") as fh:
            meta = fh.metadata()
            weight = fh.get_tensor("weight")
        proj = cls(int(meta["student_dim"]), int(meta["teacher_dim"]))
        with torch.no_grad():
            proj.linear.weight.copy_(weight)
        return proj


def total_loss(ce, kd, hidden, alpha_ce: float, gamma_kl: float, beta_mse: float) -> torch.Tensor:
    """alpha_ce CE + gamma_kl KD + beta_mse hidden; callers skip (pass None for) terms whose weight is 0."""
    parts = [w * t for w, t in ((alpha_ce, ce), (gamma_kl, kd), (beta_mse, hidden)) if t is not None and w]
    if not parts:
        raise ValueError("no loss term: every weight is 0 or every term was skipped")
    return torch.stack(parts).sum() if len(parts) > 1 else parts[0]
