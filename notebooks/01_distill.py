# %% [markdown]
# # 01 · Distilling the student
#
# The student (a LoRA adapter, or the full student) learns from the gold answer and from the
# teacher: `alpha_ce` x CE on the answer + `gamma_kl` x T² x KL between the temperature-softened
# teacher and student distributions + `beta_mse` x the normalised MSE between mapped hidden states.
# The runner runs this notebook twice with the same data, steps and seed: `variant: distilled`, and
# `variant: ce_baseline` with `gamma_kl: 0, beta_mse: 0` (the CE-only student), so the benchmark can
# show what the teacher adds.

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
variant: str = "distilled"  # distilled or ce_baseline (gamma_kl = beta_mse = 0)
seed: int = 0  # seed for subsets, windows and training
teacher: str = "tiny:teacher"  # hub id, folder, gguf:<wheel>==<ver>/<file>.gguf or tiny:<name>
student: str = "tiny:student"  # hub id, folder, tiny:<name> or prune
teacher_load_in_4bit: bool = True  # NF4 4-bit teacher (bitsandbytes)
teacher_finetune: bool = True  # distil from the SQuAD-tuned teacher made by 00_teacher
data_pool_rows: int = 400  # read only the first N rows of each split (0 = all)
train_size: int = 32  # training examples
eval_size: int = 8  # held-out examples for the eval loss
max_length: int = 128  # tokens per example; long contexts are windowed around the answer
recovery_size: int = 8  # contexts for the recovery phase (0 = off)
recovery_steps: int = 1  # optimizer steps of the recovery phase
use_lora: bool = True  # LoRA adapter (false: full student)
lora_r: int = 4  # LoRA rank
lora_alpha: int = 8  # LoRA scale numerator
learning_rate: float = 1.0e-3  # peak learning rate
max_steps: int = 4  # optimizer steps
batch_size: int = 4  # examples per forward pass
grad_accum_steps: int = 1  # forward passes per optimizer step
eval_steps: int = 2  # evaluate and checkpoint every N steps
alpha_ce: float = 1.0  # weight of CE on the gold answer
gamma_kl: float = 1.0  # weight of the divergence (x T^2)
beta_mse: float = 0.1  # weight of the hidden-state loss
temperature: float = 2.0  # softening temperature
kd_kind: str = "forward_kl"  # forward_kl, reverse_kl or jsd
distill_positions: str = "all"  # teacher terms on answer tokens or on every real token

# %%
import pandas as pd
from IPython.display import display

from distill import data, losses, models, params, paths, plots, study, summaries, training

p = params.from_notebook(globals())
models.setup_torch(p.seed, p.torch_threads)
device = models.resolve_device(p.device)
report = p.report_dir
out_dir = study.variant_dir(p, p.variant)
print(f"run {p.run_name}, variant {p.variant}: alpha_ce {p.alpha_ce}, gamma_kl {p.gamma_kl}, beta_mse {p.beta_mse}, "
      f"T {p.temperature}, {p.kd_kind} on {p.distill_positions} positions")

# %% [markdown]
# ## Data
# Prompts use the tokenizer's chat template; labels are -100 everywhere except the answer tokens.
# Contexts longer than the budget are windowed so that the answer and the question always survive;
# the window's position around the answer is drawn at random (seeded).

# %%
sets = study.load_data(p)
student_model, tokenizer = study.load_student(p, device)
encoded = study.encode_training(p, tokenizer, sets)
train_enc, eval_enc = encoded["train"], encoded["eval"]
stats = pd.DataFrame({"train": data.length_stats(train_enc.lengths), "eval": data.length_stats(eval_enc.lengths)}).T
stats["windowed"] = [train_enc.windowed, eval_enc.windowed]
stats["dropped"] = [train_enc.dropped, eval_enc.dropped]
display(stats.round(1))
plots.save(plots.token_lengths(train_enc.lengths, p.max_length, f"{p.run_name}: training examples"),
           report, f"token_lengths_{p.variant}")
example = train_enc.features[0]
print("one training example, answer tokens marked by the labels:")
print(tokenizer.decode(example["input_ids"][: example["prompt_len"]])[-300:], "[[",
      tokenizer.decode([t for t in example["labels"] if t != -100]), "]]")

# %% [markdown]
# ## Models
# The teacher runs in `eval()` under `no_grad`, frozen; it is loaded only when a step needs it live (with
# `teacher_cache` its sparse targets come from the cache, and it runs only for the hidden-state term).
# Teacher and student must share one vocabulary; the layer map sends each student layer to a teacher
# layer, and a learned projection maps the student's width to the teacher's.

