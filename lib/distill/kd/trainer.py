"""The DistillationTrainer: a Hugging Face Trainer whose `compute_loss` adds teacher terms.

`batch_loss` is the composite loss of one batch (what a training step computes; a notebook calls it on one batch
before training to see each term); `onpolicy_batch_loss` is GKD's on-policy step, taken on a fraction `lmbda` of
the training batches (`onpolicy.OnPolicy`). Everything else (logging the components, saving the projection, NaN stops) is done by callbacks,
so the Trainer's own loop, checkpointing and gradient accumulation stay untouched.
"""
from __future__ import annotations

import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from distill.kd import group, losses
from distill.kd.losses import HiddenProjection
from distill.kd.onpolicy import OnPolicy, sample_answers

# every component the meter may hold, in one order on every rank (a rank without eval batches still joins the sum);
# "onpolicy" counts the micro-batches the student answered itself, "onpolicy_kd" is their divergence
COMPONENTS = ("ce", "kd", "hidden", "onpolicy_kd", "total", "weighted_ce", "weighted_kd", "weighted_hidden",
              "weighted_onpolicy_kd", "onpolicy")


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

    def pop(self, mode: str, divisor: float | None = None, device=None) -> dict[str, float]:
        """Each component's sum over the processes, divided by `divisor` (None: the batches of all processes).

        On N processes the train terms of a rank are its share of the global sum (normalised by the whole
        window's answer tokens), so their sum over the ranks is what one process logs.
        """
        sums = self.sums[mode]
        values = [sums.get(k, 0.0) for k in COMPONENTS] + [float(k in sums) for k in COMPONENTS] + \
            [float(self.batches[mode])]
        values = group.all_reduce_sum(values, device)
        n = len(COMPONENTS)
        divisor = values[-1] if divisor is None else divisor
        out = {k: values[i] / max(divisor, 1) for i, k in enumerate(COMPONENTS) if values[n + i] > 0}
        self.sums[mode] = defaultdict(float)
        self.batches[mode] = 0
        return out


@dataclass
class BatchLoss:
    loss: torch.Tensor  # alpha_ce x CE + gamma_kl x KD + beta_mse x hidden (a zero weight's term is not computed)
    terms: dict[str, torch.Tensor]  # each computed term, unweighted
    outputs: Any  # the student's forward outputs


