"""Generation, scoring and timing of one model.

A model's peak resident memory on the CPU is only honest when nothing else lives in the process, so
the pipeline's speed stages (`python -m distill stage <params> speed <model>`) each time one model.
"""
from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.kd.losses import loss_rows
from distill.parts import metrics
from distill.parts.data import encode_examples, pad_batch, prompt_features
from distill.parts.models import count_params, folder_size_mb, load_model, load_tokenizer, resolve_device, setup_torch


def eos_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
             device: torch.device | str = "cpu", warmup_batches: int = 0,
             min_new_tokens: int = 0, progress: str = "") -> tuple[list[str], float]:
    """Greedy answers for prompt id lists, batched with left padding; returns (texts, timed seconds).

    Warm-up batches run first and are not timed. `min_new_tokens` keeps decoding past the end of the answer.
    With `progress` (a label) each batch prints a line on stderr: a long scoring run shows where it is.
    """
    model.eval()
    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    stop = eos_ids(model, tokenizer)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                  pad_token_id=tokenizer.pad_token_id, use_cache=True)
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    for b in batches[:warmup_batches]:
        enc = pad_batch([{"input_ids": x} for x in b], tokenizer.pad_token_id, side="left")
        model.generate(**{k: v.to(device) for k, v in enc.items()}, **kwargs)
    texts, elapsed = [], 0.0
    for i, b in enumerate(batches, 1):
        enc = pad_batch([{"input_ids": x} for x in b], tokenizer.pad_token_id, side="left")
        start = time.perf_counter()
        out = model.generate(**{k: v.to(device) for k, v in enc.items()}, **kwargs)
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        new = out[:, enc["input_ids"].shape[1]:]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        if progress:
            print(f"[{progress}] generated batch {i}/{len(batches)} ({len(texts)} answers, {elapsed:.0f} s)",
                  file=sys.stderr, flush=True)
    return texts, elapsed


