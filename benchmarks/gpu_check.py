"""The training path on a CUDA device, on the tiny Gemma-architecture models (no hub, no GGUF needed).

Checks what the CPU tests cannot: on the GPU, in float32 and bfloat16,
- compute_loss with logits only at the rows a loss reads equals CE + KD taken from full logits, for
  distill_positions answer and all, with the live teacher;
- the teacher cache filled by the teacher on the GPU feeds a cached distillation step whose KD term equals the
  sparse divergence taken from full logits;
- a few real training steps (HF Trainer, LoRA) with the live teacher and with cached targets run, with finite
  and falling losses; peak GPU memory of each.
Writes a JSON report (--out) and exits 1 when a check fails.
Run (a CUDA machine): python benchmarks/gpu_check.py --squad-dir <folder with train.jsonl.gz> --out gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from distill.core import params
from distill.kd import losses
from distill.kd.trainer import DistillationTrainer
from distill.parts import data, models, teacher_cache
from distill.parts.tiny import ensure_tiny_model
from distill.study import training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    import torch


    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this check is for a GPU machine")
    device = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checks": {}}
    import transformers

    report["transformers"] = transformers.__version__
    t_path, s_path = ensure_tiny_model("teacher", args.squad_dir), ensure_tiny_model("student", args.squad_dir)
    tok = models.load_tokenizer(str(t_path))
    rows = data.load_squad("train", args.squad_dir, pool_rows=80)
    feats = data.encode_examples(rows, tok, 160, seed=0).features
    collate = data.TrainCollator(tok.pad_token_id)
    ok = True

    def record(name: str, passed: bool, **values) -> None:
        nonlocal ok
        ok &= passed
        report["checks"][name] = {"passed": passed, **values}
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {values}", flush=True)

    base = dict(run_name="gpu", device="cuda", max_steps=6, batch_size=4, eval_steps=3, learning_rate=1e-2,
                warmup_ratio=0.0, lora_r=4, lora_alpha=8, alpha_ce=1.0, gamma_kl=1.0, beta_mse=0.0, temperature=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for dtype, rel in (("float32", 1e-4), ("bfloat16", 2e-2)):
            teacher = models.freeze(models.load_model(str(t_path), dtype=dtype, device=device))
            student = models.apply_lora(models.load_model(str(s_path), dtype=dtype, device=device), 4, 8, 0.0)
            student.train()
            batch = {k: v.to(device) for k, v in collate(feats[:4]).items()}
            answer = batch["labels"][:, 1:] != -100
            real = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
            with torch.no_grad():
                s_full = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                t_full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for positions, kd_mask in (("answer", answer), ("all", real)):
                p = params.from_mapping({**base, "distill_positions": positions})
                cfg = training.loss_config(p, 2, 4, len(tok))
                cfg.positions_per_answer_token = 1.0
                trainer = DistillationTrainer(model=student, teacher=teacher, loss_config=cfg,
                                              args=training.training_args(p, tmp / "x", 1, 1e-3, evaluate=False))
                got = float(trainer.compute_loss(student, batch))
                want = float(losses.answer_ce(s_full, batch["labels"]) + losses.kd_divergence(
                    s_full[:, :-1], t_full[:, :-1], kd_mask, temperature=2.0, num_items=int(answer.sum()),
                    vocab_size=len(tok)))
                record(f"row-selective loss equals full logits ({dtype}, {positions})",
                       abs(got - want) <= rel * abs(want), loss=got, full_logits=want)

            store = tmp / f"store-{dtype}"
            cfg_cache = teacher_cache.cache_config(str(t_path), tok, 160, 2.0, "sampled", 12, positions="answer")
            fill = teacher_cache.fill(store, cfg_cache, {"r": feats[:40]}, teacher, device, 8, tok.pad_token_id)
            cached = teacher_cache.CachedTargets(store / "views" / "r.json")
            sparse_batch = teacher_cache.CachedTeacherCollator(collate, cached)(feats[:4])
            sparse_batch = {k: v.to(device) for k, v in sparse_batch.items()}
            p = params.from_mapping({**base, "distill_positions": "answer", "teacher_cache": "sampled",
                                     "teacher_cache_k": 12})
            cfg = training.loss_config(p, 2, 4, len(tok))
            trainer = DistillationTrainer(model=student, teacher=None, loss_config=cfg,
                                          args=training.training_args(p, tmp / "x", 1, 1e-3, evaluate=False))
            trainer.compute_loss(student, sparse_batch)
            got_kd = trainer.meter.pop("train", 1)["kd"]
            want_kd = float(losses.sampled_kd_divergence(
                s_full[:, :-1], sparse_batch["teacher_ids"], sparse_batch["teacher_logprobs"],
                sparse_batch["teacher_counts"], answer, temperature=2.0, num_items=int(answer.sum())))
            record(f"cached sampled KD equals the sparse divergence on full logits ({dtype})",
                   abs(got_kd - want_kd) <= rel * abs(want_kd) + 1e-6, kd=got_kd, full_logits=want_kd,
                   cache_positions=fill.computed_positions)
            del teacher, student

        for mode in ("live", "cached"):
            torch.cuda.reset_peak_memory_stats()
            teacher = models.freeze(models.load_model(str(t_path), device=device))
            student = models.apply_lora(models.load_model(str(s_path), device=device), 4, 8, 0.0)
            extra = {"teacher_cache": "sampled", "teacher_cache_k": 12} if mode == "cached" else {}
            p = params.from_mapping({**base, "distill_positions": "answer", **extra, "output_dir": str(tmp / mode)})
            cfg = training.loss_config(p, 2, 4, len(tok))
            targets = None
            if mode == "cached":
                targets = teacher_cache.CachedTargets(store.parent / "store-float32" / "views" / "r.json")
            start = time.perf_counter()
            res = training.train(p, student, tok, feats[:32], feats[32:40], tmp / mode / "run",
                                 teacher=teacher if mode == "live" else None, cfg=cfg, teacher_targets=targets)
            seconds = time.perf_counter() - start
            train_losses = [e["loss"] for e in res.log_history if "loss" in e]
            on_gpu = next(q for q in student.parameters()).device.type == "cuda"
            record(f"{mode} distillation trains on the GPU",
                   on_gpu and all(map(lambda x: x == x and abs(x) < 1e4, train_losses))
                   and train_losses[-1] < train_losses[0],
                   train_losses=[round(x, 4) for x in train_losses], seconds=round(seconds, 1),
                   peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 1e6, 1))
            del teacher, student
    report["passed"] = ok
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("all checks passed" if ok else "SOME CHECKS FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