def batch_loss(model, inputs: dict[str, torch.Tensor], cfg: LossConfig, *, teacher=None, projection=None,
               evaluating: bool = False, num_items_in_batch=None) -> BatchLoss:
    """The composite loss of one batch: the student's forward at the rows a term reads, the frozen teacher's under
    `no_grad` (or its cached sparse targets, `teacher_ids` in the batch), and each term.

    CE and KD are sums over the accumulation window divided by its answer tokens (`num_items_in_batch`), so
    gradient accumulation is exact; `evaluating` takes a per-batch mean and always measures the answer CE.
    """
    labels, attention = inputs["labels"], inputs["attention_mask"]
    need_hidden = cfg.beta_mse > 0
    next_labels, answer_rows, kd_rows = losses.loss_rows(labels, attention, cfg.distill_positions)
    want_ce = cfg.alpha_ce > 0 or evaluating  # eval measures the answer CE even at alpha_ce 0
    want_kd = cfg.gamma_kl > 0
    keep = (answer_rows & want_ce) | (kd_rows & want_kd)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=attention, logits_to_keep=keep,
                    output_hidden_states=need_hidden, use_cache=False)
    logits = outputs.logits  # [rows of keep, V], in keep's row-major order
    n_items = answer_rows.sum()
    # eval: a per-batch mean, as one process has it (the Trainer passes eval the tokens of every rank's batch)
    total_items = num_items_in_batch if num_items_in_batch is not None and not evaluating else n_items
    # The hidden term is a per-batch normalised mean; each micro-batch weighs it by its share of the
    # window's answer tokens (CE and KD are sums over the window instead, hence exact).
    share = n_items / total_items.clamp(min=1) if torch.is_tensor(total_items) else n_items / max(total_items, 1)
    terms: dict[str, torch.Tensor] = {}
    if want_ce:
        terms["ce"] = losses.token_ce(logits, next_labels[keep], num_items=total_items)
    # Sparse teacher targets in the batch (a teacher cache: [B, T-1, k], aligned with the rows t < T - 1) replace
    # the teacher's logits; the teacher then runs only when the hidden-state term needs its states.
    sparse = "teacher_ids" in inputs
    if cfg.uses_teacher:
        t_out = None
        if not sparse or need_hidden:
            if teacher is None:
                raise ValueError("gamma_kl or beta_mse > 0 needs a teacher (or, for gamma_kl alone, cached "
                                 "teacher targets in the batch: teacher_cache)")
            with torch.no_grad():
                teacher.eval()
                t_out = teacher(input_ids=inputs["input_ids"], attention_mask=attention,
                                logits_to_keep=kd_rows if want_kd and not sparse else 1,
                                output_hidden_states=need_hidden, use_cache=False)
        if want_kd:
            # the student's KD rows among its kept rows; [1, N, V] with an all-true mask is the losses' [B, T, V]
            s_rows = logits if bool((keep == kd_rows).all()) else logits[kd_rows[keep]]
            s_rows = s_rows.unsqueeze(0)
            all_rows = torch.ones(s_rows.shape[:2], dtype=torch.bool, device=s_rows.device)
            per_item = 1.0 if cfg.distill_positions == "answer" else cfg.positions_per_answer_token
            common = dict(temperature=cfg.temperature, num_items=total_items * per_item,
                          chunk_size=cfg.kd_chunk_size)
            if sparse:
                cached = kd_rows[:, :-1]  # the last row predicts nothing; the cache stops at T - 1
                ids, logprobs = inputs["teacher_ids"][cached][None], inputs["teacher_logprobs"][cached][None]
                if "teacher_counts" in inputs:
                    terms["kd"] = losses.sampled_kd_divergence(
                        s_rows, ids, logprobs, inputs["teacher_counts"][cached][None], all_rows, **common)
                else:
                    terms["kd"] = losses.sparse_kd_divergence(
                        s_rows, ids, logprobs, all_rows, kind=cfg.kd_kind, beta=cfg.jsd_beta,
                        tail=cfg.sparse_tail, **common)
            else:
                terms["kd"] = losses.kd_divergence(
                    s_rows, t_out.logits.unsqueeze(0).to(s_rows.device), all_rows, kind=cfg.kd_kind,
                    beta=cfg.jsd_beta, vocab_size=cfg.vocab_size, **common)
        if need_hidden:
            hidden_mask = labels != -100 if cfg.distill_positions == "answer" else attention.bool()
            terms["hidden"] = share * losses.hidden_losses(
                outputs.hidden_states, tuple(h.to(logits.device) for h in t_out.hidden_states),
                cfg.layer_map, hidden_mask, kind=cfg.hidden_loss, projection=projection)
    loss = losses.total_loss(terms.get("ce"), terms.get("kd"), terms.get("hidden"),
                             cfg.alpha_ce, cfg.gamma_kl, cfg.beta_mse)
    return BatchLoss(loss, terms, outputs)


def onpolicy_batch_loss(model, generator, inputs: dict[str, torch.Tensor], cfg: LossConfig, onpolicy: OnPolicy, *,
                        teacher, num_items_in_batch=None) -> BatchLoss:
    """GKD's on-policy step: `generator` (the student, unwrapped from any DDP wrapper) samples every prompt's answer
    and the loss is gamma_kl x the divergence (cfg's kind, jsd_beta and temperature, x T^2) from the live teacher
    on the sampled tokens, through `model`. No CE (a sample is not a target) and no hidden term, as in TRL's
    GKDTrainer. It is a mean per sampled token weighted by the batch's share of the accumulation window's answer
    tokens (1 without accumulation), so an on-policy batch weighs what the gold batch it replaces would have."""
    if teacher is None:
        raise ValueError("on-policy distillation (lmbda > 0) needs the live teacher to score the student's samples")
    sampled = sample_answers(generator, inputs, onpolicy)
    n_gold = (inputs["labels"][:, 1:] != -100).sum().clamp(min=1)
    share = n_gold / num_items_in_batch if num_items_in_batch is not None else 1.0
    n_sampled = (sampled["labels"][:, 1:] != -100).sum().clamp(min=1)
    kd_cfg = replace(cfg, alpha_ce=0.0, beta_mse=0.0, distill_positions="answer")
    return batch_loss(model, sampled, kd_cfg, teacher=teacher, num_items_in_batch=n_sampled / share)


