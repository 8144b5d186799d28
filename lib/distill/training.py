"""One training run: TrainingArguments from params, the optimizer (student + projection), resume, best save."""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback

from . import distributed, losses
from .data import ListDataset, TrainCollator
from .paths import atomic_folder, hash_config, write_text_atomic
from .params import StudyParams
from .trainer import (ComponentLogCallback, ComponentMeter, DistillationTrainer, LossConfig,
                      ProgressLineCallback, ProjectionCheckpointCallback, load_projection_into, write_log_history)

KEY_FILE = "training_key.json"
# keys that change no training step (what is scored, where things go, how fast the CPU runs)
NOT_TRAINING = {"run_name", "output_dir", "deploy_dir", "resume", "torch_threads", "bench_size", "max_new_tokens",
                "bench_batch_size", "bench_warmup", "qualitative_examples", "device"}


@dataclass
class TrainResult:
    trainer: DistillationTrainer
    log_history: list[dict[str, Any]]
    best_dir: Path
    resumed_from: Path | None


def loss_config(p: StudyParams, n_student_layers: int, n_teacher_layers: int, vocab_size: int | None,
                pruned_from: list[int] | None = None) -> LossConfig:
    """The loss settings; a student pruned from the teacher maps each layer to the one it was copied from.

    The layer map only matters (and is only checked) when the hidden-state term is on.
    """
    layer_map: list[int] = []
    if p.beta_mse > 0:
        layer_map = list(p.layer_map) or list(pruned_from or []) or losses.uniform_layer_map(n_student_layers,
                                                                                             n_teacher_layers)
        losses.check_layer_map(layer_map, n_student_layers, n_teacher_layers)
    return LossConfig(alpha_ce=p.alpha_ce, gamma_kl=p.gamma_kl, beta_mse=p.beta_mse, temperature=p.temperature,
                      kd_kind=p.kd_kind, jsd_beta=p.jsd_beta, kd_chunk_size=p.kd_chunk_size or None,
                      distill_positions=p.distill_positions, sparse_tail=p.kd_sparse_tail,
                      hidden_loss=p.hidden_loss, layer_map=layer_map, vocab_size=vocab_size)


def training_args(p: StudyParams, output_dir: Path, max_steps: int, learning_rate: float,
                  evaluate: bool = True) -> TrainingArguments:
    """The Trainer's arguments. batch_size is per process: N processes with batch size b and accumulation a
    train on the global batch b x N x a that one process makes with b and a x N, in the same order (rank r
    takes micro-batch r of each group of N), and evaluate the same batches."""
    eval_every = min(p.eval_steps, max_steps)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(p.warmup_ratio * max_steps),
        weight_decay=p.weight_decay,
        logging_steps=p.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_every,
        save_strategy="steps" if evaluate else "no",
        save_steps=eval_every,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        label_names=["labels"],
        remove_unused_columns=False,
        report_to=[],
        seed=p.seed,
        data_seed=p.seed,
        use_cpu=distributed.uses_cpu(p),
        gradient_checkpointing=p.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressLineCallback prints lines instead of a bar
    )


