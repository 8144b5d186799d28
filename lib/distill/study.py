"""The study's shared steps: which data, which models, where each stage reads and writes.

Notebooks call these so that every stage agrees on the same subsets and folders.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import data, models, paths
from .params import StudyParams

VARIANTS = ("distilled", "ce_baseline")


@dataclass
class StudyData:
    """Disjoint, seeded subsets: SQuAD train for training, SQuAD validation for scoring."""
    eval_rows: list[dict[str, Any]]
    train_rows: list[dict[str, Any]]
    teacher_rows: list[dict[str, Any]]
    recovery_rows: list[dict[str, Any]]
    bench_rows: list[dict[str, Any]]


def load_data(p: StudyParams) -> StudyData:
    train = data.load_squad("train", p.squad_dir, p.data_pool_rows)
    teacher_n = p.teacher_finetune_train_size if p.teacher_finetune else 0
    eval_rows, train_rows, teacher_rows, recovery_rows = data.disjoint_subsets(
        train, [p.eval_size, p.train_size, teacher_n, p.recovery_size], p.seed)
    dev = data.load_squad("validation", p.squad_dir, p.data_pool_rows)
    (bench_rows,) = data.disjoint_subsets(dev, [p.bench_size], p.seed)
    return StudyData(eval_rows, train_rows, teacher_rows, recovery_rows, bench_rows)


# --------------------------------------------------------------------------------------------
# Where each stage writes
# --------------------------------------------------------------------------------------------
def tuned_teacher_dir(p: StudyParams) -> Path:
    return p.run_dir / "teacher"


def student_init_dir(p: StudyParams) -> Path:
    return p.run_dir / "student_init"


def variant_dir(p: StudyParams, variant: str) -> Path:
    return p.run_dir / "students" / variant


def merged_dir(p: StudyParams, variant: str) -> Path:
    return p.deploy_path if variant == "distilled" else p.run_dir / "merged" / variant


# --------------------------------------------------------------------------------------------
# Models as the study uses them
# --------------------------------------------------------------------------------------------
def teacher_source(p: StudyParams) -> str:
    """The teacher the students learn from: the SQuAD-tuned one when the profile tunes it."""
    if p.teacher_finetune:
        tuned = tuned_teacher_dir(p)
        if not (tuned / "config.json").exists():
            raise FileNotFoundError(f"{tuned}: no tuned teacher; run notebooks/00_teacher.py first "
                                    "(the runner does: python -m distill run <params>)")
        return str(tuned)
    return models.resolve_source(p.teacher, p.squad_dir)


def load_teacher(p: StudyParams, device: torch.device, quantize: bool | None = None):
    """(model, tokenizer), frozen, 4-bit when the profile says so."""
    source = teacher_source(p)
    tokenizer = models.load_tokenizer(source)
    model = models.load_model(source, dtype=p.model_dtype,
                              load_in_4bit=p.teacher_load_in_4bit if quantize is None else quantize,
                              bnb_compute_dtype=p.bnb_compute_dtype, device=device)
    return models.freeze(model), tokenizer


def student_source(p: StudyParams) -> str:
    if p.student == "prune":
        init = student_init_dir(p)
        if not (init / "config.json").exists():
            raise FileNotFoundError(f"{init}: no pruned student; run notebooks/00_teacher.py first")
        return str(init)
    return models.resolve_source(p.student, p.squad_dir)


def load_student(p: StudyParams, device: torch.device):
    source = student_source(p)
    return models.load_model(source, dtype=p.model_dtype, device=device), models.load_tokenizer(source)


def calibration_batches(rows, tokenizer, p: StudyParams, n_batches: int = 4) -> list[dict[str, torch.Tensor]]:
    feats = data.encode_examples(rows, tokenizer, p.max_length, p.seed).features
    n_batches = min(n_batches, max(1, len(feats) // p.batch_size))
    return [data.pad_batch(feats[i:i + p.batch_size], tokenizer.pad_token_id)
            for i in range(0, min(len(feats), n_batches * p.batch_size), p.batch_size)]


def pruned_layers(p: StudyParams, n_layers: int, importance: list[float] | None) -> list[int]:
    if p.prune_layers:
        return sorted(p.prune_layers)
    return models.choose_layers(n_layers, p.prune_keep, p.prune_method, importance)


def save_student_init(p: StudyParams, student, tokenizer, info: dict[str, Any]) -> Path:
    def extra(tmp: Path) -> None:
        (tmp / "pruning.json").write_text(json.dumps(info, indent=1))
    return models.atomic_save_pretrained(student, tokenizer, student_init_dir(p), extra=extra)


def write_json(path: Path, obj: Any) -> None:
    paths.write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def finetune_teacher(p: StudyParams, rows, device: torch.device) -> dict[str, Any]:
    """Tune the teacher on SQuAD answers (CE only; LoRA merged after, or full) and save it for the study."""
    from .training import loss_config, train

    source = models.resolve_source(p.teacher, p.squad_dir)
    tokenizer = models.load_tokenizer(source)
    model = models.load_model(source, dtype=p.model_dtype, device=device)
    if p.teacher_finetune_use_lora:
        model = models.apply_lora(model, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules or None)
    features = data.encode_examples(rows, tokenizer, p.max_length, p.seed).features
    cfg = loss_config(p.replace(gamma_kl=0.0, beta_mse=0.0, alpha_ce=1.0), 1, 1, None)
    work = p.run_dir / "teacher_finetune"
    result = train(p, model, tokenizer, features, [], work, cfg=cfg, max_steps=p.teacher_finetune_steps,
                   learning_rate=p.teacher_finetune_lr)
    tuned = result.trainer.model
    if p.teacher_finetune_use_lora:
        tuned = tuned.merge_and_unload()
    models.atomic_save_pretrained(tuned, tokenizer, tuned_teacher_dir(p))
    return {"log_history": result.log_history, "examples": len(features), "steps": p.teacher_finetune_steps}


def merge_variant(p: StudyParams, variant: str, device: torch.device, probe_rows) -> dict[str, Any]:
    """Merge a trained adapter into its base student and save a standalone model atomically.

    The merge is verified: merged and adapter models must give the same logits on a batch.
    """
    from peft import PeftModel

    best = variant_dir(p, variant) / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"{best}: no trained student for variant {variant}; run notebooks/01_distill.py "
                                f"with variant: {variant} first")
    tokenizer = models.load_tokenizer(str(best))
    batch = data.pad_batch(data.encode_examples(probe_rows, tokenizer, p.max_length, p.seed).features,
                           tokenizer.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    real = batch["attention_mask"].bool()

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model(**batch, use_cache=False).logits

    if (best / "adapter_config.json").exists():
        base, _ = load_student(p, device)
        adapted = PeftModel.from_pretrained(base, str(best)).eval()
        before = logits(adapted)
        merged = adapted.merge_and_unload().eval()
        max_diff = float((before - logits(merged))[real].abs().max())
    else:  # a full student needs no merge
        merged, max_diff = models.load_model(str(best), dtype=p.model_dtype, device=device), 0.0
        before = logits(merged)
    tolerance = 1e-3 if p.model_dtype == "float32" else 5e-2
    if max_diff > tolerance:
        raise RuntimeError(f"merge changed the logits of {variant} by {max_diff:.2e} (> {tolerance:.0e})")
    out = merged_dir(p, variant)
    reload_diff: list[float] = []

    def finish(tmp: Path) -> None:
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(tmp)
        # the saved folder is what gets deployed: it must give the adapter's logits when loaded alone
        # (a lost tie of embeddings or a dropped tensor shows here), before it replaces an old deployment
        reloaded = models.load_model(str(tmp), dtype=p.model_dtype, device=device).eval()
        reload_diff.append(float((before - logits(reloaded))[real].abs().max()))
        if reload_diff[0] > tolerance:
            raise RuntimeError(f"{variant}: the saved model, loaded alone, differs from the adapter model by "
                               f"{reload_diff[0]:.2e} (> {tolerance:.0e}); {out} was left as it was")
    models.atomic_save_pretrained(merged, tokenizer, out, extra=finish)
    return {"variant": variant, "deploy_dir": str(out), "max_abs_logit_diff": max_diff,
            "reloaded_max_abs_logit_diff": reload_diff[0], "tolerance": tolerance,
            "size_mb": models.folder_size_mb(out)}