class DistillationTrainer(Trainer):
    """`alpha_ce * CE + gamma_kl * KD + beta_mse * hidden`; a zero weight skips its term (and the teacher).

    In evaluation the returned loss is the answer CE alone (what `eval_loss` and checkpoint selection see);
    every term and the weighted total are logged beside it. With `onpolicy.lmbda` > 0 a training batch is, with
    that probability, answered by the student and scored by the teacher instead (`onpolicy_batch_loss`); the draw
    uses Python's `random`, whose state the Trainer's checkpoints keep, so a resumed run draws as the whole one.
    """
    def __init__(self, *args, teacher=None, teacher_placement: str = "replicated", loss_config: LossConfig,
                 projection=None, meter: ComponentMeter | None = None, onpolicy: OnPolicy | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.onpolicy = onpolicy or OnPolicy()
        if self.onpolicy.lmbda > 0 and (teacher is None or loss_config.gamma_kl == 0):
            raise ValueError("lmbda > 0 (on-policy batches) needs gamma_kl > 0 and the live teacher to score the "
                             "student's samples")
        self.teacher = teacher
        self.projection = projection
        self.meter = meter or ComponentMeter()
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
            # replicated: each process loaded a whole teacher on its own device (study.load_teacher); sharded:
            # FSDP splits it between the processes like the student, gathering each layer for its forward
            if teacher_placement == "sharded" and self.accelerator.num_processes > 1:
                if not self.is_fsdp_enabled:
                    raise ValueError("teacher_placement: sharded needs FSDP on GPUs (configs/accelerate/"
                                     "gemma_fsdp_8gpu.yaml); with DDP, or on the CPU, use teacher_placement: replicated")
                self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        if loss_config.beta_mse > 0 and not loss_config.layer_map:
            raise ValueError("beta_mse > 0 needs a layer_map (see losses.uniform_layer_map)")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.loss_config
        mode = "train" if model.training else "eval"
        onpolicy = mode == "train" and self.onpolicy.lmbda > 0 and random.random() < self.onpolicy.lmbda
        if onpolicy:
            result = onpolicy_batch_loss(model, self.accelerator.unwrap_model(model), inputs, cfg, self.onpolicy,
                                         teacher=self.teacher, num_items_in_batch=num_items_in_batch)
            result.terms = {"onpolicy_kd": result.terms["kd"]}
        else:
            result = batch_loss(model, inputs, cfg, teacher=self.teacher, projection=self.projection,
                                evaluating=mode == "eval", num_items_in_batch=num_items_in_batch)
        terms, loss = result.terms, result.loss
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"loss term {name!r} became {value.item()} at step {self.state.global_step}: lower learning_rate, "
                    "check the data, or set its weight to 0")
        weights = {"ce": cfg.alpha_ce, "kd": cfg.gamma_kl, "hidden": cfg.beta_mse, "onpolicy_kd": cfg.gamma_kl}
        self.meter.add(mode, {**{k: float(v.detach()) for k, v in terms.items()},
                              "total": float(loss.detach()),
                              **{f"weighted_{k}": weights[k] * float(v.detach()) for k, v in terms.items()},
                              **({"onpolicy": float(onpolicy)} if self.onpolicy.lmbda > 0 and mode == "train" else {})})
        if mode == "train" and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # this rank's loss is its share of the global sum (num_items_in_batch counts every rank's tokens) and
            # DDP averages the ranks' gradients: scaling by N makes that average the gradient of the sum, as
            # Trainer.compute_loss does for models that take num_items_in_batch
            loss = loss * self.accelerator.num_processes
        if mode == "eval":
            # eval_loss picks the best checkpoint: the answer CE for every variant, so the distilled and the
            # CE-only students are selected on the same yardstick (the composite is logged as eval_total)
            loss = terms["ce"]
        return (loss, result.outputs) if return_outputs else loss


