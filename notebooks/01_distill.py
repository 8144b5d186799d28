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
num_processes: int = 1  # training processes; > 1 launches them with accelerate (batch_size each)
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

from distill import params, paths, plots, student_training, study, summaries

p = params.from_notebook(globals())
report = p.report_dir
print(f"run {p.run_name}, variant {p.variant}: alpha_ce {p.alpha_ce}, gamma_kl {p.gamma_kl}, beta_mse {p.beta_mse}, "
      f"T {p.temperature}, {p.kd_kind} on {p.distill_positions} positions")

# %% [markdown]
# ## Training
# With `num_processes: 1` the student trains in this kernel. With more, this cell starts them with
# `accelerate launch` (the config file is `accelerate_config`; DDP by default) and streams their progress to the
# terminal. Each process takes `batch_size` examples per forward pass: the global batch is
# `batch_size` x `num_processes` x `grad_accum_steps`.
# Either way the rest of this page is drawn from the same record of the run (`training_outcome.json`).
#
# The teacher runs in `eval()` under `no_grad`, frozen; it is loaded only when a step needs it live (with
# `teacher_cache` its sparse targets come from the cache, and it runs only for the hidden-state term).
# Teacher and student must share one vocabulary; the layer map sends each student layer to a teacher
# layer, and a learned projection maps the student's width to the teacher's.

# %%
outcome = student_training.train_student(p)
print(f"trained on {outcome.processes} process{'es' if outcome.processes > 1 else ''}; teacher targets: "
      f"{outcome.teacher_targets}")

# %% [markdown]
# ## Data
# Prompts use the tokenizer's chat template; labels are -100 everywhere except the answer tokens.
# Contexts longer than the budget are windowed so that the answer and the question always survive;
# the window's position around the answer is drawn at random (seeded).

# %%
display(pd.DataFrame(outcome.length_stats).T.round(1))
plots.save(plots.token_lengths(outcome.train_lengths, p.max_length, f"{p.run_name}: training examples"),
           report, f"token_lengths_{p.variant}")
print("one training example, answer tokens marked by the labels:")
print(outcome.example)

# %% [markdown]
# ## Models

# %%
display(pd.DataFrame({"parameters (M)": {k: v / 1e6 for k, v in outcome.parameters.items()}}).round(3))
print(f"layer map (student layer -> teacher layer): {outcome.layer_map if p.beta_mse > 0 else 'unused (beta_mse 0)'}")

# %% [markdown]
# ## Recovery phase (when `recovery_steps` > 0)
# A student cut from the teacher first relearns language on the SQuAD contexts: CE on every token,
# plus (for the distilled variant) the teacher's distribution on every token, as Minitron does.

# %%
print(outcome.recovery)
if p.recovery_steps:
    plots.save(plots.loss_components(outcome.recovery_history, f"{p.run_name} {p.variant}: recovery phase"),
               report, f"recovery_loss_components_{p.variant}")

# %% [markdown]
# ## Training on SQuAD answers
# The best checkpoint by eval answer CE (the same yardstick for the distilled and the CE-only student;
# `eval_total` is the composite) is kept and saved (adapter or full student, plus the projection) to
# `<run>/students/<variant>/best`.

# %%
history = outcome.history
eval_log = [e for e in history if "eval_loss" in e]
print(f"{outcome.global_step} steps; best eval answer CE {outcome.best_metric:.4f} (step {outcome.best_step}); saved to "
      f"{paths.shown(outcome.best_dir)}")
plots.save(plots.loss_components(history, f"{p.run_name} {p.variant}: loss components"),
           report, f"loss_components_{p.variant}", show=False)  # the summary shows it first
display(pd.DataFrame(eval_log).filter(regex=r"^(step|eval_(ce|kd|hidden|total))$").round(4))

# %%
study.write_json(report / f"log_history_{p.variant}.json", history)

# %% tags=["summary"]
summaries.show(summaries.training(p, history, outcome.best_step, outcome.best_metric, outcome.train_examples,
                                  outcome.global_step),
               report / f"loss_components_{p.variant}.png")
