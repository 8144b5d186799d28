# %% [markdown]
# # 01 · Distilling the student
#
# The student (a LoRA adapter, or the full student) learns from the gold answer and from the
# teacher: `alpha_ce` x CE on the answer + `gamma_kl` x T² x KL between the temperature-softened
# teacher and student distributions + `beta_mse` x the normalised MSE between mapped hidden states.
# The pipeline runs this notebook twice with the same data, steps and seed: `variant: distilled`, and
# `variant: ce_baseline` with `gamma_kl: 0, beta_mse: 0` (the CE-only student), so the benchmark can
# show what the teacher adds. Each cell below is one step; run, inspect and re-run them one at a time.
# Run by hand (JupyterLab), the notebook writes to a run folder of its own (`_lab_<run>_<settings>`),
# reading the pipeline run's tuned teacher, pruned student and teacher cache, and never touches that run's files.

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
variant: str = "distilled"  # distilled or ce_baseline (gamma_kl = beta_mse = 0)
seed: int = 0  # seed for subsets, windows and training
teacher: str = "tiny:teacher"  # hub id, folder, gguf:<wheel>==<ver>/<file>.gguf or tiny:<name>
student: str = "tiny:student"  # hub id, folder, tiny:<name> or prune
teacher_load_in_4bit: bool = True  # NF4 4-bit teacher (bitsandbytes)
teacher_finetune: bool = True  # distil from the SQuAD-tuned teacher made by 00_teacher
data_pool_rows: int = 400  # read only the first N rows of each split (0 = all)
train_size: int = 32  # training examples with their gold answers
teacher_answered_size: int = 0  # more train questions, answered by the teacher (gold never read); 0 = gold only
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
num_processes: int = 1  # training processes; > 1 launches them with accelerate (batch_size each)
eval_steps: int = 2  # evaluate and checkpoint every N steps
alpha_ce: float = 1.0  # weight of CE on the gold answer
gamma_kl: float = 1.0  # weight of the divergence (x T^2)
beta_mse: float = 0.1  # weight of the hidden-state loss
temperature: float = 2.0  # softening temperature
kd_kind: str = "forward_kl"  # forward_kl, reverse_kl or jsd
distill_positions: str = "all"  # teacher terms on answer tokens or on every real token
lmbda: float = 0.0  # on-policy: share of batches the student answers itself, scored by the live teacher

# %%
import dataclasses

import pandas as pd
from IPython.display import display

from distill.core import params, paths
from distill.report import plots, summaries
from distill.study import layout, steps, training

p = layout.notebook_params(params.from_notebook(globals()))
report = p.report_dir
device = training.setup(p)
print(f"run {p.run_name}, variant {p.variant} on {device}: alpha_ce {p.alpha_ce}, gamma_kl {p.gamma_kl}, "
      f"beta_mse {p.beta_mse}, T {p.temperature}, {p.kd_kind} on {p.distill_positions} positions")

# %% [markdown]
# ## Data
# Disjoint, seeded subsets of SQuAD train: the training examples, the held-out examples for the eval loss, the
# contexts of the recovery phase, and the questions the teacher answered (`teacher_answered_size`; their gold answers
# never read: the student trains on the teacher's answer). Prompts use the tokenizer's chat template (or a plain Context / Question /
# Answer prompt); labels are -100 everywhere except the answer tokens. Contexts longer than the budget are
# windowed so that the answer and the question always survive; the window's position is drawn at random (seeded).

# %%
sets = steps.load_data(p)
display(pd.DataFrame({"examples": {"train (gold answers)": len(sets.train_rows),
                                   "train (teacher-answered questions)": len(sets.answered_rows),
                                   "eval": len(sets.eval_rows), "recovery contexts": len(sets.recovery_rows)}}))
display(pd.DataFrame(sets.train_rows[:3])[["question", "answers"]])

# %%
student, tokenizer = steps.load_student(p, device)
encoded = steps.encode_training(p, tokenizer, sets)
display(pd.DataFrame({name: {**steps.length_stats(enc)} for name, enc in (("train", encoded["train"]),
                                                                        ("eval", encoded["eval"]))}).T.round(1))