class ComponentLogCallback(TrainerCallback):
    """Adds each loss component to the entry the Trainer just appended to `log_history`."""
    def __init__(self, meter: ComponentMeter):
        self.meter = meter
        self.last_step = 0
        self.last_time = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_step = state.global_step  # a resumed run starts counting at its checkpoint's step
        self.last_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = state.log_history[-1] if state.log_history else None
        if entry is None:
            return
        # on_log runs on every rank at the same steps: the meters are summed over the ranks here
        if "eval_loss" in entry:
            comps = self.meter.pop("eval", device=args.device)
            entry.update({f"eval_{k}": v for k, v in comps.items()})
        elif "loss" in entry:
            # train sums hold whole optimizer steps (micro-batches already weighted by their share)
            comps = self.meter.pop("train", state.global_step - self.last_step, device=args.device)
            now = time.perf_counter()
            # wall time per optimizer step since the last log (an evaluation in between counts too)
            entry["step_seconds"] = (now - self.last_time) / max(state.global_step - self.last_step, 1)
            self.last_step, self.last_time = state.global_step, now
            entry.update({f"train_{k}": v for k, v in comps.items()})


class ProgressLineCallback(TrainerCallback):
    """One line per logging step on stderr: step / total, loss, elapsed and remaining time.

    A tqdm bar inside a notebook kernel reaches the terminal as a smear of carriage returns and lands in the
    executed notebook; plain lines stream cleanly (the runner forwards the kernel's stderr) and the rendered
    report leaves stderr out.
    """
    def __init__(self, label: str, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.start, self.first_step = 0.0, 0

    def _say(self, text: str) -> None:
        if not group.is_main():  # one line per step, not one per process
            return
        print(f"[{self.label}] {text}", file=self.stream, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.perf_counter(), state.global_step
        resumed = f" (resumed at step {state.global_step})" if state.global_step else ""
        self._say(f"training {state.max_steps} steps{resumed}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step, total = state.global_step, state.max_steps
        elapsed = time.perf_counter() - self.start
        done = step - self.first_step
        left = elapsed / done * (total - step) if done > 0 else float("nan")
        if "eval_loss" in logs:
            self._say(f"step {step}/{total}: eval loss {logs['eval_loss']:.4f}")
        elif "loss" in logs:
            self._say(f"step {step}/{total} ({100 * step / max(total, 1):.0f}%): loss {logs['loss']:.4f}, "
                      f"{_clock(elapsed)} elapsed, ~{_clock(left)} left")


def _clock(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class ProjectionCheckpointCallback(TrainerCallback):
    """Saves the hidden-state projection beside each checkpoint and restores the best one at the end; on N
    processes it averages the projection's gradients before each optimizer step (DDP wraps only the student)."""
    def __init__(self, projection):
        self.projection = projection

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        for q in self.projection.parameters():
            if q.grad is not None:
                torch.distributed.all_reduce(q.grad)
                q.grad.div_(world)

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            self.projection.save(ckpt)

    def on_train_end(self, args, state, control, **kwargs):
        if args.load_best_model_at_end and state.best_model_checkpoint:
            load_projection_into(self.projection, Path(state.best_model_checkpoint))


def load_projection_into(projection, folder: Path) -> bool:
    if not (folder / "hidden_projection.safetensors").exists():
        return False
    loaded = HiddenProjection.load(folder)
    projection.load_state_dict(loaded.state_dict())
    return True

