"""Models as the study uses them: runtime setup, loading (4-bit too), counting, LoRA, vocabulary checks.

Where a model comes from is `sources`; cutting a student from a teacher is `pruning`.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core import paths

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------
def free_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup_torch(seed: int, threads: int = 0) -> None:
    """Seed everything and cap torch's threads at the free cores (oversubscription is 10x slower).

    The seeding is transformers.set_seed's (Python, NumPy, torch on every device), without importing it: its module
    pulls in peft and bitsandbytes, 4 s of CPU in every stage process that never uses them."""
    from transformers.utils import logging as hf_logging  # heavy (the model stack): loaded where a model is

    torch.set_num_threads(threads or free_cores())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # and every CUDA device's generator
    hf_logging.disable_progress_bar()  # per-tensor load bars drown the reports
    hf_logging.set_verbosity_error()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda asked for but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def atomic_save_pretrained(model, tokenizer, final: Path, extra=None, marker: dict | None = None) -> Path:
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    return paths.atomic_folder(build, final, marker=marker)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_tokenizer(source: str):
    from transformers import AutoTokenizer  # heavy (the model stack): loaded where a model is

    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: str, *, dtype: str = "float32", load_in_4bit: bool = False,
               bnb_compute_dtype: str = "float32", bnb_double_quant: bool = False, device: torch.device | str = "cpu"):
    """A causal LM from a resolved source, optionally NF4 4-bit (bitsandbytes, works on CPU too), with its
    quantisation constants quantised too when `bnb_double_quant`."""
    from transformers import (  # heavy (the model stack): loaded where a model is
        AutoModelForCausalLM,
        BitsAndBytesConfig,
    )

    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[bnb_compute_dtype],
            bnb_4bit_use_double_quant=bnb_double_quant)
        kwargs["device_map"] = str(device)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not load_in_4bit:
        model.to(device)
    return model


def freeze(model):
    """The teacher: eval mode, no gradients, outside any optimizer."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def config_layers(source: str) -> int:
    """Decoder layers of a model, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig  # heavy (the model stack): loaded where a model is

    cfg = AutoConfig.from_pretrained(source)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.num_hidden_layers)


def count_params(model) -> int:
    """Parameters as the model holds them; bitsandbytes packs two 4-bit weights per stored element."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
    return total


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


# --------------------------------------------------------------------------------------------
# LoRA and compatibility
# --------------------------------------------------------------------------------------------
def apply_lora(model, r: int, alpha: int, dropout: float, targets: list[str] | None = None):
    from peft import LoraConfig, get_peft_model  # heavy (the model stack): loaded where a model is

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    wanted = targets or [t for t in LORA_TARGETS if t in present]
    missing = [t for t in wanted if t not in present]
    if missing or not wanted:
        raise ValueError(f"lora_target_modules: {missing or wanted} not found in the student; "
                         f"its linear layers include {sorted(t for t in present if t.endswith('proj'))}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=wanted,
                        task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def check_vocab_compatible(teacher_tok, student_tok, teacher_model, student_model,
                           probe: str = "Context: The Eiffel Tower is in Paris. Question: Where? Answer: Paris") -> int:
    """Teacher and student must share a vocabulary; returns the shared size to compare logits on.

    Embedding matrices may carry padded rows beyond the tokenizer (Qwen2.5: 151,936 vs 152,064):
    logits are compared on the tokenizer's real vocabulary only.
    """
    t_ids = teacher_tok(probe, add_special_tokens=False)["input_ids"]
    s_ids = student_tok(probe, add_special_tokens=False)["input_ids"]
    if len(teacher_tok) != len(student_tok) or t_ids != s_ids:
        raise ValueError(
            f"teacher and student tokenizers differ (vocab {len(teacher_tok)} vs {len(student_tok)}, probe ids "
            f"{'equal' if t_ids == s_ids else 'differ'}): logit distillation needs one vocabulary; "
            "pick a student from the teacher's family")
    vocab = len(teacher_tok)
    rows_t = teacher_model.get_output_embeddings().weight.shape[0]
    rows_s = student_model.get_output_embeddings().weight.shape[0]
    if min(rows_t, rows_s) < vocab:
        raise ValueError(f"an output embedding has fewer rows ({rows_t}, {rows_s}) than the tokenizer's {vocab} tokens")
    return vocab
