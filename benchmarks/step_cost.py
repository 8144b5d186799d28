"""What one distillation step costs next to a CE step, on a profile's own teacher, pruned student and a real batch.

Side by side in one run, each kind in a fresh process (so each peak RSS is its own), the median of
--steps timed steps after one warm-up:
  ce_step            the CE-only student's step (forward, loss, backward, optimizer)
  teacher_forward    the teacher's forward alone (no_grad, logits at the rows the divergence reads), what a
                     live teacher adds at least
  kd_live_step       the distillation step with the live dense teacher (teacher_cache none), the profile's
                     other settings
  kd_cached_step     the distillation step from sparse teacher targets (the profile's teacher_cache format
                     and k, top-k 16 if it has none, at its temperature), no teacher forward (beta_mse 0)
  kd_cached_live_hidden_step  the same plus a hidden-state term (the profile's beta_mse, 0.1 if it has
                     none), the teacher run live for its states
  onpolicy_step      an on-policy (GKD) step: the student samples its answers (the profile's onpolicy_temperature
                     and onpolicy_max_new_tokens), the live teacher scores them, the divergence on the samples
  kd_live_dense_step / kd_live_chunked_step  the live-teacher step with the divergence over all its rows at once
                     (kd_chunk_size 0) and in chunks (the profile's kd_chunk_size, 64 if it has none)
  kd_all_dense_step / kd_all_chunked_step / kd_all_cached_step  the same two and the cached step with every
                     position distilled (distill_positions all): where the vocabulary's float32 memory shows
Every step projects onto the vocabulary only at the rows its losses read (distill_positions).
It prints the ratios and writes reports/<run>/step_cost.json. Needs the run's teacher and student (make study).
Run: make bench-step   (or python benchmarks/step_cost.py params/<profile>.yaml)
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from distill.core import params, paths
from distill.kd import losses
from distill.kd.trainer import DistillationTrainer
from distill.parts import data, models, teacher_cache
from distill.study import steps, training

KINDS = ("ce_step", "teacher_forward", "kd_live_step", "kd_cached_step", "kd_cached_live_hidden_step", "onpolicy_step",
         "kd_live_dense_step", "kd_live_chunked_step", "kd_all_dense_step", "kd_all_chunked_step", "kd_all_cached_step")


def measure(profile: str, kind: str, n_steps: int, k: int) -> dict:
    import torch


    p = params.load(profile)
    models.setup_torch(p.seed, p.torch_threads)
    device = models.resolve_device(p.device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    teacher, tok = steps.load_teacher(p, device)
    student, _ = steps.load_student(p, device)
    n_student, n_teacher = len(models.decoder_layers(student)), len(models.decoder_layers(teacher))
    pruned_from = getattr(student.config, "pruned_from_layers", None)
    vocab = models.check_vocab_compatible(tok, tok, teacher, student)
    rows = steps.load_data(p).train_rows[: p.batch_size]
    feats = data.encode_examples(rows, tok, p.max_length, p.seed).features
    batch = {k_: v.to(device) for k_, v in data.TrainCollator(tok.pad_token_id)(feats).items()}
    tokens = int(batch["attention_mask"].sum())
    if kind == "ce_step":
        lp = p.replace(gamma_kl=0.0, beta_mse=0.0)
    elif kind == "kd_cached_step":
        lp = p.replace(beta_mse=0.0)
    elif kind == "kd_cached_live_hidden_step":
        lp = p.replace(beta_mse=p.beta_mse or 0.1)
    elif kind == "onpolicy_step":
        lp = p.replace(lmbda=1.0, gamma_kl=p.gamma_kl or 1.0, beta_mse=0.0)
    elif kind in ("kd_live_dense_step", "kd_all_dense_step"):
        lp = p.replace(kd_chunk_size=0, beta_mse=0.0)
    elif kind in ("kd_live_chunked_step", "kd_all_chunked_step"):
        lp = p.replace(kd_chunk_size=p.kd_chunk_size or 64, beta_mse=0.0)
    elif kind == "kd_all_cached_step":
        lp = p.replace(beta_mse=0.0)
    else:
        lp = p
    if kind.startswith("kd_all_"):
        lp = lp.replace(distill_positions="all")
    cfg = training.loss_config(lp, n_student, n_teacher, vocab, pruned_from)
    cfg.positions_per_answer_token = training.positions_per_answer_token(feats)
    projection = None
    if cfg.beta_mse > 0:
        projection = losses.HiddenProjection(student.config.hidden_size, teacher.config.hidden_size).to(device)
    student = models.apply_lora(student, p.lora_r, p.lora_alpha, p.lora_dropout, p.lora_target_modules or None)
    student.train()
    trainable = [q for q in student.parameters() if q.requires_grad] + (list(projection.parameters()) if projection
                                                                        else [])
    optimizer = torch.optim.AdamW(trainable, lr=p.learning_rate)
    args = training.training_args(p, Path("/tmp/step_cost_unused"), 1, p.learning_rate, evaluate=False)
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher if cfg.uses_teacher else None,
                                  loss_config=cfg, projection=projection, onpolicy=training.onpolicy_config(lp, tok))
    inputs = dict(batch)
    cache_bytes = 0
    fmt = p.teacher_cache if p.teacher_cache != "none" else "topk"
    if kind.startswith("kd_cached") or kind == "kd_all_cached_step":
        # the sparse targets a cache would hold for this batch, made once, untimed, one example (and 32 rows) at a time so that
        # the teacher's whole-vocabulary logits (8 x 223 x 262k floats = 1.9 GB at Gemma 3) do not set this
        # kind's peak RSS
        gen, per_example = torch.Generator().manual_seed(0), []
        with torch.no_grad():
            for i in range(batch["input_ids"].shape[0]):
                logits = teacher(input_ids=batch["input_ids"][i:i + 1], attention_mask=batch["attention_mask"][i:i + 1],
                                 use_cache=False).logits[0, :-1, :vocab]
                per_example += [teacher_cache.sparse_targets(rows, p.temperature, fmt, k, gen)
                                for rows in logits.split(32)]  # its sort is 8 bytes per vocabulary entry
                del logits
        targets = {key: torch.cat([t[key] for t in per_example]) for key in per_example[0]}
        shape = (batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1, k)
        inputs["teacher_ids"] = targets["ids"].long().reshape(shape)
        inputs["teacher_logprobs"] = targets["logprobs"].float().reshape(shape)
        if "counts" in targets:
            inputs["teacher_counts"] = targets["counts"].float().reshape(shape)
        # per stored position: int32 ids + fp16 log-probabilities (+ int16 counts when sampled)
        cache_bytes = sum(t.element_size() * k for t in targets.values())
    if lp.distill_positions == "answer":
        kd_rows = torch.cat([batch["labels"][:, 1:] != -100, torch.zeros_like(batch["labels"][:, :1], dtype=torch.bool)], 1)
    else:
        real = batch["attention_mask"].bool()
        kd_rows = torch.cat([real[:, 1:] & real[:, :-1], torch.zeros_like(real[:, :1])], 1)

    def one_step() -> None:
        if kind == "teacher_forward":
            with torch.no_grad():
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=kd_rows,
                        use_cache=False)
            return
        loss = trainer.compute_loss(student, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "median_s": statistics.median(times), "times_s": times, "peak_rss_mb": peak,
            "rss_before_models_mb": rss0, "tokens": tokens, "batch_size": p.batch_size, "k": k, "format": fmt,
            "distill_positions": lp.distill_positions,
            "kd_chunk_size": lp.kd_chunk_size, "kd_rows": int(kd_rows.sum()),
            "cache_bytes_per_token": cache_bytes, "run_name": p.run_name, "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", nargs="?", default="params/smollm2-135m_to_pruned20_cpu.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per kind (median reported)")
    parser.add_argument("--k", type=int, help="kept teacher tokens per position for the cached step "
                        "(default: the profile's teacher_cache_k)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.k is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

        args.k = params.load(args.params).teacher_cache_k
    if args.one:
        print(json.dumps(measure(args.params, args.one, args.steps, args.k)))
        return 0
    out = {}
    for kind in KINDS:
        res = subprocess.run([sys.executable, __file__, args.params, "--steps", str(args.steps), "--k", str(args.k),
                              "--one", kind], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{kind:28} median {out[kind]['median_s']:7.3f} s   peak RSS {out[kind]['peak_rss_mb']:7.0f} MB", flush=True)
    ce, fwd = out["ce_step"]["median_s"], out["teacher_forward"]["median_s"]
    live, cached = out["kd_live_step"]["median_s"], out["kd_cached_step"]["median_s"]
    summary = {"ce_step_s": ce, "teacher_forward_s": fwd, "kd_live_step_s": live, "kd_cached_step_s": cached,
               "kd_cached_live_hidden_step_s": out["kd_cached_live_hidden_step"]["median_s"],
               "onpolicy_step_s": out["onpolicy_step"]["median_s"],
               "onpolicy_vs_ce": out["onpolicy_step"]["median_s"] / ce,
               "cache_bytes_per_token": out["kd_cached_step"]["cache_bytes_per_token"],
               "live_vs_ce_plus_teacher": live / (ce + fwd), "cached_vs_ce": cached / ce, "live_vs_ce": live / ce,
               "goals": {"kd_live_step_s <= 1.10 x (ce_step_s + teacher_forward_s)": live <= 1.10 * (ce + fwd),
                         "kd_cached_step_s <= 1.05 x ce_step_s": cached <= 1.05 * ce},
               "chunked_vs_dense": {
                   where: {"time": out[f"{pre}_chunked_step"]["median_s"] / out[f"{pre}_dense_step"]["median_s"],
                           "peak_rss": out[f"{pre}_chunked_step"]["peak_rss_mb"] / out[f"{pre}_dense_step"]["peak_rss_mb"]}
                   for where, pre in (("profile_positions", "kd_live"), ("all_positions", "kd_all"))},
               "all_cached_vs_all_dense": {
                   "time": out["kd_all_cached_step"]["median_s"] / out["kd_all_dense_step"]["median_s"],
                   "peak_rss": out["kd_all_cached_step"]["peak_rss_mb"] / out["kd_all_dense_step"]["peak_rss_mb"]},
               "peak_rss_mb": {k_: v["peak_rss_mb"] for k_, v in out.items()}, "details": out}
    print(f"\nkd_live / (ce + teacher forward) = {summary['live_vs_ce_plus_teacher']:.2f}x   (goal <= 1.10)")
    print(f"kd_cached / ce                    = {summary['cached_vs_ce']:.2f}x   (goal <= 1.05)")
    print(f"kd_live / ce                      = {summary['live_vs_ce']:.2f}x")
    print(f"on-policy / ce                    = {summary['onpolicy_vs_ce']:.2f}x   (the student samples, the teacher "
          "scores)")
    print(f"cache bytes per token (k = {args.k}): {summary['cache_bytes_per_token']}")
    for where, r in summary["chunked_vs_dense"].items():
        print(f"chunked / dense, {where:17}: time {r['time']:.2f}x, peak RSS {r['peak_rss']:.2f}x")
    r = summary["all_cached_vs_all_dense"]
    print(f"cached / dense, all positions    : time {r['time']:.2f}x, peak RSS {r['peak_rss']:.2f}x")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

    report = params.load(args.params).report_dir / "step_cost.json"
    paths.write_text_atomic(report, json.dumps(summary, indent=1))
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
