"""The DistillationTrainer: a Hugging Face Trainer whose `compute_loss` adds teacher terms.

Everything else (logging the components, saving the projection, NaN stops) is done by callbacks,
so the Trainer's own loop, checkpointing and gradient accumulation stay untouched.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from . import losses, paths


@dataclass
class LossConfig:
    alpha_ce: float = 1.0
    gamma_kl: float = 0.0
    beta_mse: float = 0.0
    temperature: float = 2.0
    kd_kind: str = "forward_kl"
    jsd_beta: float = 0.5
    kd_chunk_size: int | None = None  # rows of the divergence computed at a time; None = all
    distill_positions: str = "all"
    hidden_loss: str = "mse"
    layer_map: list[int] = field(default_factory=list)
    vocab_size: int | None = None  # the shared tokenizer vocabulary; padded embedding rows are sliced off
    sparse_tail: str = "bucket"  # a sparse (cached) teacher: how the mass outside its kept tokens counts
    # distill_positions "all": distilled positions per answer token over the training set. The KD sum is
    # divided by (answer tokens of the accumulation window x this constant), which is linear in the
    # micro-batches (so accumulation is exact) and close to a per-position mean.
    positions_per_answer_token: float = 1.0

    @property
    def uses_teacher(self) -> bool:
        return self.gamma_kl > 0 or self.beta_mse > 0


class ComponentMeter:
    """Running sums of each loss term, per mode; shared by the trainer and the logging callback."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self.batches = {"train": 0, "eval": 0}

    def add(self, mode: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[mode][k] += v
        self.batches[mode] += 1

    def pop(self, mode: str, divisor: float) -> dict[str, float]:
        out = {k: v / max(divisor, 1) for k, v in self.sums[mode].items()}
        self.sums[mode] = defaultdict(float)
        self.batches[mode] = 0
        return out


class DistillationTrainer(Trainer):
    """`alpha_ce * CE + gamma_kl * KD + beta_mse * hidden`; a zero weight skips its term (and the teacher).

    In evaluation the returned loss is the answer CE alone (what `eval_loss` and checkpoint selection see);
    every term and the weighted total are logged beside it.
    """

    def __init__(self, *args, teacher=None, loss_config: LossConfig, projection=None,
                 meter: ComponentMeter | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.teacher = teacher
        self.projection = projection
        self.meter = meter or ComponentMeter()
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
        if loss_config.beta_mse > 0 and not loss_config.layer_map:
            raise ValueError("beta_mse > 0 needs a layer_map (see losses.uniform_layer_map)")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.loss_config
        labels, attention = inputs["labels"], inputs["attention_mask"]
        need_hidden = cfg.beta_mse > 0
        outputs = model(input_ids=inputs["input_ids"], attention_mask=attention,
                        output_hidden_states=need_hidden, use_cache=False)
        target_mask = labels[:, 1:] != -100
        n_items = target_mask.sum()
        total_items = num_items_in_batch if num_items_in_batch is not None else n_items
        # The hidden term is a per-batch normalised mean; each micro-batch weighs it by its share of the
        # window's answer tokens (CE and KD are sums over the window instead, hence exact).
        share = n_items / total_items.clamp(min=1) if torch.is_tensor(total_items) else n_items / max(total_items, 1)
        terms: dict[str, torch.Tensor] = {}
        if cfg.alpha_ce > 0:
            terms["ce"] = losses.answer_ce(outputs.logits, labels, num_items_in_batch=total_items)
        # Sparse teacher targets in the batch (a teacher cache: [B, T-1, k], aligned with logits[:, :-1]) replace the
        # teacher's logits; the teacher then runs only when the hidden-state term needs its states.
        sparse = "teacher_ids" in inputs
        if cfg.uses_teacher:
            t_out = None
            if not sparse or need_hidden:
                if self.teacher is None:
                    raise ValueError("gamma_kl or beta_mse > 0 needs a teacher (or, for gamma_kl alone, cached "
                                     "teacher targets in the batch: teacher_cache)")
                with torch.no_grad():
                    self.teacher.eval()
                    t_out = self.teacher(input_ids=inputs["input_ids"], attention_mask=attention,
                                         output_hidden_states=need_hidden, use_cache=False)
            if cfg.distill_positions == "answer":
                kd_mask = target_mask
                hidden_mask = labels != -100
            else:  # every prediction of a real token, prompt included
                kd_mask = attention[:, 1:].bool() & attention[:, :-1].bool()
                hidden_mask = attention.bool()
            if cfg.gamma_kl > 0 and sparse:
                per_item = 1.0 if cfg.distill_positions == "answer" else cfg.positions_per_answer_token
                common = dict(temperature=cfg.temperature, num_items=total_items * per_item,
                              chunk_size=cfg.kd_chunk_size)
                if "teacher_counts" in inputs:
                    terms["kd"] = losses.sampled_kd_divergence(
                        outputs.logits[:, :-1], inputs["teacher_ids"], inputs["teacher_logprobs"],
                        inputs["teacher_counts"], kd_mask, **common)
                else:
                    terms["kd"] = losses.sparse_kd_divergence(
                        outputs.logits[:, :-1], inputs["teacher_ids"], inputs["teacher_logprobs"], kd_mask,
                        kind=cfg.kd_kind, beta=cfg.jsd_beta, tail=cfg.sparse_tail, **common)
            elif cfg.gamma_kl > 0:
                per_item = 1.0 if cfg.distill_positions == "answer" else cfg.positions_per_answer_token
                terms["kd"] = losses.kd_divergence(
                    outputs.logits[:, :-1], t_out.logits[:, :-1].to(outputs.logits.device), kd_mask,
                    temperature=cfg.temperature, kind=cfg.kd_kind, beta=cfg.jsd_beta, vocab_size=cfg.vocab_size,
                    num_items=total_items * per_item, chunk_size=cfg.kd_chunk_size)
            if cfg.beta_mse > 0:
                terms["hidden"] = share * losses.hidden_losses(
                    outputs.hidden_states, tuple(h.to(outputs.logits.device) for h in t_out.hidden_states),
                    cfg.layer_map, hidden_mask, kind=cfg.hidden_loss, projection=self.projection)
        mode = "train" if model.training else "eval"
        if mode == "eval" and "ce" not in terms:  # measured even at alpha_ce 0: checkpoints are chosen on it
            terms["ce"] = losses.answer_ce(outputs.logits, labels, num_items_in_batch=total_items)
        weights = {"ce": cfg.alpha_ce, "kd": cfg.gamma_kl, "hidden": cfg.beta_mse}
        step = self.state.global_step
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"loss term {name!r} became {value.item()} at step {step}: lower learning_rate, "
                    "check the data, or set its weight to 0")
        loss = losses.total_loss(terms.get("ce"), terms.get("kd"), terms.get("hidden"),
                                 cfg.alpha_ce, cfg.gamma_kl, cfg.beta_mse)
        self.meter.add(mode, {**{k: float(v.detach()) for k, v in terms.items()},
                              "total": float(loss.detach()),
                              **{f"weighted_{k}": weights[k] * float(v.detach()) for k, v in terms.items()}})
        if mode == "eval":
            # eval_loss picks the best checkpoint: the answer CE for every variant, so the distilled and the
            # CE-only students are selected on the same yardstick (the composite is logged as eval_total)
            loss = terms["ce"]
        return (loss, outputs) if return_outputs else loss


class ComponentLogCallback(TrainerCallback):
    """Adds each loss component to the entry the Trainer just appended to `log_history`."""

    def __init__(self, meter: ComponentMeter):
        self.meter = meter
        self.last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_step = state.global_step  # a resumed run starts counting at its checkpoint's step

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = state.log_history[-1] if state.log_history else None
        if entry is None:
            return
        if "eval_loss" in entry:
            comps = self.meter.pop("eval", self.meter.batches["eval"])
            entry.update({f"eval_{k}": v for k, v in comps.items()})
        elif "loss" in entry:
            # train sums hold whole optimizer steps (micro-batches already weighted by their share)
            comps = self.meter.pop("train", state.global_step - self.last_step)
            self.last_step = state.global_step
            entry.update({f"train_{k}": v for k, v in comps.items()})


class ProjectionCheckpointCallback(TrainerCallback):
    """Saves the hidden-state projection beside each checkpoint and restores the best one at the end."""

    def __init__(self, projection):
        self.projection = projection

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            self.projection.save(ckpt)

    def on_train_end(self, args, state, control, **kwargs):
        if args.load_best_model_at_end and state.best_model_checkpoint:
            load_projection_into(self.projection, Path(state.best_model_checkpoint))


def load_projection_into(projection, folder: Path) -> bool:
    from .losses import HiddenProjection

    if not (folder / "hidden_projection.safetensors").exists():
        return False
    loaded = HiddenProjection.load(folder)
    projection.load_state_dict(loaded.state_dict())
    return True


def last_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def write_log_history(trainer: Trainer, path: Path) -> None:
    paths.write_text_atomic(path, json.dumps(trainer.state.log_history, indent=1))
