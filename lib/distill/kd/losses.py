"""Loss terms of the study, as pure functions (plus the learned width projection they may use).

Every term computes in float32 whatever the input dtype, and a term whose mask selects nothing is
an exact zero that keeps the graph (never NaN).
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.autograd.function import once_differentiable

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")
HIDDEN_KINDS = ("mse", "cosine")
PROJECTION_FILE = "hidden_projection.safetensors"

# Stand-in for -inf logits (a masked vocabulary): the softmax is the same, but 0 * inf = NaN in the
# KL sums is avoided. Small enough that differences of two such log-probabilities stay finite.
_NEG_LOGIT = -1e30


def _zero(like: torch.Tensor) -> torch.Tensor:
    # Multiplying keeps `like` in the graph, so backward() works and gives zero gradients.
    return like.sum().float() * 0.0


def answer_ce(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Causal-LM cross-entropy: logits[:, t] predict labels[:, t + 1]; label -100 is ignored.

    The sum over valid tokens is divided by `num_items_in_batch` when given (the valid tokens of the
    whole accumulation window, as HF Trainer passes it, so accumulation is exact), else by this
    batch's count.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"answer_ce: logits {tuple(logits.shape)} and labels {tuple(labels.shape)}; "
                         "expected [B, T, V] and [B, T]")
    return token_ce(logits[:, :-1], labels[:, 1:], num_items_in_batch)


def token_ce(logits: torch.Tensor, targets: torch.Tensor, num_items=None) -> torch.Tensor:
    """Cross-entropy of logits [..., V] against aligned targets [...] (no shift here); target -100 is ignored.

    The sum over valid targets is divided by `num_items` when given, else by their count. This is the
    form for logits computed only at the rows a loss reads (`logits_to_keep`): [N, V] and [N].
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"token_ce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not line up "
                         "(expected [..., V] and [...])")
    targets = targets.to(logits.device)
    valid = targets != -100
    if not valid.any():
        return _zero(logits)
    # Gather the answer rows before upcasting: a float32 copy of all the logits is the big cost.
    rows = logits[valid].float()
    total = F.cross_entropy(rows, targets[valid], reduction="sum")
    denom = num_items if num_items is not None else valid.sum()
    return total / denom


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits if logits.dtype == torch.float64 else logits.float()  # at least float32 (bf16 logits are upcast)
    if temperature != 1.0:
        x = x / temperature
    neg_inf = torch.isneginf(x)
    if neg_inf.any():  # only then: masked_fill keeps a bool mask for backward
        x = x.masked_fill(neg_inf, _NEG_LOGIT)
    return F.log_softmax(x, dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _divergence_from_logs(log_s: torch.Tensor, log_t: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Sum over rows of D between two row-wise log-distributions (any number of outcomes)."""
    if kind == "forward_kl":
        return _kl_rows(log_t, log_s).sum()
    if kind == "reverse_kl":
        return _kl_rows(log_s, log_t).sum()
    # log m = logsumexp(log beta + log t, log(1 - beta) + log s): logaddexp is that two-term
    # logsumexp without stacking a [2, N, V] copy.
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    return (beta * _kl_rows(log_t, log_m) + (1.0 - beta) * _kl_rows(log_s, log_m)).sum()


def _divergence_sum(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float, kind: str,
                    beta: float) -> torch.Tensor:
    """Sum over the rows of [N, V] logits of D(row), float32, before the T^2 factor."""
    return _divergence_from_logs(_log_probs(s_logits, temperature), _log_probs(t_logits, temperature), kind, beta)


class _ChunkedDivergence(torch.autograd.Function):
    """Sum of `row_sum(student rows, row index)` over the rows (b_idx, t_idx) of [B, T, V] student logits,
    chunk_size rows at a time.

    Instead of torch.utils.checkpoint, each chunk's gradient is computed right away in forward and
    written into one buffer the size of the student logits (the gradient autograd would hand back
    anyway): nothing chunk-sized outlives its chunk, backward only scales the buffer, and no chunk
    is computed twice. (Checkpointed chunks would recompute, and joining their gradients costs a
    second logits-sized buffer.) Rows are gathered chunk by chunk, so no [N, V] copy is made. The
    teacher's side (dense logits or sparse targets) is fixed, read by `row_sum` through the row index.
    """
    @staticmethod
    def forward(ctx, student, row_sum, b_idx, t_idx, chunk_size):
        grad = torch.zeros_like(student) if ctx.needs_input_grad[0] else None
        parts = []
        for start in range(0, b_idx.numel(), chunk_size):
            rows = b_idx[start:start + chunk_size], t_idx[start:start + chunk_size]
            s = student[rows]
            if grad is None:
                parts.append(row_sum(s, rows))
                continue
            s = s.detach().requires_grad_(True)
            with torch.enable_grad():
                value = row_sum(s, rows)
                (grad_s,) = torch.autograd.grad(value, s)
            grad[rows] = grad_s
            parts.append(value.detach())
        ctx.grad = grad
        return torch.stack(parts).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("kd_divergence with chunk_size: backward through the same loss twice "
                               "(retain_graph=True) is not supported")
        return grad.mul_(grad_out), None, None, None, None


def _masked_rows(student_logits: torch.Tensor, mask: torch.Tensor, row_sum, chunk_size: int | None):
    """(sum of row_sum over the masked rows, n): chunked through _ChunkedDivergence when asked."""
    mask = mask.to(device=student_logits.device, dtype=torch.bool)
    n = int(mask.sum())
    if n == 0:
        return _zero(student_logits), 0
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    if chunk_size is not None and chunk_size < n:
        return _ChunkedDivergence.apply(student_logits, row_sum, b_idx, t_idx, chunk_size), n
    if n == mask.numel():  # every position: a view of the logits, no gathered [N, V] copy
        return row_sum(student_logits.reshape(n, -1), (b_idx, t_idx)), n
    return row_sum(student_logits[b_idx, t_idx], (b_idx, t_idx)), n


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5,
                  chunk_size: int | None = None, num_items=None, vocab_size: int | None = None) -> torch.Tensor:
    """Mean over masked positions of T^2 * D(t, s), t = softmax(teacher / T), s = softmax(student / T).

    Logits are `[batch, seq, vocab]` and already aligned (no shift here); `mask` is `[batch, seq]`.
    kind: forward_kl = KL(t||s); reverse_kl = KL(s||t); jsd = beta KL(t||m) + (1-beta) KL(s||m) with
    m = beta t + (1-beta) s (GKD's generalized JSD, 0 < beta < 1). The teacher is a fixed target
    (detached). `num_items` replaces the masked count as divisor (exact gradient accumulation).
    `vocab_size` compares only the first vocab_size columns (padded embedding rows differ between
    models). Only masked rows are used; `chunk_size` bounds the float32 work to chunk_size rows at a
    time, in backward too (see _ChunkedDivergence).
    """
    if kind not in KD_KINDS:
        raise ValueError(f"kind: got {kind!r}; expected one of {KD_KINDS}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta: got {beta}; the generalized JSD needs 0 < beta < 1 "
                         "(its limits are forward_kl and reverse_kl, use those kinds)")
    if not temperature > 0:
        raise ValueError(f"temperature: got {temperature}; must be > 0")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: got {chunk_size}; must be >= 1 or None")
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if v_s != v_t:
            raise ValueError(f"student vocab {v_s} != teacher vocab {v_t}: the logits have different widths; "
                             "pass vocab_size (the shared tokenizer size) to compare the first vocab_size columns")
    else:
        if not 0 < vocab_size <= min(v_s, v_t):
            raise ValueError(f"vocab_size {vocab_size} must be in [1, {min(v_s, v_t)}] "
                             f"(student vocab {v_s}, teacher vocab {v_t})")
        student_logits, teacher_logits = student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    if (student_logits.dim() != 3 or student_logits.shape[:-1] != teacher_logits.shape[:-1]
            or mask.shape != student_logits.shape[:-1]):
        raise ValueError(f"kd_divergence: student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)} and mask {tuple(mask.shape)} do not line up "
                         "(expected [B, T, V], [B, T, V] and [B, T])")
    mask = mask.to(device=student_logits.device, dtype=torch.bool)
    n = int(mask.sum())
    if n == 0:
        return _zero(student_logits)
    teacher_logits = teacher_logits.detach()
    if chunk_size is not None and chunk_size < n:
        b_idx, t_idx = mask.nonzero(as_tuple=True)
        total = _ChunkedDivergence.apply(
            student_logits, lambda s, rows: _divergence_sum(s, teacher_logits[rows], temperature, kind, beta),
            b_idx, t_idx, chunk_size)
    else:
        vocab = student_logits.shape[-1]
        if n == mask.numel():  # every position: reshape is a view for contiguous logits, no gathered copy
            s_rows, t_rows = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
        else:
            s_rows, t_rows = student_logits[mask], teacher_logits[mask]
        total = _divergence_sum(s_rows, t_rows, temperature, kind, beta)
    denom = num_items if num_items is not None else n
    return total * (temperature ** 2) / denom


SPARSE_TAILS = ("bucket", "renormalize")


def _kept_log_probs(s_rows: torch.Tensor, kept: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(s / T) at the kept ids only: one logsumexp over the vocabulary, no [N, V] log-probabilities."""
    x = s_rows.float()
    if temperature != 1.0:
        x = x / temperature
    return x.gather(-1, kept) - torch.logsumexp(x, -1, keepdim=True)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012); exp(x) >= 1 (rounding) gives the
    stand-in for log 0."""
    x = x.clamp_max(0.0)
    out = torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return torch.where(torch.isfinite(out), out, torch.full_like(out, _NEG_LOGIT))


def _check_sparse(student_logits, teacher_ids, teacher_logprobs, mask, temperature, chunk_size, name):
    if not temperature > 0:
        raise ValueError(f"temperature: got {temperature}; must be > 0")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: got {chunk_size}; must be >= 1 or None")
    if (student_logits.dim() != 3 or teacher_ids.dim() != 3 or teacher_ids.shape != teacher_logprobs.shape
            or teacher_ids.shape[:2] != student_logits.shape[:2] or mask.shape != student_logits.shape[:2]):
        raise ValueError(f"{name}: student {tuple(student_logits.shape)}, teacher ids {tuple(teacher_ids.shape)}, "
                         f"teacher log-probs {tuple(teacher_logprobs.shape)} and mask {tuple(mask.shape)} do not "
                         "line up (expected [B, T, V], [B, T, k], [B, T, k] and [B, T])")
    if teacher_ids.dtype.is_floating_point:
        raise ValueError(f"{name}: teacher_ids must be integer token ids, got {teacher_ids.dtype}")


def sparse_kd_divergence(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                         mask: torch.Tensor, temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5,
                         tail: str = "bucket", chunk_size: int | None = None, num_items=None) -> torch.Tensor:
    """Mean over masked positions of T^2 * D(t, s) from a sparse teacher: its k kept tokens per position.

    `teacher_ids` [B, T, k] are the kept token ids (distinct within a position) and `teacher_logprobs`
    [B, T, k] the teacher's log-softmax at temperature T over its full vocabulary, at those ids (what
    the teacher cache stores); `student_logits` [B, T, V] are softened by the same T here.

    tail="bucket": D over k + 1 outcomes, the kept tokens plus one bucket holding the rest of the mass on
    each side (teacher: 1 - sum of its kept p; student: the softmax mass of every id not kept). No mass
    is dropped, so the student is also pushed to put the teacher's leftover mass outside the kept ids.
    tail="renormalize": both distributions restricted to the kept ids and renormalised (what top-k
    caches in DistillKit-style tools do); it ignores how much mass either puts elsewhere.
    With k = V (every id kept) both equal `kd_divergence`. kind, beta and num_items are as there.
    """
    if kind not in KD_KINDS:
        raise ValueError(f"kind: got {kind!r}; expected one of {KD_KINDS}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta: got {beta}; the generalized JSD needs 0 < beta < 1")
    if tail not in SPARSE_TAILS:
        raise ValueError(f"tail: got {tail!r}; expected one of {SPARSE_TAILS}")
    _check_sparse(student_logits, teacher_ids, teacher_logprobs, mask, temperature, chunk_size,
                  "sparse_kd_divergence")
    ids = teacher_ids.to(student_logits.device).long()
    t_lp = teacher_logprobs.detach().to(student_logits.device).float()

    def row_sum(s_rows: torch.Tensor, rows) -> torch.Tensor:
        kept = ids[rows]
        log_s = _kept_log_probs(s_rows, kept, temperature)
        log_t = t_lp[rows]
        if tail == "renormalize":
            log_s = log_s - torch.logsumexp(log_s, -1, keepdim=True)
            log_t = log_t - torch.logsumexp(log_t, -1, keepdim=True)
            return _divergence_from_logs(log_s, log_t, kind, beta)
        if kept.shape[-1] >= s_rows.shape[-1]:  # every id kept (ids are distinct): both buckets are empty
            return _divergence_from_logs(log_s, log_t, kind, beta)
        # the mass outside the kept ids, log(1 - sum p), from the kept log-probabilities alone (no second pass
        # over the vocabulary)
        s_rest = _log1mexp(torch.logsumexp(log_s, -1, keepdim=True))
        t_rest = _log1mexp(torch.logsumexp(log_t, -1, keepdim=True))
        return _divergence_from_logs(torch.cat([log_s, s_rest], -1), torch.cat([log_t, t_rest], -1), kind, beta)

    total, n = _masked_rows(student_logits, mask, row_sum, chunk_size)
    if n == 0:
        return total
    denom = num_items if num_items is not None else n
    return total * (temperature ** 2) / denom


def sampled_kd_divergence(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                          counts: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
                          chunk_size: int | None = None, num_items=None) -> torch.Tensor:
    """Forward KL from tokens sampled from the teacher: a Monte Carlo estimate of T^2 KL(t || s), unbiased.

    At each position the cache drew N tokens x_1..x_N from t = softmax(teacher / T) and stored the distinct
    ids with their `counts` c (sum over kept ids = N; zero counts pad unused slots) and their teacher
    log-probabilities log t(x). The estimator is

        KL(t || s) = E_{x ~ t}[log t(x) - log s(x)]  ~=  (1 / N) sum_i c_i (log t(x_i) - log s(x_i))

    (importance weights are 1: the proposal is the teacher itself). Its gradient, -(1/N) sum_i c_i
    grad log s(x_i), is an unbiased estimate of the full forward-KL gradient, and unlike top-k targets
    it is unbiased for the tail too (Anshumann et al., "Sparse Logit Sampling", ACL 2025). A single
    position's estimate can be below 0; only its mean is the KL. Only forward KL has this estimator.
    """
    _check_sparse(student_logits, teacher_ids, teacher_logprobs, mask, temperature, chunk_size,
                  "sampled_kd_divergence")
    if counts.shape != teacher_ids.shape:
        raise ValueError(f"sampled_kd_divergence: counts {tuple(counts.shape)} must match teacher ids "
                         f"{tuple(teacher_ids.shape)}")
    ids = teacher_ids.to(student_logits.device).long()
    t_lp = teacher_logprobs.detach().to(student_logits.device).float()
    weights = counts.to(student_logits.device).float()
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1.0)

    def row_sum(s_rows: torch.Tensor, rows) -> torch.Tensor:
        log_s = _kept_log_probs(s_rows, ids[rows], temperature)
        w = weights[rows]
        return (w * (t_lp[rows].masked_fill(w == 0, 0.0) - log_s)).sum()

    total, n = _masked_rows(student_logits, mask, row_sum, chunk_size)
    if n == 0:
        return total
    denom = num_items if num_items is not None else n
    return total * (temperature ** 2) / denom


def loss_rows(labels: torch.Tensor, attention: torch.Tensor, distill_positions: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(next_labels, answer_rows, kd_rows) of a batch, each [B, T]: row t of the logits predicts token t + 1.

    `next_labels` lines the targets up with the rows, so a model computes its vocabulary projection only at the
    rows a loss reads (`logits_to_keep` as a [B, T] mask; the logits come back as [rows, V]). `answer_rows` are
    the rows that predict an answer token; `kd_rows` those the teacher terms read: the answer rows, or every
    prediction of a real token (prompt included) for distill_positions "all".
    """
    next_labels = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], 1)
    answer_rows = next_labels != -100
    if distill_positions == "answer":
        return next_labels, answer_rows, answer_rows
    real = attention.bool()
    return next_labels, answer_rows, torch.cat([real[:, 1:] & real[:, :-1], torch.zeros_like(real[:, :1])], 1)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Student layer i -> teacher layer round((i + 1) * n_teacher / n_student) - 1.

    Python's round (halves go to the even integer: (4, 6) gives [1, 2, 3, 5]). The last student
    layer maps to the last teacher layer; a student deeper than its teacher maps its first layers
    to teacher layer 0 (the formula would give -1 there).
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"layer counts must be >= 1: student {n_student}, teacher {n_teacher}")
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def check_layer_map(layer_map, n_student: int, n_teacher: int) -> None:
    """Raise ValueError unless `layer_map` gives each of n_student layers a teacher layer in [0, n_teacher)."""
    if len(layer_map) != n_student:
        raise ValueError(f"layer_map has {len(layer_map)} entries for a student of {n_student} layers")
    try:
        idx = [operator.index(t) for t in layer_map]
    except TypeError:
        raise ValueError(f"layer_map entries must be integers: {list(layer_map)}") from None
    bad = [t for t in idx if not 0 <= t < n_teacher]
    if bad:
        raise ValueError(f"layer_map: teacher layers {bad} out of range [0, {n_teacher}) "
                         f"for a teacher of {n_teacher} layers")


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor,
                      kind: str = "mse", projection: nn.Module | None = None) -> torch.Tensor:
    """Distance between one mapped pair of hidden states `[B, T, D]` over masked positions (float32).

    The student is first mapped to the teacher's width by `projection` when given. mse: mean over
    masked positions of mean_d (s - t)^2, divided by the mean square of the (detached) teacher
    states over those positions. Gemma multiplies its embeddings by sqrt(hidden), so raw MSE scales
    with the model's width and would dwarf the other terms; the normalised loss is scale-free
    (1.0 = no better than predicting zeros). cosine: mean over masked positions of 1 - cos(s, t).
    """
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"hidden loss kind: got {kind!r}; expected one of {HIDDEN_KINDS}")
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1] or mask.shape != student_hidden.shape[:-1]:
        raise ValueError(f"hidden_state_loss: student {tuple(student_hidden.shape)}, teacher "
                         f"{tuple(teacher_hidden.shape)} and mask {tuple(mask.shape)} do not line up")
    mask = mask.to(device=student_hidden.device, dtype=torch.bool)
    s = student_hidden[mask].float()
    t = teacher_hidden[mask].detach().float()
    if projection is not None:
        # Run even on zero rows, so a wrong width is reported whether or not the mask selects anything.
        weight = next(projection.parameters(), None)
        s = projection(s if weight is None else s.to(weight.dtype)).float()
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(f"hidden widths differ (student {s.shape[-1]}, teacher {t.shape[-1]}): "
                         "pass a projection (e.g. HiddenProjection(student_dim, teacher_dim))")
    if s.shape[0] == 0:
        return _zero(student_hidden)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    scale = t.pow(2).mean().clamp(min=torch.finfo(torch.float32).tiny)
    return (s - t).pow(2).mean() / scale


