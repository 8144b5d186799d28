"""The study's shared steps: the run's data subsets, its models as the study loads them, the encoded training
examples and the teacher cache's view of them.

Notebooks, training ranks and scoring stages call these, so every stage agrees on the same subsets and models
(where each thing lives is `study.layout`).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.core import paths
from distill.core.params import StudyParams
from distill.parts import data, models, pruning, sources, teacher_answers, teacher_cache
from distill.study import layout


@dataclass
class StudyData:
    """Disjoint, seeded subsets: SQuAD train for training, SQuAD validation for scoring."""
    eval_rows: list[dict[str, Any]]
    train_rows: list[dict[str, Any]]
    teacher_rows: list[dict[str, Any]]
    recovery_rows: list[dict[str, Any]]
    bench_rows: list[dict[str, Any]]
    answered_rows: list[dict[str, Any]]  # questions for the teacher to answer: no gold answers (data.question_only)


def load_data(p: StudyParams) -> StudyData:
    train = data.load_squad("train", p.squad_dir, p.data_pool_rows)
    teacher_n = p.teacher_finetune_train_size if p.teacher_finetune else 0
    # The teacher's examples come from the far end of the shuffle, so a student's train_size (a re-sized profile,
    # a capacity grid) never changes which examples tuned the teacher; students' subsets are prefixes.
    student_sizes = [p.eval_size, p.train_size, p.recovery_size]
    unused = max(0, len(train) - sum(student_sizes) - teacher_n)
    eval_rows, train_rows, recovery_rows, _, teacher_rows = data.disjoint_subsets(
        train, [*student_sizes, unused, teacher_n], p.seed)
    dev = data.load_squad("validation", p.squad_dir, p.data_pool_rows)
    (bench_rows,) = data.disjoint_subsets(dev, [p.bench_size], p.seed)
    return StudyData(eval_rows, train_rows, teacher_rows, recovery_rows, bench_rows,
                     answered_questions(p, train, {r["id"] for r in eval_rows + train_rows + recovery_rows}))


def answered_questions(p: StudyParams, train: list[dict[str, Any]], taken: set[str]) -> list[dict[str, Any]]:
    """The teacher-answered questions: from the far end of the shuffle that drew the teacher's tuning examples, just
    before them, skipping any this run's other subsets hold; the same questions for every seed of a grid or sweep
    (answered once). Their gold answers are dropped here."""
    if not p.teacher_answered_size:
        return []
    tseed = p.seed if p.teacher_seed < 0 else p.teacher_seed
    teacher_n = p.teacher_finetune_train_size if p.teacher_finetune else 0
    order = list(range(len(train)))
    random.Random(tseed).shuffle(order)
    pool = order[:len(order) - teacher_n][::-1]  # nearest the teacher's examples first
    picked = [train[i] for i in pool if train[i]["id"] not in taken][:p.teacher_answered_size]
    if len(picked) < p.teacher_answered_size:
        raise ValueError(f"teacher_answered_size: {p.teacher_answered_size} questions asked, {len(picked)} left after "
                         "the other subsets; lower it or raise data_pool_rows (0 = all)")
    return [data.question_only(r) for r in picked]


def bench_rows(p: StudyParams, n: int) -> list[dict[str, Any]]:
    """The run's scored validation questions (a prefix of one seeded shuffle for any n)."""
    dev = data.load_squad("validation", p.squad_dir, p.data_pool_rows)
    return data.disjoint_subsets(dev, [n], p.seed)[0]


# --------------------------------------------------------------------------------------------
# Where each stage writes
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Models as the study uses them
# --------------------------------------------------------------------------------------------
def teacher_source(p: StudyParams) -> str:
    """The teacher the students learn from: the SQuAD-tuned one when the profile tunes it."""
    if p.teacher_finetune:
        tuned = layout.tuned_teacher_dir(p)
        if not (tuned / "config.json").exists():
            raise FileNotFoundError(f"{tuned}: no tuned teacher; run notebooks/00_teacher.py first "
                                    "(the runner does: python -m distill run <params>)")
        return str(tuned)
    return sources.resolve_source(p.teacher, p.squad_dir)


def teacher_quantization(p: StudyParams) -> dict[str, Any]:
    """models.load_model's quantisation keywords for the teacher as the profile holds it (p.teacher_precision)."""
    return {"load_in_4bit": p.teacher_load_in_4bit, "bnb_compute_dtype": p.bnb_compute_dtype,
            "bnb_double_quant": p.bnb_double_quant}


def load_teacher(p: StudyParams, device: torch.device, quantize: bool | None = None):
    """(model, tokenizer), frozen, 4-bit when the profile says so (or `quantize` overrides it)."""
    source = teacher_source(p)
    tokenizer = models.load_tokenizer(source)
    quant = teacher_quantization(p)
    if quantize is not None:
        quant["load_in_4bit"] = quantize
    model = models.load_model(source, dtype=p.model_dtype, **quant, device=device)
    return models.freeze(model), tokenizer


def student_source(p: StudyParams) -> str:
    if p.student == "prune":
        init = layout.student_init_dir(p)
        if not (init / "config.json").exists():
            raise FileNotFoundError(f"{init}: no pruned student; run notebooks/00_teacher.py first")
        return str(init)
    return sources.resolve_source(p.student, p.squad_dir)


def training_inputs(p: StudyParams) -> tuple[str, ...]:
    """The model folders a student's training starts from (its checkpoints are only resumed while these stay)."""
    return (student_source(p), *([teacher_source(p)] if p.uses_teacher else []))


