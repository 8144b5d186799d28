"""Training a student of the study: from params to a trained adapter, in one process or on every rank of a launch.

`train` is one training run: TrainingArguments from params, the optimizer (student + projection), resume from the
run's own checkpoints, the best checkpoint saved. `train_student(p)` is one student's whole training (what the
pipeline's training stage runs): with `num_processes: 1` here; above that it launches `python -m distill
train-student <params>` on the ranks (`steps.launch`), and rank 0 writes the same `TrainingOutcome` the in-process
run returns. The notebook composes the same steps cell by cell.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from distill.core import procs
from distill.core.params import StudyParams, from_mapping
from distill.core.paths import atomic_folder, hash_config, write_text_atomic
from distill.kd import group, losses
from distill.kd.onpolicy import OnPolicy
from distill.kd.trainer import (
    ComponentLogCallback,
    ComponentMeter,
    DistillationTrainer,
    LossConfig,
    ProgressLineCallback,
    ProjectionCheckpointCallback,
    batch_loss,
    load_projection_into,
)
from distill.parts import data, models, sources
from distill.parts.data import ListDataset, TrainCollator
from distill.parts.teacher_cache import CachedTeacherCollator
from distill.study import launch, layout, steps

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
        use_cpu=launch.uses_cpu(p),
        gradient_checkpointing=p.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,  # ProgressLineCallback prints lines instead of a bar
    )


def train(p: StudyParams, student, tokenizer, train_features, eval_features, output_dir: Path, *,
          teacher=None, cfg: LossConfig, max_steps: int | None = None, learning_rate: float | None = None,
          projection=None, inputs: tuple[str, ...] = (), teacher_targets=None,
          onpolicy: OnPolicy | None = None) -> TrainResult:
    """Train `student` (LoRA or full) with the composite loss; keep and save the best checkpoint.

    A killed run resumes from its last complete checkpoint (optimizer, scheduler, RNG and data order
    restored by the Trainer) when that checkpoint was made with the same settings from the same input
    model folders (`inputs`); otherwise old checkpoints are removed and training starts over.
    `teacher_targets` (a teacher_cache.CachedTargets) puts the cached sparse targets into every batch; `onpolicy`
    has the student answer a fraction of the batches itself (`onpolicy_config`).
    """
    output_dir = Path(output_dir)
    if cfg.beta_mse > 0 and projection is None:
        raise ValueError("beta_mse > 0 needs a HiddenProjection")
    max_steps = max_steps or p.max_steps
    key = training_key(p, cfg, max_steps, learning_rate or p.learning_rate, inputs)
    needs_projection = projection is not None and cfg.beta_mse > 0
    if group.is_main():  # rank 0 tidies the folder; the others read it once it is done
        resume = resume_point(p, output_dir, key, needs_projection)
        if resume is None:
            clear_checkpoints(output_dir)  # never continue from checkpoints made with other settings or models
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / KEY_FILE, json.dumps(key, indent=1, default=str))
    group.barrier()
    if not group.is_main():
        resume = resume_point(p, output_dir, key, needs_projection)
    cfg.positions_per_answer_token = positions_per_answer_token(train_features)
    args = training_args(p, output_dir, max_steps, learning_rate or p.learning_rate,
                         evaluate=bool(eval_features))
    if group.fsdp_launched():
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
    collator = make_collator(tokenizer, cfg, teacher_targets)
    callbacks = [ComponentLogCallback(meter), ProgressLineCallback(f"{p.run_name} {output_dir.name}")]
    if projection is not None and cfg.beta_mse > 0:
        callbacks.append(ProjectionCheckpointCallback(projection))
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=ListDataset(train_features),
        eval_dataset=ListDataset(eval_features) if eval_features else None,
        data_collator=collator, teacher=teacher, teacher_placement=p.teacher_placement, loss_config=cfg,
        projection=projection if cfg.beta_mse > 0 else None, meter=meter, onpolicy=onpolicy, callbacks=callbacks,
        **optimizer)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; ProgressLineCallback says it in a line
    if resume is not None and group.is_main():
        print(f"resuming {output_dir.name} from {resume.name} (same settings and input models)", flush=True)
    if resume is not None and projection is not None:
        load_projection_into(projection, resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    best = output_dir / "best"
    # FSDP and ZeRO-3 hold the weights in shards: every rank takes part in gathering them, rank 0 writes
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if group.is_main():
        write_log_history(trainer, output_dir / "log_history.json")
        save_trained(trainer.model, tokenizer, best, projection if cfg.beta_mse > 0 else None,
                     {"best_checkpoint": trainer.state.best_model_checkpoint,
                      "best_eval_loss": trainer.state.best_metric, "layer_map": cfg.layer_map,
                      "global_step": trainer.state.global_step, "processes": group.world()[1]},
                     state_dict=state_dict)
    group.barrier()
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


def write_log_history(trainer: Trainer, path: Path) -> None:
    write_text_atomic(path, json.dumps(trainer.state.log_history, indent=1))


# --------------------------------------------------------------------------------------------
# The steps of one student's training (notebook 01): the notebook runs them cell by cell, a launched rank
# runs them in `run`, in the same order (tests/test_notebooks.py holds the two to one list, STEPS).
# --------------------------------------------------------------------------------------------
OUTCOME_FILE = "training_outcome.json"
LAUNCH_PARAMS_FILE = "launch_params.json"
# what 01_distill and `run` call, in this order (steps.load_data, steps.load_student, steps.encode_training
# and the functions below)
STEPS = ("setup", "load_data", "load_student", "encode_training", "load_teacher_signal", "build_loss", "adapt", "fit")


@dataclass
class TeacherSignal:
    """What the teacher gives the student: a live teacher, its cached sparse targets, both, or neither."""
    model: Any  # the live teacher, frozen in eval() (None: not needed, or its targets come from the cache)
    targets: Any  # parts.teacher_cache.CachedTargets, or None
    vocab_size: int  # the vocabulary teacher and student share (padded embedding rows are sliced off)
    layers: int  # the teacher's decoder layers: the range of the layer map
    source: str  # where the divergence's targets come from, for the reader


@dataclass
class TrainingOutcome:
    """One student's training as the page shows it; rank 0 of a launch writes it for the launching kernel."""
    processes: int
    teacher_loaded: bool  # False: the divergence read the teacher cache, and no process loaded the teacher
    teacher_targets: str  # where the divergence's targets came from (TeacherSignal.source)
    recovery: str  # what happened to the recovery phase
    recovery_history: list[dict[str, Any]]
    history: list[dict[str, Any]]
    best_step: int | None
    best_metric: float | None
    global_step: int
    train_examples: int
    best_dir: str = ""

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> "TrainingOutcome":
        return cls(**json.loads(Path(path).read_text()))