def hidden_losses(student_hiddens, teacher_hiddens, layer_map, mask: torch.Tensor, kind: str = "mse",
                  projection: nn.Module | None = None) -> torch.Tensor:
    """Mean over student layers i of hidden_state_loss(student layer i, teacher layer layer_map[i]).

    The inputs are HF's `hidden_states` tuples (output_hidden_states=True); one projection is shared.
    """
    # HF: index 0 is the embeddings and index i + 1 the output of layer i. The last entry is taken
    # after the final norm in most models (transformers ties it to last_hidden_state), so mapping the
    # last student layer to the last teacher layer (as uniform_layer_map does) compares post-norm
    # with post-norm; other maps onto the last teacher layer compare pre- with post-norm states.
    n_student, n_teacher = len(student_hiddens) - 1, len(teacher_hiddens) - 1
    check_layer_map(layer_map, n_student, n_teacher)
    terms = []
    for i, t in enumerate(layer_map):
        s_h, t_h = student_hiddens[i + 1], teacher_hiddens[t + 1]
        if s_h is None or t_h is None:  # transformers can return None for unselected layers
            raise ValueError(f"hidden state missing for student layer {i} or teacher layer {t}: "
                             "request all hidden states (output_hidden_states=True)")
        terms.append(hidden_state_loss(s_h, t_h, mask, kind, projection))
    return torch.stack(terms).mean()