def load_student(p: StudyParams, device: torch.device):
    source = student_source(p)
    return models.load_model(source, dtype=p.model_dtype, device=device), models.load_tokenizer(source)


def scored_source(p: StudyParams, model: str) -> tuple[str, dict[str, Any]]:
    """(source, models.load_model's quantisation keywords) of a scored model: the teacher and the untrained student
    as the study loads them, a trained student from its merged, deployable folder."""
    if model == "teacher":
        return teacher_source(p), teacher_quantization(p)
    if model == "student_before":
        return student_source(p), {}
    if model not in layout.VARIANTS:
        raise ValueError(f"{model}: not a scored model (teacher, student_before, {', '.join(layout.VARIANTS)})")
    folder = layout.merged_dir(p, model)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no merged {model} student; run the merge stage first")
    return str(folder), {}


def load_scored_model(p: StudyParams, model: str, device: torch.device):
    """(model, tokenizer) of a scored model, as `scored_source` names it."""
    source, quant = scored_source(p, model)
    loaded = models.load_model(source, dtype=p.model_dtype, **quant, device=device)
    return models.freeze(loaded), models.load_tokenizer(source)


def calibration_batches(rows, tokenizer, p: StudyParams, n_batches: int = 4) -> list[dict[str, torch.Tensor]]:
    feats = data.encode_examples(rows, tokenizer, p.max_length, p.seed).features
    n_batches = min(n_batches, max(1, len(feats) // p.batch_size))
    return [data.pad_batch(feats[i:i + p.batch_size], tokenizer.pad_token_id)
            for i in range(0, min(len(feats), n_batches * p.batch_size), p.batch_size)]


def pruned_layers(p: StudyParams, config, importance: list[float] | None, keep: int = 0) -> list[int]:
    """The teacher layers a student of `keep` layers (default: the run's own, prune_layers or prune_keep) keeps."""
    if p.prune_layers and not keep:
        return sorted(p.prune_layers)
    required = pruning.full_attention_layers(config) if p.prune_keep_full_attention else []
    n_layers = config.get_text_config().num_hidden_layers
    return pruning.choose_layers(n_layers, keep or p.prune_keep, p.prune_method, importance, required)


def save_student_init(p: StudyParams, student, tokenizer, info: dict[str, Any]) -> Path:
    def extra(tmp: Path) -> None:
        (tmp / "pruning.json").write_text(json.dumps(info, indent=1))
    return models.atomic_save_pretrained(student, tokenizer, layout.student_init_dir(p), extra=extra)


def write_json(path: Path, obj: Any) -> None:
    paths.write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def encode_training(p: StudyParams, tokenizer, sets: StudyData | None = None) -> dict[str, Any]:
    """What a training run feeds the student: train examples (the gold ones, then the teacher-answered ones with
    the teacher's answer as the target) and eval examples (data.Encoded), and recovery contexts (features).
    01_distill trains on these and the teacher cache holds targets for exactly these."""
    sets = sets or load_data(p)
    train = data.encode_examples(sets.train_rows, tokenizer, p.max_length, p.seed)
    if sets.answered_rows:
        view = teacher_answers.view_file(layout.base_run_dir(p), p)
        if not view.exists() and layout.lab_of(p):  # a by-hand run: the answers of the run it reads from
            view = teacher_answers.view_file(layout.base_run_dir(p), p.replace(run_name=layout.lab_of(p)))
        got = teacher_answers.read_view(view, sets.answered_rows)
        answered = data.encode_answered(sets.answered_rows, got, tokenizer, p.max_length)
        train = data.Encoded(train.features + answered.features, train.windowed + answered.windowed,
                             train.dropped + answered.dropped, train.lengths + answered.lengths)
    return {"train": train,
            "eval": data.encode_examples(sets.eval_rows, tokenizer, p.max_length, p.seed + 1),
            "recovery": data.encode_contexts(sets.recovery_rows, tokenizer, p.max_length) if p.recovery_steps else []}


def length_stats(encoded: data.Encoded) -> dict[str, float]:
    """Token lengths of encoded examples, with how many were windowed around the answer or dropped."""
    return {**data.length_stats(encoded.lengths), "windowed": encoded.windowed, "dropped": encoded.dropped}


def training_features(p: StudyParams, tokenizer) -> list[dict[str, Any]]:
    enc = encode_training(p, tokenizer)
    return enc["train"].features + enc["eval"].features + list(enc["recovery"])


def cached_targets(p: StudyParams, tokenizer):
    """The teacher cache view of this training run, checked against the student's tokenizer."""
    view = teacher_cache.view_file(layout.base_run_dir(p), p)
    if not view.exists() and layout.lab_of(p):  # a by-hand run: the examples of the run it reads from
        view = teacher_cache.view_file(layout.base_run_dir(p), p.replace(run_name=layout.lab_of(p)))
    targets = teacher_cache.CachedTargets(view)
    if targets.config["vocab"] != len(tokenizer) or \
            targets.config["tokenizer"] != teacher_cache.tokenizer_digest(tokenizer):
        raise ValueError(f"{targets.view_path}: the teacher cache was made with another tokenizer (vocab "
                         f"{targets.config['vocab']}) than the student's ({len(tokenizer)}); distillation needs one "
                         "vocabulary")
    if (targets.config["temperature"], targets.config["format"], targets.config["k"], targets.config["max_length"],
            targets.config.get("positions", "all")) != \
            (float(p.temperature), p.teacher_cache, p.teacher_cache_k, p.max_length, p.distill_positions):
        raise teacher_cache.CacheMismatch(f"{targets.view_path}: made at other cache settings than this run's; run "
                                          "the teacher-cache stage again")
    return targets
