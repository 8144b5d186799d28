"""One student's training (notebook 01), in one process or on every rank of a launch.

`train_student(p)` is what the notebook calls: with `num_processes: 1` it trains here; above that it launches
`python -m distill train-student <params>` on the ranks (`distributed.launch`), and rank 0 writes the same
`TrainingOutcome` the in-process run returns. The report is drawn from that outcome either way, so a
one-process and an N-process run show the same tables, loss curves and checkpoint choice.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data, distributed, losses, models, paths, study, training
from .params import StudyParams, from_mapping

OUTCOME_FILE = "training_outcome.json"
LAUNCH_PARAMS_FILE = "launch_params.json"


@dataclass
class TrainingOutcome:
    processes: int
    length_stats: dict[str, dict[str, float]]  # train / eval: data.length_stats plus windowed, dropped
    train_lengths: list[int]
    example: str  # one training example's prompt tail and [[answer]]
    parameters: dict[str, int]  # what was loaded and trained, in parameters
    teacher_loaded: bool  # False: the divergence read the teacher cache, and no process loaded the teacher
    teacher_targets: str  # where the divergence's targets came from
    layer_map: list[int]
    recovery: str  # what happened to the recovery phase
    recovery_history: list[dict[str, Any]]
    history: list[dict[str, Any]]
    best_step: int | None
    best_metric: float | None
    global_step: int
    train_examples: int
    best_dir: str = ""
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        paths.write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> "TrainingOutcome":
        return cls(**json.loads(Path(path).read_text()))


def train_student(p: StudyParams, stream=None) -> TrainingOutcome:
    """Train `p.variant`'s student: here, or on p.num_processes launched ranks."""
    if p.num_processes == 1:
        return run(p)
    out_dir = study.variant_dir(p, p.variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome_file = out_dir / OUTCOME_FILE
    outcome_file.unlink(missing_ok=True)  # never read an earlier run's outcome after a failed launch
    params_file = out_dir / LAUNCH_PARAMS_FILE
    paths.write_text_atomic(params_file, json.dumps(p.to_dict(), indent=1))
    distributed.launch(p, ["train-student", str(params_file)], stream=stream)
    return TrainingOutcome.load(outcome_file)


def rank_main(params_file: str) -> int:
    """One rank of a launched training: `python -m distill train-student <launch_params.json>`."""
    p = from_mapping(json.loads(Path(params_file).read_text()))
    distributed.follow_launcher()
    outcome = run(p)
    if distributed.is_main():
        outcome.save(study.variant_dir(p, p.variant) / OUTCOME_FILE)
    distributed.barrier()
    return 0


def run(p: StudyParams) -> TrainingOutcome:
    """Data, models, the recovery phase and the training of one student, in this process (one rank of many)."""
    world = distributed.world()[1]
    models.setup_torch(p.seed, distributed.threads_per_process(p) if world > 1 else p.torch_threads)
    device = distributed.rank_device(p)
    out_dir = study.variant_dir(p, p.variant)
    sets = study.load_data(p)
    student, tokenizer = study.load_student(p, device)
    encoded = study.encode_training(p, tokenizer, sets)
    train_enc, eval_enc = encoded["train"], encoded["eval"]
    stats = {name: {**data.length_stats(enc.lengths), "windowed": enc.windowed, "dropped": enc.dropped}
             for name, enc in (("train", train_enc), ("eval", eval_enc))}
    first = train_enc.features[0]
    example = (tokenizer.decode(first["input_ids"][: first["prompt_len"]])[-300:] + " [[" +
               tokenizer.decode([t for t in first["labels"] if t != -100]) + "]]")

    # the teacher is loaded only when a step needs it live; with a teacher cache its targets come from disk
    teacher = None
    vocab_size = len(tokenizer)
    n_student = n_teacher = len(models.decoder_layers(student))
    targets = study.cached_targets(p, tokenizer) if p.uses_teacher_cache else None
    source = "none (CE only)"
    if targets is not None:
        source = (f"{p.teacher_cache} (k = {p.teacher_cache_k}) from the teacher cache "
                  f"{targets.view_path.parent.parent.name}, {len(targets.entries)} examples")
    if p.needs_live_teacher:
        teacher, teacher_tok = study.load_teacher(p, device)
        vocab_size = models.check_vocab_compatible(teacher_tok, tokenizer, teacher, student)
        n_teacher = len(models.decoder_layers(teacher))
        placement = f", {p.teacher_placement} over {world} processes" if world > 1 else ""
        source = f"the live teacher{placement}" + (" (hidden states)" if targets is not None else "")
    pruned_from = getattr(student.config, "pruned_from_layers", None)
    cfg = training.loss_config(p, n_student, n_teacher, vocab_size, pruned_from)
    projection = None
    if p.beta_mse > 0:
        projection = losses.HiddenProjection(student.config.hidden_size, teacher.config.hidden_size).to(device)
    if p.use_lora:
        student = models.apply_lora(student, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules or None)
    parameters = {"student (total)": models.count_params(student), "student (trainable)": models.trainable_params(student)}
    if teacher is not None:
        parameters["teacher (as loaded)"] = models.count_params(teacher)
    if projection is not None:
        parameters["hidden projection (trainable)"] = sum(q.numel() for q in projection.parameters())

    inputs = study.training_inputs(p)
    resume_from = training.checkpoint_to_resume(p, out_dir, cfg, inputs, projection)
    recovery_history: list[dict[str, Any]] = []
    recovery = "no recovery phase"
    if p.recovery_steps and resume_from is None:
        rec_cfg = training.loss_config(p.replace(distill_positions="all"), n_student, n_teacher, vocab_size, pruned_from)
        rec = training.train(p, student, tokenizer, encoded["recovery"], [], out_dir / "recovery", teacher=teacher,
                             cfg=rec_cfg, max_steps=p.recovery_steps, projection=projection, inputs=inputs,
                             teacher_targets=targets)
        student, recovery_history = rec.trainer.model, rec.log_history
        recovery = f"{p.recovery_steps} recovery steps on {len(encoded['recovery'])} contexts"
    elif p.recovery_steps:
        recovery = (f"resuming from {resume_from.name}: it holds the weights after the recovery phase and the steps "
                    "before it")
        recovery_history = training.read_log_history(out_dir / "recovery")

    result = training.train(p, student, tokenizer, train_enc.features, eval_enc.features, out_dir, teacher=teacher,
                            cfg=cfg, projection=projection, inputs=inputs, teacher_targets=targets)
    state = result.trainer.state
    best_step = int(state.best_model_checkpoint.rsplit("-", 1)[1]) if state.best_model_checkpoint else None
    return TrainingOutcome(
        processes=world, length_stats=stats, train_lengths=list(train_enc.lengths), example=example,
        parameters=parameters, teacher_loaded=teacher is not None, teacher_targets=source,
        layer_map=list(cfg.layer_map), recovery=recovery, recovery_history=recovery_history,
        history=result.log_history, best_step=best_step, best_metric=state.best_metric,
        global_step=state.global_step, train_examples=len(train_enc.features), best_dir=str(result.best_dir))