def setup(p: StudyParams) -> torch.device:
    """Seeds and threads; the device this process trains on (a launched rank's own, or p.device)."""
    world = group.world()[1]
    models.setup_torch(p.seed, launch.threads_per_process(p) if world > 1 else p.torch_threads)
    if p.num_processes > 1 and world == 1:
        return torch.device("cpu")  # a kernel that launches the ranks leaves the accelerators to them
    return launch.rank_device(p)


def load_teacher_signal(p: StudyParams, tokenizer, student, device: torch.device) -> TeacherSignal:
    """The teacher as training reads it: cached sparse targets (`teacher_cache`) and/or the live teacher (for the
    dense divergence or the hidden states), checked to share the student's vocabulary. A kernel that launches
    ranks loads no live teacher: each rank loads its own."""
    targets = steps.cached_targets(p, tokenizer) if p.uses_teacher_cache else None
    signal = TeacherSignal(None, targets, len(tokenizer), len(models.decoder_layers(student)), "none (CE only)")
    if targets is not None:
        signal.source = (f"{p.teacher_cache} (k = {p.teacher_cache_k}) from the teacher cache "
                         f"{targets.view_path.parent.parent.name}, {len(targets.entries)} examples")
        signal.layers = models.config_layers(steps.teacher_source(p))  # the teacher's, not the student's
    if not p.needs_live_teacher:
        return signal
    world = group.world()[1]
    if p.num_processes > 1 and world == 1:
        signal.source = f"the live teacher, loaded by each of the {p.num_processes} processes"
        signal.layers = models.config_layers(steps.teacher_source(p))
        return signal
    teacher, teacher_tok = steps.load_teacher(p, device)
    signal.model = teacher
    signal.vocab_size = models.check_vocab_compatible(teacher_tok, tokenizer, teacher, student)
    signal.layers = len(models.decoder_layers(teacher))
    placement = f", {p.teacher_placement} over {world} processes" if world > 1 else ""
    signal.source = f"the live teacher{placement}" + (" (hidden states)" if targets is not None else "")
    return signal


