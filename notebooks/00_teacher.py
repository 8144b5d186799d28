# %% [markdown]
# # 00 · The teacher: how good is it, and the student we cut from it
#
# Distillation can only pass on what the teacher knows. This notebook measures the teacher on
# SQuAD v1.1 zero-shot, fine-tunes it on SQuAD train when the profile asks for it, and, when the
# student is `prune`, builds the student from the (tuned) teacher's layers, chosen by measurement.

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed for subsets, windows and training
teacher: str = "tiny:teacher"  # hub id, folder, gguf:<wheel>==<ver>/<file>.gguf or tiny:<name>
student: str = "tiny:student"  # hub id, folder, tiny:<name> or prune
teacher_load_in_4bit: bool = True  # NF4 4-bit teacher (bitsandbytes)
teacher_finetune: bool = True  # fine-tune the teacher on SQuAD before distilling
teacher_finetune_train_size: int = 16  # SQuAD train examples for the teacher fine-tune
teacher_finetune_steps: int = 2  # optimizer steps of the teacher fine-tune
teacher_finetune_lr: float = 1.0e-3  # peak learning rate of the teacher fine-tune
prune_keep: int = 0  # prune: how many teacher layers the student keeps
prune_method: str = "importance"  # prune: importance or stride
data_pool_rows: int = 400  # read only the first N rows of each split (0 = all)
train_size: int = 32  # student training examples (disjoint from the teacher's)
eval_size: int = 8  # held-out examples for eval loss
bench_size: int = 8  # validation questions scored
max_length: int = 128  # tokens per example
recovery_size: int = 8  # contexts for the recovery phase
max_new_tokens: int = 8  # greedy decoding budget
bench_batch_size: int = 4  # prompts per generation batch

# %%
import pandas as pd
from IPython.display import display

from distill.core import params, paths
from distill.parts import benchmark, data, models, pruning, sources
from distill.report import plots, summaries
from distill.study import layout, steps, training

p = layout.notebook_params(params.from_notebook(globals()), makes_base_models=True)
models.setup_torch(p.seed, p.torch_threads)
device = models.resolve_device(p.device)
report = p.report_dir
sets = steps.load_data(p)
print(f"run {p.run_name}: teacher {p.teacher}, student {p.student}, device {device}")
print(f"SQuAD: {len(sets.train_rows)} train, {len(sets.eval_rows)} eval, {len(sets.teacher_rows)} teacher fine-tune, "
      f"{len(sets.recovery_rows)} recovery contexts; {len(sets.bench_rows)} validation questions scored")

# %% [markdown]
# ## The teacher as it comes
# Greedy answers to the scored validation questions, post-processed like every model's (first line,
# trimmed), scored with the official SQuAD v1.1 normalisation.

# %%
given_source = sources.resolve_source(p.teacher, p.squad_dir)
teacher_tok = models.load_tokenizer(given_source)
base_teacher = models.freeze(models.load_model(given_source, dtype=p.model_dtype, device=device))
eval_kwargs = dict(max_length=p.max_length, max_new_tokens=p.max_new_tokens, batch_size=p.bench_batch_size,
                   seed=p.seed, device=device)
teacher_params_m = models.count_params(base_teacher) / 1e6
zero_shot = benchmark.evaluate(base_teacher, teacher_tok, sets.bench_rows, **eval_kwargs, progress="teacher zero-shot")
scores = {"zero-shot": zero_shot}
print(f"parameters: {teacher_params_m:.1f} M")
print(f"zero-shot EM {zero_shot['exact_match']:.1f}  F1 {zero_shot['f1']:.1f}  "
      f"answer loss {zero_shot['answer_loss']:.2f} nats  top-1 {zero_shot['top1_accuracy']:.2f}")
display(pd.DataFrame({"question": [r["question"] for r in sets.bench_rows[:5]],
                      "gold": [r["answers"]["text"][0] for r in sets.bench_rows[:5]],
                      "raw generation": zero_shot["raw_generations"][:5]}))

# %% [markdown]
# ## Fine-tuning the teacher on SQuAD
# A teacher that answers in whole sentences teaches the student to do so too. When the profile
# sets `teacher_finetune`, the teacher learns the span format from SQuAD train (CE on answer tokens),
# and the study distils from that tuned teacher.

