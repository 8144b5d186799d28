"""Scoring the study's models: one scorer for the run's models, its sweeps' students and its capacity grid.

Every model answers its questions greedily (`parts.benchmark.evaluate`: EM/F1, teacher-forced answer loss,
top-1) with the settings of the run that made it; the result is written atomically to the score file the
pipeline declares. `time_model` measures size, latency, throughput and peak memory of one model alone in
its process.
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch

from distill.core import paths
from distill.core.params import StudyParams
from distill.parts import benchmark, data, fidelity, metrics, models
from distill.study import capacity, layout, steps, sweep


def evaluate(sp: StudyParams, loaded, tokenizer, rows: list[dict[str, Any]], seed: int, device: torch.device,
             progress: str = "") -> dict[str, Any]:
    """Greedy answers and teacher-forced scores of one loaded model on `rows`, with the generation settings of
    the run `sp` that made it (`seed`: the scored run's, so every model sees the same windows)."""
    return benchmark.evaluate(loaded, tokenizer, rows, max_length=sp.max_length, max_new_tokens=sp.max_new_tokens,
                              batch_size=sp.bench_batch_size, seed=seed, device=device, progress=progress)


def score_model(p: StudyParams, model: str) -> dict[str, Any]:
    """EM/F1 (greedy answers), teacher-forced answer loss and top-1 of one model on the run's questions."""
    models.setup_torch(p.seed, p.torch_threads)
    device = models.resolve_device(p.device)
    rows = steps.bench_rows(p, p.bench_size)
    model_obj, tokenizer = steps.load_scored_model(p, model, device)
    t0 = time.perf_counter()
    result = evaluate(p, model_obj, tokenizer, rows, p.seed, device, progress=f"{p.run_name} score {model}")
    keep = ("exact_match", "f1", "answer_loss", "top1_accuracy", "answer_tokens", "n_examples", "dropped", "windowed",
            "raw_generations", "predictions", "references")
    out = {k: result[k] for k in keep}
    out.update(model=model, question_ids=result["question_ids"], wall_s=time.perf_counter() - t0)
    paths.write_text_atomic(layout.scores_file(p, model), json.dumps(out, indent=1))
    print(f"{p.run_name} {model}: EM {out['exact_match']:.1f} F1 {out['f1']:.1f} answer loss "
          f"{out['answer_loss']:.3f} on {len(rows)} questions", flush=True)
    return out


def time_model(p: StudyParams, model: str) -> dict[str, Any]:
    """Size, latency, throughput and peak memory of one model, alone in this process."""
    source, quant = steps.scored_source(p, model)
    rows_file = layout.speed_file(p, model).with_suffix(".rows.json")
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.write_text(json.dumps(steps.bench_rows(p, p.bench_size)))
    try:
        result = benchmark.run_model_benchmark(dict(
            source=source, quantization=quant, rows_file=str(rows_file), seed=p.seed, device=p.device,
            threads=p.torch_threads, dtype=p.model_dtype, max_length=p.max_length, max_new_tokens=p.max_new_tokens,
            batch_size=p.bench_batch_size, warmup_batches=p.bench_warmup, latency_prompts=min(p.latency_prompts, p.bench_size), score=False))
    finally:
        rows_file.unlink(missing_ok=True)
    result.update(model=model, device=str(models.resolve_device(p.device)))
    paths.write_text_atomic(layout.speed_file(p, model), json.dumps(result, indent=1))
    print(f"{p.run_name} {model}: batch 1 {result['latency_batch1_ms_median']:.0f} ms median "
          f"(p90 {result['latency_batch1_ms_p90']:.0f}), batch {p.bench_batch_size} "
          f"{result['throughput_examples_per_s']:.2f} answers/s, peak {result['peak_memory_mb']:.0f} MB", flush=True)
    return result


def score_sweep_model(p: StudyParams, name: str, seed: str, model: str, questions: int) -> dict[str, Any]:
    """One sweep student (adapter merged in memory) or reference model on the sweeps' questions."""
    if name == "reference":
        sp, source_model = p, model
    else:
        entry = sweep.load_registry(p)["sweeps"][name]
        sp, source_model = sweep.seed_params(p, name, int(seed), entry["set"]), model
    models.setup_torch(sp.seed, sp.torch_threads)
    device = models.resolve_device(sp.device)
    rows = steps.bench_rows(p, questions)  # the base run's questions, whatever the seed
    loaded, tokenizer = sweep.load_student_or_reference(sp, source_model, device)
    result = evaluate(sp, loaded, tokenizer, rows, p.seed, device)
    out = {k: result[k] for k in (*sweep.SCORES, "n_examples", "answer_tokens", "predictions")}
    out["question_ids"] = result["question_ids"]
    f = sweep.score_file(p, name, None if name == "reference" else int(seed), model, questions)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    print(f"{name} seed {seed} {model}: " + ", ".join(f"{k} {out[k]:.3f}" for k in sweep.SCORES), flush=True)
    return out


def score_capacity_model(base: StudyParams, model: str, keep: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Score one model of the grid on the capacity questions (EM/F1, answer loss, top-1) and time it at batch 1."""
    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    rows = steps.bench_rows(base, base.capacity_questions)  # the base run's questions, whatever the cell's seed
    rss_before, t0 = benchmark.peak_rss_mb(), time.perf_counter()
    if model == "teacher":
        sp = base
        loaded, tokenizer = steps.load_teacher(base, device)
    else:
        sp = capacity.arm_params(base, keep, seed, model)
        loaded, tokenizer = sweep.load_student_or_reference(sp, sp.variant, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(sp, loaded, tokenizer, rows, base.seed, device)
    latency = benchmark.request_latency(loaded, tokenizer, rows[:base.latency_prompts], max_length=sp.max_length,
                                        max_new_tokens=sp.max_new_tokens, seed=base.seed, device=device)
    per_question = metrics.per_example_scores(result["predictions"], result["references"])
    out = {"variant": model, "layers": keep if keep is not None else len(models.decoder_layers(loaded)),
           "params_m": models.count_params(loaded) / 1e6, "seed": base.seed if seed is None else seed,
           "n_questions": result["n_examples"], **{k: result[k] for k in ("exact_match", "f1", "answer_loss",
                                                                          "top1_accuracy", "answer_tokens")},
           **latency, "throughput_batched_examples_per_s": result["throughput_examples_per_s"],
           "question_ids": result["question_ids"], "f1_per_question": [r["f1"] for r in per_question],
           "em_per_question": [r["exact_match"] for r in per_question],
           "predictions": dict(zip(result["question_ids"], result["predictions"])),
           "wall_s": time.perf_counter() - t0, "load_s": load_s, "precision": sp.teacher_precision if model == "teacher"
           else sp.model_dtype,
           # this stage's process: loading, then answering every question
           "peak_rss_mb": benchmark.peak_rss_mb(), "peak_rss_before_load_mb": rss_before}
    f = capacity.score_file(base, model, keep, seed)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    print(f"{model} {out['layers']} layers seed {out['seed']}: EM {out['exact_match']:.1f} F1 {out['f1']:.1f} "
          f"answer loss {out['answer_loss']:.3f}; batch-1 latency (median of {out['latency_batch1_prompts']}) "
          f"{out['latency_batch1_ms_median']:.0f} ms to the answer's end, {out['latency_batch1_fixed_ms_median']:.0f} "
          f"ms for {sp.max_new_tokens} tokens; {out['wall_s']:.0f} s", flush=True)
    return out


def measure_fidelity(base: StudyParams, precision: str) -> dict[str, Any]:
    """The tuned teacher held in `precision` (e.g. nf4-float32) against the float32 teacher on the grid's scored
    questions, teacher-forced on their gold answers (parts.fidelity.compare): KL per answer token at T 1 and at the
    run's temperature, top-1 agreement, and the distance between the sampled caches each would store."""
    models.setup_torch(base.seed, base.torch_threads)
    device = models.resolve_device(base.device)
    reference, tokenizer = steps.load_teacher(base.replace(teacher_load_in_4bit=False), device)
    other, _ = steps.load_teacher(capacity.teacher_held(base, precision), device)
    rows = steps.bench_rows(base, base.capacity_questions)
    features = data.encode_examples(rows, tokenizer, base.max_length, base.seed).features
    t0 = time.perf_counter()
    got = fidelity.compare(reference, other, features, temperatures=sorted({1.0, float(base.temperature)}),
                           cache_temperature=base.temperature, cache_k=base.teacher_cache_k,
                           pad_id=tokenizer.pad_token_id, batch_size=base.batch_size, seed=base.seed, device=device,
                           vocab=len(tokenizer))
    out = {"precision": precision, "reference": "float32", "n_questions": len(rows), "cache_k": base.teacher_cache_k,
           "cache_temperature": base.temperature, **got, "wall_s": time.perf_counter() - t0}
    f = capacity.fidelity_file(base, precision)
    paths.write_text_atomic(f, json.dumps(out, indent=1))
    kl = "; ".join(f"T {t:g}: mean {v['mean']:.4f} p90 {v['p90']:.4f}" for t, v in got["kl"].items())
    print(f"{precision} vs float32 on {got['rows']} answer tokens: KL {kl} nats; top-1 agreement "
          f"{got['top1_agreement']:.3f}; sampled-cache distance {got['cache_distance']['mean']:.3f} (noise floor "
          f"{got['cache_noise_floor']['mean']:.3f})", flush=True)
    return out