def build_loss(p: StudyParams, student, signal: TeacherSignal, train_features) -> tuple[LossConfig, Any]:
    """The loss configuration (weights, temperature, divergence, positions, layer map) and, for the hidden-state
    term, the learned projection from the student's width to the teacher's (freshly initialised)."""
    pruned_from = getattr(student.config, "pruned_from_layers", None)
    cfg = loss_config(p, len(models.decoder_layers(student)), signal.layers, signal.vocab_size, pruned_from)
    cfg.positions_per_answer_token = positions_per_answer_token(train_features)
    projection = None
    if p.beta_mse > 0 and signal.model is not None:  # (a kernel that launches ranks: each rank makes its own)
        projection = losses.HiddenProjection(student.config.hidden_size,
                                             signal.model.config.hidden_size).to(student.device)
    return cfg, projection


def adapt(p: StudyParams, student):
    """The trainable student: a LoRA adapter on its attention and MLP linears (`use_lora`), or the full model."""
    if p.use_lora:
        return models.apply_lora(student, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules or None)
    return student


def parameter_counts(student, signal: TeacherSignal, projection=None) -> dict[str, int]:
    counts = {"student (total)": models.count_params(student), "student (trainable)": models.trainable_params(student)}
    if signal.model is not None:
        counts["teacher (as loaded)"] = models.count_params(signal.model)
    if projection is not None:
        counts["hidden projection (trainable)"] = sum(q.numel() for q in projection.parameters())
    return counts


def marked_example(tokenizer, feature: dict[str, Any], tail: int = 300) -> str:
    """One encoded example as text: the prompt's last `tail` characters, then the answer tokens in [[ ]]."""
    return (tokenizer.decode(feature["input_ids"][: feature["prompt_len"]])[-tail:] + " [[" +
            tokenizer.decode([t for t in feature["labels"] if t != -100]) + "]]")