# %%
if p.teacher_finetune:
    del base_teacher
    tuning = training.finetune_teacher(p, sets.teacher_rows, device)
    tuned_teacher, _ = steps.load_teacher(p, device, quantize=False)
    scores["fine-tuned"] = benchmark.evaluate(tuned_teacher, teacher_tok, sets.bench_rows, **eval_kwargs,
                                              progress="tuned teacher")
    logged = [e for e in tuning["log_history"] if "loss" in e]
    fig = plots.line([e["step"] for e in logged], [e["loss"] for e in logged], "step", "answer CE (nats)",
                     f"{p.run_name}: teacher fine-tune, {tuning['examples']} examples")
    plots.save(fig, report, "teacher_finetune_loss")
else:
    tuned_teacher, tuning = base_teacher, None
    print("teacher_finetune is off: the study distils from the teacher as it comes")
fig = plots.scores_bars(scores, f"{p.run_name}: teacher on {len(sets.bench_rows)} validation questions")
plots.save(fig, report, "teacher_em_f1", show=False)  # the summary shows it first
display(pd.DataFrame({k: {m: v[m] for m in ("exact_match", "f1", "answer_loss", "top1_accuracy")}
                      for k, v in scores.items()}).T.round(3))

# %% [markdown]
# ## The student, cut from the teacher (only for `student: prune`)
# Each layer's importance is how much it turns the residual stream (1 - cosine between its input and
# output, averaged over real tokens of training prompts). The student keeps the first and last
# layers, then (in a model mixing sliding-window and full-attention layers, like Gemma 3, with
# `prune_keep_full_attention`) the full-attention ones, then the most important of the rest; candidates of several sizes are compared by their
# teacher-forced answer loss before any training (a uniform guess scores ln(vocab) nats).

# %%
if p.student == "prune":
    calib = steps.calibration_batches(sets.train_rows, teacher_tok, p, n_batches=2)
    importance = pruning.layer_importance(tuned_teacher, calib)
    n_layers = len(importance)
    kept = steps.pruned_layers(p, tuned_teacher.config, importance)
    eval_feats = data.encode_examples(sets.eval_rows, teacher_tok, p.max_length, p.seed).features
    candidates = sorted({k for k in (len(kept) - 4, len(kept) - 2, len(kept), len(kept) + 2, len(kept) + 4)
                         if 1 <= k < n_layers})
    comparison = []
    for k in candidates:
        layers = kept if k == len(kept) else steps.pruned_layers(p, tuned_teacher.config, importance, keep=k)
        candidate = pruning.prune_layers(tuned_teacher, layers)
        forced = benchmark.teacher_forced(candidate, eval_feats, teacher_tok.pad_token_id, p.batch_size, device)
        comparison.append({"layers kept": k, "answer loss": forced["answer_loss"],
                           "top-1": forced["top1_accuracy"], "layers": layers})
        del candidate
    display(pd.DataFrame(comparison).round(3))
    student_model = pruning.prune_layers(tuned_teacher, kept)
    steps.save_student_init(p, student_model, teacher_tok, {
        "kept_layers": kept, "importance": importance, "method": p.prune_method, "comparison": comparison,
        "full_attention_layers": pruning.full_attention_layers(tuned_teacher.config)})
    plots.save(plots.layer_importance(importance, kept, f"{p.run_name}: layer importance, {len(kept)} of {n_layers} kept",
                                      pruning.full_attention_layers(tuned_teacher.config)), report, "layer_importance")
    plots.save(plots.line([c["layers kept"] for c in comparison], [c["answer loss"] for c in comparison],
                          "layers kept", "teacher-forced answer loss (nats)",
                          f"{p.run_name}: pruned students before training"), report, "pruned_student_answer_loss")
    student = {"layers": len(kept), "teacher_layers": n_layers, "params_m": models.count_params(student_model) / 1e6,
               "teacher_params_m": teacher_params_m,
               "answer_loss": next(c["answer loss"] for c in comparison if c["layers kept"] == len(kept))}
    print(f"student: teacher layers {kept} ({len(kept)} of {n_layers}), {student['params_m']:.1f} M parameters")
else:
    student = None
    print(f"student {p.student} is given, not pruned")

# %%
paths.write_json(report / "teacher.json", {k: {m: v[m] for m in ("exact_match", "f1", "answer_loss", "top1_accuracy",
                                                                   "n_examples")} for k, v in scores.items()})

# %% tags=["summary"]
summaries.show(summaries.teacher(scores, tuning, student), report / "teacher_em_f1.png")