def train(p: StudyParams, student, tokenizer, train_features, eval_features, output_dir: Path, *,
          teacher=None, cfg: LossConfig, max_steps: int | None = None, learning_rate: float | None = None,
          projection=None, inputs: tuple[str, ...] = (), teacher_targets=None) -> TrainResult:
    """Train `student` (LoRA or full) with the composite loss; keep and save the best checkpoint.

    A killed run resumes from its last complete checkpoint (optimizer, scheduler, RNG and data order
    restored by the Trainer) when that checkpoint was made with the same settings from the same input
    model folders (`inputs`); otherwise old checkpoints are removed and training starts over.
    `teacher_targets` (a teacher_cache.CachedTargets) puts the cached sparse targets into every batch.
    """
    output_dir = Path(output_dir)
    if cfg.beta_mse > 0 and projection is None:
        raise ValueError("beta_mse > 0 needs a HiddenProjection")
    max_steps = max_steps or p.max_steps
    key = training_key(p, cfg, max_steps, learning_rate or p.learning_rate, inputs)
    needs_projection = projection is not None and cfg.beta_mse > 0
    if distributed.is_main():  # rank 0 tidies the folder; the others read it once it is done
        resume = resume_point(p, output_dir, key, needs_projection)
        if resume is None:
            clear_checkpoints(output_dir)  # never continue from checkpoints made with other settings or models
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / KEY_FILE, json.dumps(key, indent=1, default=str))
    distributed.barrier()
    if not distributed.is_main():
        resume = resume_point(p, output_dir, key, needs_projection)
    cfg.positions_per_answer_token = positions_per_answer_token(train_features)
    args = training_args(p, output_dir, max_steps, learning_rate or p.learning_rate,
                         evaluate=bool(eval_features))
    if distributed.fsdp_launched():
        # FSDP replaces the student's parameters when it shards them: the Trainer makes the optimizer after that
        if projection is not None and cfg.beta_mse > 0:
            raise ValueError("beta_mse > 0 under FSDP: the hidden projection lives outside the sharded student; use "
                             "configs/accelerate/ddp_gpu.yaml, or set beta_mse: 0")
        optimizer = {"optimizer_cls_and_kwargs": (torch.optim.AdamW, {"lr": args.learning_rate,
                                                                      "weight_decay": args.weight_decay})}
    else:
        params = [q for q in student.parameters() if q.requires_grad]
        if projection is not None and cfg.beta_mse > 0:
            params += list(projection.parameters())
        optimizer = {"optimizers": (torch.optim.AdamW(params, lr=args.learning_rate,
                                                      weight_decay=args.weight_decay), None)}
    meter = ComponentMeter()
    collator = TrainCollator(tokenizer.pad_token_id)
    if teacher_targets is not None and cfg.gamma_kl > 0:
        from .teacher_cache import CachedTeacherCollator

        collator = CachedTeacherCollator(collator, teacher_targets)
    callbacks = [ComponentLogCallback(meter), ProgressLineCallback(f"{p.run_name} {output_dir.name}")]
    if projection is not None and cfg.beta_mse > 0:
        callbacks.append(ProjectionCheckpointCallback(projection))
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=ListDataset(train_features),
        eval_dataset=ListDataset(eval_features) if eval_features else None,
        data_collator=collator, teacher=teacher, teacher_placement=p.teacher_placement, loss_config=cfg,
        projection=projection if cfg.beta_mse > 0 else None, meter=meter, callbacks=callbacks, **optimizer)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; ProgressLineCallback says it in a line
    if resume is not None and distributed.is_main():
        print(f"resuming {output_dir.name} from {resume.name} (same settings and input models)", flush=True)
    if resume is not None and projection is not None:
        load_projection_into(projection, resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    best = output_dir / "best"
    # FSDP and ZeRO-3 hold the weights in shards: every rank takes part in gathering them, rank 0 writes
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if distributed.is_main():
        write_log_history(trainer, output_dir / "log_history.json")
        save_trained(trainer.model, tokenizer, best, projection if cfg.beta_mse > 0 else None,
                     {"best_checkpoint": trainer.state.best_model_checkpoint,
                      "best_eval_loss": trainer.state.best_metric, "layer_map": cfg.layer_map,
                      "global_step": trainer.state.global_step, "processes": distributed.world()[1]},
                     state_dict=state_dict)
    distributed.barrier()
    return TrainResult(trainer, trainer.state.log_history, best, resume)


def folder_identity(folder: str | Path) -> list[Any]:
    """Names, sizes and modification times of a model folder's files: changes whenever the folder is re-made."""
    root = Path(folder)
    if not root.is_dir():
        return [str(folder)]  # a hub id or spec: its name is its identity
    return [[f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(root.rglob("*")) if f.is_file()]


def training_key(p: StudyParams, cfg: LossConfig, max_steps: int, learning_rate: float,
                 inputs: tuple[str, ...]) -> dict[str, Any]:
    settings = {k: v for k, v in p.to_dict().items() if k not in NOT_TRAINING}
    loss = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "positions_per_answer_token"}
    return {"settings": hash_config(settings), "loss": hash_config(loss), "max_steps": max_steps,
            "learning_rate": learning_rate, "inputs": hash_config([folder_identity(i) for i in inputs])}


def complete_checkpoint(ckpt: Path, needs_projection: bool) -> bool:
    """Only a checkpoint whose every file was written (a kill during a save leaves one without its state)."""
    state = ckpt / "trainer_state.json"
    optimizer = ckpt / "optimizer.pt"
    if not state.exists() or not optimizer.exists() or optimizer.stat().st_size == 0:
        return False
    try:
        json.loads(state.read_text())
    except ValueError:
        return False
    return not needs_projection or (ckpt / "hidden_projection.safetensors").exists()


def resume_point(p: StudyParams, output_dir: Path, key: dict[str, Any], needs_projection: bool) -> Path | None:
    """The checkpoint to continue from, or None (start over)."""
    if not p.resume or not (output_dir / KEY_FILE).exists():
        return None
    if json.loads((output_dir / KEY_FILE).read_text()) != json.loads(json.dumps(key, default=str)):
        return None
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]))
    complete = [c for c in ckpts if complete_checkpoint(c, needs_projection)]
    for c in ckpts:
        if c not in complete:
            shutil.rmtree(c, ignore_errors=True)  # half-written by a kill: never read again
    return complete[-1] if complete else None


def checkpoint_to_resume(p: StudyParams, output_dir: Path, cfg: LossConfig, inputs: tuple[str, ...],
                         projection=None) -> Path | None:
    """The checkpoint `train` would continue from with these arguments (None: it starts over)."""
    key = training_key(p, cfg, p.max_steps, p.learning_rate, inputs)
    return resume_point(p, Path(output_dir), key, needs_projection=projection is not None and cfg.beta_mse > 0)


def clear_checkpoints(output_dir: Path) -> None:
    for c in [*output_dir.glob("checkpoint-*"), output_dir / "best", output_dir / KEY_FILE,
              output_dir / "log_history.json"]:
        if c.is_dir():
            shutil.rmtree(c)
        elif c.exists():
            c.unlink()


def read_log_history(output_dir: Path) -> list[dict[str, Any]]:
    return json.loads((Path(output_dir) / "log_history.json").read_text())


def positions_per_answer_token(features) -> float:
    """Predicted real tokens per answer token over a training set (the KD normaliser for positions "all")."""
    positions = sum(len(f["input_ids"]) - 1 for f in features)
    answers = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in features)
    return positions / max(answers, 1)


def save_trained(model, tokenizer, folder: Path, projection=None, info: dict | None = None,
                 state_dict: dict | None = None) -> Path:
    """The adapter (or full student), tokenizer, projection and a small info file, written atomically
    (`state_dict`: the weights gathered from shards, when the model holds only its own)."""
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)
        if projection is not None:
            projection.save(tmp)
        (tmp / "training_info.json").write_text(json.dumps(info or {}, indent=1, default=str))
    return atomic_folder(build, Path(folder))