@torch.no_grad()
def teacher_forced(model, features: list[dict[str, Any]], pad_id: int, batch_size: int,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean answer-token loss (nats) and top-1 accuracy with the gold answer fed in: no generation."""
    model.eval()
    total_nll, total_hit, total_n = 0.0, 0, 0
    for i in range(0, len(features), batch_size):
        batch = pad_batch(features[i:i + batch_size], pad_id, side="right")
        # the row before each answer token predicts it: only those rows are projected onto the vocabulary
        target, rows, _ = loss_rows(batch["labels"].to(device), batch["attention_mask"].to(device), "answer")
        if not rows.any():
            continue
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       logits_to_keep=rows, use_cache=False).logits.float()
        logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
        gold = target[rows]
        total_nll += float(-logp.gather(1, gold[:, None]).sum())
        total_hit += int((logp.argmax(-1) == gold).sum())
        total_n += int(rows.sum())
    return {"answer_loss": total_nll / max(total_n, 1), "top1_accuracy": total_hit / max(total_n, 1),
            "answer_tokens": total_n}


def time_generation(model, tokenizer, rows: list[dict[str, Any]], *, max_length: int, max_new_tokens: int,
                    batch_size: int, seed: int, device="cpu", warmup_batches: int = 0) -> dict[str, Any]:
    """Latency and throughput of greedy answers to `rows`, batched as `evaluate` does it."""
    gen = encode_examples(rows, tokenizer, max_length, seed, with_answer=False, reserve=max_new_tokens)
    prompt_ids = [f["input_ids"] for f in prompt_features(gen.features)]
    _, seconds = generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, device, warmup_batches)
    n = len(prompt_ids)
    return {"n_examples": n, "latency_ms_per_example": 1000 * seconds / max(n, 1),
            "throughput_examples_per_s": n / seconds if seconds else 0.0, "generation_seconds": seconds}


def request_latency(model, tokenizer, rows: list[dict[str, Any]], *, max_length: int, max_new_tokens: int, seed: int,
                    device="cpu", warmup: int = 1) -> dict[str, Any]:
    """Per-request latency: each question answered alone (batch 1, greedy), timed from prompt ids to answer ids;
    median and 90th percentile over the questions. Twice: until the answer ends (`latency_batch1_*`: what a user
    waits for; a model that rambles waits longer) and at a fixed length of `max_new_tokens` new tokens
    (`latency_batch1_fixed_*`: the architecture's cost, the same work for every model)."""
    gen = encode_examples(rows, tokenizer, max_length, seed, with_answer=False, reserve=max_new_tokens)
    prompt_ids = [f["input_ids"] for f in prompt_features(gen.features)]
    out: dict[str, Any] = {"latency_batch1_prompts": len(prompt_ids)}
    for name, at_least in (("latency_batch1", 0), ("latency_batch1_fixed", max_new_tokens)):
        for ids in prompt_ids[:warmup]:
            generate(model, tokenizer, [ids], max_new_tokens, 1, device, min_new_tokens=at_least)
        ordered = sorted(generate(model, tokenizer, [ids], max_new_tokens, 1, device, min_new_tokens=at_least)[1] * 1000
                         for ids in prompt_ids)
        out[f"{name}_ms_median"] = statistics.median(ordered)
        out[f"{name}_ms_p90"] = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return out


def evaluate(model, tokenizer, rows: list[dict[str, Any]], *, max_length: int, max_new_tokens: int,
             batch_size: int, seed: int, device="cpu", warmup_batches: int = 0, progress: str = "") -> dict[str, Any]:
    """EM/F1 from greedy answers, teacher-forced loss and accuracy, batched generation time and throughput."""
    gen = encode_examples(rows, tokenizer, max_length, seed, with_answer=False, reserve=max_new_tokens)
    prompt_ids = [f["input_ids"] for f in prompt_features(gen.features)]
    raw, seconds = generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, device, warmup_batches,
                            progress=progress)
    predictions = [metrics.postprocess_answer(t) for t in raw]
    references = [f["references"] for f in gen.features]
    scores = metrics.squad_scores(predictions, references)
    forced = teacher_forced(model, encode_examples(rows, tokenizer, max_length, seed).features,
                            tokenizer.pad_token_id, batch_size, device)
    n = len(prompt_ids)
    return {**scores, **forced, "n_examples": n, "dropped": gen.dropped, "windowed": gen.windowed,
            "latency_ms_per_example": 1000 * seconds / max(n, 1), "throughput_examples_per_s": n / seconds if seconds else 0.0,
            "generation_seconds": seconds, "raw_generations": raw, "predictions": predictions,
            "references": references, "question_ids": [f["id"] for f in gen.features]}


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_model_benchmark(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, time (and optionally score) one model: a speed stage, in a process of its own."""
    setup_torch(spec["seed"], spec.get("threads", 0))
    device = resolve_device(spec.get("device", "auto"))
    rss_before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokenizer = load_tokenizer(spec["source"])
    quant = spec.get("quantization", {})  # load_model's quantisation keywords
    model = load_model(spec["source"], dtype=spec.get("dtype", "float32"), **quant, device=device)
    rows = json.loads(Path(spec["rows_file"]).read_text())
    if spec.get("score", True):
        result = evaluate(model, tokenizer, rows, max_length=spec["max_length"], max_new_tokens=spec["max_new_tokens"],
                          batch_size=spec["batch_size"], seed=spec["seed"], device=device,
                          warmup_batches=spec.get("warmup_batches", 1))
    else:  # timing only: the pipeline scores quality in its own stage
        result = time_generation(model, tokenizer, rows, max_length=spec["max_length"],
                                 max_new_tokens=spec["max_new_tokens"], batch_size=spec["batch_size"],
                                 seed=spec["seed"], device=device, warmup_batches=spec.get("warmup_batches", 1))
        if spec.get("latency_prompts"):  # one request at a time, as a user sends them
            result.update(request_latency(model, tokenizer, rows[:spec["latency_prompts"]],
                                          max_length=spec["max_length"], max_new_tokens=spec["max_new_tokens"],
                                          seed=spec["seed"], device=device))
    result["params_m"] = count_params(model) / 1e6
    result["memory_footprint_mb"] = model.get_memory_footprint() / 1e6
    if quant.get("load_in_4bit"):
        result["disk_mb"], result["disk_kind"] = quantized_disk_mb(model), "4-bit quantised footprint"
    else:
        result["disk_mb"], result["disk_kind"] = folder_size_mb(Path(spec["source"])), "safetensors folder"
    result["runtime_rss_mb"] = rss_before
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 1e6
        result["peak_memory_kind"] = "CUDA max allocated"
    else:
        result["peak_memory_mb"] = peak_rss_mb()
        result["peak_memory_kind"] = "peak RSS of a process running only this model"
    return result


def quantized_disk_mb(model) -> float:
    """A 4-bit model's footprint as held in memory (what its saved 4-bit checkpoint would take)."""
    return model.get_memory_footprint() / 1e6