plots.save(plots.token_lengths(list(encoded["train"].lengths), p.max_length, f"{p.run_name}: training examples"),
           report, f"token_lengths_{p.variant}")
print("one training example, answer tokens in [[ ]]:")
print(training.marked_example(tokenizer, encoded["train"].features[0]))

# %% [markdown]
# ## The teacher
# The teacher runs in `eval()` under `no_grad`, frozen, and is loaded only when a step needs it live: with
# `teacher_cache` its sparse targets come from the cache made once by the pipeline, and it runs only for the
# hidden-state term. Teacher and student must share one vocabulary.

# %%
teacher = training.load_teacher_signal(p, tokenizer, student, device)
print(f"teacher targets: {teacher.source}"
      + (f"; vocabulary {teacher.vocab_size}, teacher layers {teacher.layers}" if p.uses_teacher else ""))

# %% [markdown]
# ## The loss, and its terms on one batch before training
# The layer map sends each student layer to a teacher layer (a student cut from the teacher: the layer it was
# copied from); a learned projection maps the student's width to the teacher's. The next cell computes every term
# on one batch, as a training step would, without training: change the configuration and re-run it, e.g.
# `cfg_try = dataclasses.replace(cfg, temperature=4.0, kd_kind="reverse_kl")`.

# %%
cfg, projection = training.build_loss(p, student, teacher, encoded["train"].features)
student = training.adapt(p, student)
display(pd.DataFrame({"value": {k: str(v) for k, v in dataclasses.asdict(cfg).items()}}))
display(pd.DataFrame({"parameters (M)": {k: v / 1e6 for k, v in
                                         training.parameter_counts(student, teacher, projection).items()}}).round(3))

# %%
batch = encoded["train"].features[: p.batch_size]
display(pd.DataFrame({"one batch, before training": training.loss_on_batch(student, tokenizer, batch, cfg, teacher,
                                                                           projection)}).round(4))

# %% [markdown]
# ## Training
# First the recovery phase (when `recovery_steps` > 0): a student cut from the teacher relearns language on the
# SQuAD contexts, CE on every token plus (distilled) the teacher's distribution on every token, as Minitron does.
# Then the training on SQuAD answers; the best checkpoint by eval answer CE (the same yardstick for the distilled
# and the CE-only student; `eval_total` is the composite) is saved to `<run>/students/<variant>/best`.
# With `num_processes` > 1 this cell starts the processes with `accelerate launch` (`accelerate_config`; DDP by
# default), each running the steps above; the global batch is `batch_size` x `num_processes` x `grad_accum_steps`.

# %%
if p.num_processes == 1:
    outcome = training.fit(p, student, tokenizer, encoded, teacher, cfg, projection)
else:
    outcome = training.fit_on_ranks(p)
print(f"trained on {outcome.processes} process{'es' if outcome.processes > 1 else ''}; {outcome.recovery}")

# %% [markdown]
# ## The curves and the best checkpoint

# %%
if p.recovery_steps:
    plots.save(plots.loss_components(outcome.recovery_history, f"{p.run_name} {p.variant}: recovery phase"),
               report, f"recovery_loss_components_{p.variant}")
history = outcome.history
eval_log = [e for e in history if "eval_loss" in e]
print(f"{outcome.global_step} steps; best eval answer CE {outcome.best_metric:.4f} (step {outcome.best_step}); saved to "
      f"{paths.shown(outcome.best_dir)}")
plots.save(plots.loss_components(history, f"{p.run_name} {p.variant}: loss components"),
           report, f"loss_components_{p.variant}", show=False)  # the summary shows it first
display(pd.DataFrame(eval_log).filter(regex=r"^(step|eval_(ce|kd|hidden|total))$").round(4))
paths.write_json(report / f"log_history_{p.variant}.json", history)

# %% tags=["summary"]
summaries.show(summaries.training(p, history, outcome.best_step, outcome.best_metric, outcome.train_examples,
                                  outcome.global_step),
               report / f"loss_components_{p.variant}.png")