# %%
teacher_model = None
vocab_size = len(tokenizer)
n_student = len(models.decoder_layers(student_model))
n_teacher = n_student
targets = study.cached_targets(p, tokenizer) if p.uses_teacher_cache else None
if targets is not None:
    print(f"teacher targets: {p.teacher_cache} (k = {p.teacher_cache_k}) from {targets.view_path.parent.parent.name}, "
          f"{len(targets.entries)} examples")
if p.needs_live_teacher:
    teacher_model, teacher_tok = study.load_teacher(p, device)
    vocab_size = models.check_vocab_compatible(teacher_tok, tokenizer, teacher_model, student_model)
    n_teacher = len(models.decoder_layers(teacher_model))
pruned_from = getattr(student_model.config, "pruned_from_layers", None)
cfg = training.loss_config(p, n_student, n_teacher, vocab_size, pruned_from)
projection = None
if p.beta_mse > 0:
    projection = losses.HiddenProjection(student_model.config.hidden_size, teacher_model.config.hidden_size).to(device)
if p.use_lora:
    student_model = models.apply_lora(student_model, p.lora_r, p.lora_alpha, p.lora_dropout,
                                      p.lora_target_modules or None)
rows = {"student (total)": models.count_params(student_model),
        "student (trainable)": models.trainable_params(student_model)}
if teacher_model is not None:
    rows["teacher (as loaded)"] = models.count_params(teacher_model)
if projection is not None:
    rows["hidden projection (trainable)"] = sum(q.numel() for q in projection.parameters())
display(pd.DataFrame({"parameters (M)": {k: v / 1e6 for k, v in rows.items()}}).round(3))
print(f"layer map (student layer -> teacher layer): {cfg.layer_map if p.beta_mse > 0 else 'unused (beta_mse 0)'}")

# %% [markdown]
# ## Recovery phase (when `recovery_steps` > 0)
# A student cut from the teacher first relearns language on the SQuAD contexts: CE on every token,
# plus (for the distilled variant) the teacher's distribution on every token, as Minitron does.

# %%
inputs = study.training_inputs(p)
resume_from = training.checkpoint_to_resume(p, out_dir, cfg, inputs, projection)
if p.recovery_steps and resume_from is None:
    rec_cfg = training.loss_config(p.replace(distill_positions="all"), n_student, n_teacher, vocab_size, pruned_from)
    recovery = training.train(p, student_model, tokenizer, encoded["recovery"], [], out_dir / "recovery",
                              teacher=teacher_model, cfg=rec_cfg, max_steps=p.recovery_steps, projection=projection,
                              inputs=inputs, teacher_targets=targets)
    student_model = recovery.trainer.model
    recovery_history = recovery.log_history
elif p.recovery_steps:
    print(f"resuming from {resume_from.name}: it holds the weights after the recovery phase and the steps before it")
    recovery_history = training.read_log_history(out_dir / "recovery")
else:
    print("no recovery phase")
if p.recovery_steps:
    plots.save(plots.loss_components(recovery_history, f"{p.run_name} {p.variant}: recovery phase"),
               report, f"recovery_loss_components_{p.variant}")

# %% [markdown]
# ## Training on SQuAD answers
# The best checkpoint by eval answer CE (the same yardstick for the distilled and the CE-only student;
# `eval_total` is the composite) is kept and saved (adapter or full student, plus the projection) to
# `<run>/students/<variant>/best`.

# %%
result = training.train(p, student_model, tokenizer, train_enc.features, eval_enc.features, out_dir,
                        teacher=teacher_model, cfg=cfg, projection=projection, inputs=inputs,
                        teacher_targets=targets)
history = result.log_history
train_log = [e for e in history if "loss" in e]
eval_log = [e for e in history if "eval_loss" in e]
state = result.trainer.state
best_step = int(state.best_model_checkpoint.rsplit("-", 1)[1]) if state.best_model_checkpoint else None
print(f"{state.global_step} steps; best eval answer CE {state.best_metric:.4f} (step {best_step}); saved to "
      f"{paths.shown(result.best_dir)}")
plots.save(plots.loss_components(history, f"{p.run_name} {p.variant}: loss components"),
           report, f"loss_components_{p.variant}", show=False)  # the summary shows it first
display(pd.DataFrame(eval_log).filter(regex=r"^(step|eval_(ce|kd|hidden|total))$").round(4))

# %%
study.write_json(report / f"log_history_{p.variant}.json", history)

# %% tags=["summary"]
summaries.show(summaries.training(p, history, best_step, state.best_metric, len(train_enc.features), state.global_step),
               report / f"loss_components_{p.variant}.png")
