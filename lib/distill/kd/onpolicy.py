"""On-policy distillation (GKD, Agarwal et al., arXiv 2306.13649): the student answers a batch's prompts itself and
learns from the teacher's distribution on the tokens it sampled, the mistakes it makes included.

TRL implements it as `GKDTrainer` (trl/experimental/gkd); the names here are its `GKDConfig`'s: `lmbda` is the
fraction of training batches the student answers, `temperature` and `max_new_tokens` its sampling (with
`top_k = 0`, `top_p = 1`, as TRL samples). TRL's `beta` is the loss's divergence: 0 is `kind: forward_kl`, 1 is
`reverse_kl`, in between `jsd` with `jsd_beta = beta` (`losses.kd_divergence`).

Batches here are right-padded with labels aligned to `input_ids` (-100 on the prompt and padding): a row's prompt
is what precedes its first label.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OnPolicy:
    lmbda: float = 0.0  # fraction of training batches answered by the student (0 = off-policy only)
    temperature: float = 1.0  # the student's sampling temperature (not the divergence's)
    max_new_tokens: int = 16  # longest sampled answer
    pad_token_id: int = 0
    eos_token_id: int | list[int] | None = None  # a sampled answer ends after its first one (kept, as gold ends)

    def __post_init__(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda: got {self.lmbda}; the fraction of on-policy batches is in [0, 1]")
        if not self.temperature > 0:
            raise ValueError(f"temperature: got {self.temperature}; sampling needs a temperature > 0")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: got {self.max_new_tokens}; must be >= 1")


def prompts_of(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each row's prompt: its real tokens before its first answer label (all of them where it has none)."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        real = int(mask.sum())
        answer = (labels[:real] != -100).nonzero()
        out.append(ids[: int(answer[0]) if len(answer) else real])
    return out


def _eos_set(eos: int | list[int] | None) -> set[int]:
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def completion_batch(prompts: list[torch.Tensor], completions: torch.Tensor, eos_token_id, pad_token_id: int
                     ) -> dict[str, torch.Tensor]:
    """Right-padded rows of prompt + completion, each completion cut after its first eos; labels are -100 but on
    the completion's tokens (the rows a divergence on answers reads)."""
    stops = _eos_set(eos_token_id)
    rows = []
    for prompt, completion in zip(prompts, completions.tolist()):
        end = next((i + 1 for i, t in enumerate(completion) if t in stops), len(completion))
        rows.append((prompt.tolist(), completion[:end]))
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[r, :n] = torch.tensor(p + c, dtype=torch.long)
        mask[r, :n] = 1
        labels[r, len(p):n] = torch.tensor(c, dtype=torch.long)
    device = completions.device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def sample_answers(model, batch: dict[str, torch.Tensor], cfg: OnPolicy) -> dict[str, torch.Tensor]:
    """The batch with every row's answer replaced by one `model` samples from the row's prompt (in eval mode, no
    gradient; its mode is restored after). The prompts are left-padded for `generate`, the result right-padded."""
    prompts = prompts_of(batch)
    width = max(len(p) for p in prompts)
    device = batch["input_ids"].device
    ids = torch.full((len(prompts), width), cfg.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
        mask[r, width - len(p):] = 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                 pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id, use_cache=True)
    finally:
        model.train(was_training)
    return completion_batch(prompts, out[:, width:], cfg.eos_token_id, cfg.pad_token_id)