def onpolicy_config(p: StudyParams, tokenizer) -> OnPolicy | None:
    """The on-policy batches' settings (GKD; TRL's GKDConfig names), or None when `lmbda` is 0."""
    if not p.lmbda:
        return None
    return OnPolicy(lmbda=p.lmbda, temperature=p.onpolicy_temperature, max_new_tokens=p.onpolicy_max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def make_collator(tokenizer, cfg: LossConfig, targets=None):
    """Pads a list of examples into a batch; with cached teacher targets and a divergence, adds them."""
    base = TrainCollator(tokenizer.pad_token_id)
    return CachedTeacherCollator(base, targets) if targets is not None and cfg.gamma_kl > 0 else base


def loss_on_batch(student, tokenizer, features, cfg: LossConfig, signal: TeacherSignal,
                  projection=None) -> dict[str, float]:
    """Every term of the composite loss on one batch, as a training step computes it, without a step.

    Re-run it with another configuration, e.g. `dataclasses.replace(cfg, temperature=4.0, kd_kind="reverse_kl")`.
    The student's random state and mode are left as they were, so training after it is the same as without it.
    """
    batch = {k: v.to(student.device) for k, v in make_collator(tokenizer, cfg, signal.targets)(list(features)).items()}
    needs_teacher = cfg.beta_mse > 0 or (cfg.gamma_kl > 0 and "teacher_ids" not in batch)
    if needs_teacher and signal.model is None:
        cfg = dataclasses.replace(cfg, gamma_kl=0.0 if "teacher_ids" not in batch else cfg.gamma_kl, beta_mse=0.0)
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            result = batch_loss(student, batch, cfg, teacher=signal.model, projection=projection)
    finally:
        student.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    weights = {"ce": cfg.alpha_ce, "kd": cfg.gamma_kl, "hidden": cfg.beta_mse}
    terms = {name: float(value) for name, value in result.terms.items()}
    return {**terms, **{f"weighted_{k}": weights[k] * v for k, v in terms.items()}, "total": float(result.loss)}


def fit(p: StudyParams, student, tokenizer, encoded: dict[str, Any], signal: TeacherSignal, cfg: LossConfig,
        projection=None) -> TrainingOutcome:
    """The recovery phase (when `recovery_steps` > 0) and the training on SQuAD answers; the best checkpoint saved
    to <run>/students/<variant>/best. A run killed after its recovery phase resumes from its last checkpoint."""
    out_dir = layout.variant_dir(p, p.variant)
    train_enc, eval_enc = encoded["train"], encoded["eval"]
    inputs = steps.training_inputs(p)
    resume_from = checkpoint_to_resume(p, out_dir, cfg, inputs, projection)
    recovery_history: list[dict[str, Any]] = []
    recovery = "no recovery phase"
    if p.recovery_steps and resume_from is None:
        pruned_from = getattr(student.config, "pruned_from_layers", None)
        n_student = len(models.decoder_layers(student))
        rec_cfg = loss_config(p.replace(distill_positions="all"), n_student, signal.layers, signal.vocab_size,
                              pruned_from)
        rec = train(p, student, tokenizer, encoded["recovery"], [], out_dir / "recovery", teacher=signal.model,
                    cfg=rec_cfg, max_steps=p.recovery_steps, projection=projection, inputs=inputs,
                    teacher_targets=signal.targets)
        student, recovery_history = rec.trainer.model, rec.log_history
        recovery = f"{p.recovery_steps} recovery steps on {len(encoded['recovery'])} contexts"
    elif p.recovery_steps:
        recovery = (f"resuming from {resume_from.name}: it holds the weights after the recovery phase and the steps "
                    "before it")
        recovery_history = read_log_history(out_dir / "recovery")
    result = train(p, student, tokenizer, train_enc.features, eval_enc.features, out_dir, teacher=signal.model,
                   cfg=cfg, projection=projection, inputs=inputs, teacher_targets=signal.targets,
                   onpolicy=onpolicy_config(p, tokenizer))
    state = result.trainer.state
    best_step = int(state.best_model_checkpoint.rsplit("-", 1)[1]) if state.best_model_checkpoint else None
    return TrainingOutcome(
        processes=group.world()[1], teacher_loaded=signal.model is not None, teacher_targets=signal.source,
        recovery=recovery, recovery_history=recovery_history, history=result.log_history,
        best_step=best_step, best_metric=state.best_metric, global_step=state.global_step,
        train_examples=len(train_enc.features), best_dir=str(result.best_dir))


def run(p: StudyParams) -> TrainingOutcome:
    """One student's training in this process (one rank of many): the notebook's steps, in its order."""
    device = setup(p)
    sets = steps.load_data(p)
    student, tokenizer = steps.load_student(p, device)
    encoded = steps.encode_training(p, tokenizer, sets)
    signal = load_teacher_signal(p, tokenizer, student, device)
    cfg, projection = build_loss(p, student, signal, encoded["train"].features)
    student = adapt(p, student)
    return fit(p, student, tokenizer, encoded, signal, cfg, projection)


def fit_on_ranks(p: StudyParams, stream=None) -> TrainingOutcome:
    """Launch p.num_processes ranks (`accelerate launch`), each running `run(p)`; rank 0's outcome comes back."""
    steps.training_inputs(p)  # packaged and tiny models are built here once, not by every rank at the same time
    out_dir = layout.variant_dir(p, p.variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome_file = out_dir / OUTCOME_FILE
    outcome_file.unlink(missing_ok=True)  # never read an earlier run's outcome after a failed launch
    params_file = out_dir / LAUNCH_PARAMS_FILE
    write_text_atomic(params_file, json.dumps(p.to_dict(), indent=1))
    launch.launch(p, ["train-student", str(params_file)], stream=stream)
    return TrainingOutcome.load(outcome_file)


def train_student(p: StudyParams, stream=None) -> TrainingOutcome:
    """Train `p.variant`'s student: here (`run`), or on p.num_processes launched ranks."""
    return run(p) if p.num_processes == 1 else fit_on_ranks(p, stream)


def rank_main(params_file: str) -> int:
    """One rank of a launched training: `python -m distill train-student <launch_params.json>`."""
    p = from_mapping(json.loads(Path(params_file).read_text()))
    procs.follow_launcher()
    outcome = run(p)
    if group.is_main():
        outcome.save(layout.variant_dir(p, p.variant) / OUTCOME_FILE)
    group.barrier()
    return 0


def finetune_teacher(p: StudyParams, rows, device: torch.device) -> dict[str, Any]:
    """Tune the teacher on SQuAD answers (CE only; LoRA merged after, or full) and save it for the study."""
    source = sources.resolve_source(p.teacher, p.squad_dir)
    tokenizer = models.load_tokenizer(source)
    model = models.load_model(source, dtype=p.model_dtype, device=device)
    if p.teacher_finetune_use_lora:
        model = models.apply_lora(model, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules or None)
    features = data.encode_examples(rows, tokenizer, p.max_length, p.seed).features
    cfg = loss_config(layout.variant_params(p, "ce_baseline").replace(alpha_ce=1.0), 1, 1, None)  # CE only
    work = p.run_dir / "teacher_finetune"
    result = train(p, model, tokenizer, features, [], work, cfg=cfg, max_steps=p.teacher_finetune_steps,
                   learning_rate=p.teacher_finetune_lr)
    tuned = result.trainer.model
    if p.teacher_finetune_use_lora:
        tuned = tuned.merge_and_unload()
    models.atomic_save_pretrained(tuned, tokenizer, layout.tuned_teacher_dir(p))
    return {"log_history": result.log_history, "examples": len(features), "steps": p.teacher_finetune_steps}