class HiddenProjection(nn.Module):
    """Learned linear map from the student's hidden width to the teacher's (no bias)."""
    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.linear = nn.Linear(student_dim, teacher_dim, bias=False)
        # Identity for equal widths; else (semi-)orthogonal, an isometry onto (or off) the wider space.
        # Either way the projected states keep the student's norms and geometry from step 0, so the
        # hidden term starts at a meaningful size instead of the noise of a random init.
        with torch.no_grad():
            if student_dim == teacher_dim:
                self.linear.weight.copy_(torch.eye(teacher_dim))
            else:
                nn.init.orthogonal_(self.linear.weight)

    @property
    def student_dim(self) -> int:
        return self.linear.in_features

    @property
    def teacher_dim(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype))

    def save(self, folder: str | Path) -> Path:
        """Write `hidden_projection.safetensors` into `folder` (widths in its metadata); returns the file."""
        path = Path(folder) / PROJECTION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.linear.weight.detach().cpu().contiguous()}, str(path),
                  metadata={"student_dim": str(self.student_dim), "teacher_dim": str(self.teacher_dim)})
        return path

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "HiddenProjection":
        """Read what `save` wrote into `folder` (the saved dtype is kept)."""
        path = Path(folder) / PROJECTION_FILE
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            weight = fh.get_tensor("weight")
        try:
            dims = int(meta["student_dim"]), int(meta["teacher_dim"])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: metadata lacks student_dim/teacher_dim: {meta}") from None
        if tuple(weight.shape) != (dims[1], dims[0]):
            raise ValueError(f"{path}: weight {tuple(weight.shape)} does not match metadata widths {dims}")
        proj = cls(*dims).to(weight.dtype)
        with torch.no_grad():
            proj.linear.weight.copy_(weight)
        return proj.to(device)


def total_loss(ce, kd, hidden, alpha_ce: float, gamma_kl: float, beta_mse: float) -> torch.Tensor:
    """alpha_ce * ce + gamma_kl * kd + beta_mse * hidden.

    Callers skip computing a term whose weight is 0 (no teacher forward, no hidden states) and pass
    None for it; None terms count as 0, and a term with weight 0 is ignored even if given (so a
    NaN there cannot leak in as 0 * NaN). With nothing left, a constant 0.
    """
    total = None
    for weight, term in ((alpha_ce, ce), (gamma_kl, kd), (beta_mse, hidden)):
        if term is None or weight == 0:
            continue
        total = weight * term if total is None else total + weight * term
    return total if total is not None else torch.zeros(())
