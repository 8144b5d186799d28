# %% [markdown]
# # 04 · How small can the student get?

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the scored questions and of the teacher
capacity_keep: list = []  # student sizes of the grid, in teacher layers (the pipeline injects the profile's)
capacity_seeds: list = [0, 1, 2]  # training seeds of every size
capacity_questions: int = 300  # validation questions every model answers
latency_prompts: int = 24  # questions answered one at a time for the batch-1 latency

# %%
from IPython.display import HTML, display

from distill.core import params
from distill.report import capacity_report, plots, summaries
from distill.study import layout

p = layout.notebook_params(params.from_notebook(globals()))
scores = capacity_report.load_scores(layout.pipeline_run(p))  # as the grid's score stages wrote them
result = capacity_report.analyse(scores)
capacity_report.write(p, scores, result)

# %% tags=["summary"]
fig = plots.capacity_curve(result, "params_m", "parameters (M)",
                           f"{p.run_name}: F1 vs parameters (mean of {len(p.capacity_seeds)} seeds, 95% interval "
                           "over questions)")
plots.save(fig, p.report_dir, "capacity_f1_vs_params", show=False)
summaries.show("\n".join(f"- {line}" for line in capacity_report.headline(result)),
               p.report_dir / "capacity_f1_vs_params.png")

# %% [markdown]
# ## What the curve shows
# Each point is one student size and training (CE-only: the gold answer only; distilled: the gold answer plus the
# teacher's cached distribution), its F1 the mean over seeds and questions; whiskers are 95% t intervals over the
# questions of the seed-averaged F1. The solid line is the teacher, the dashed line 90% of it.

# %%
fig = plots.capacity_gain(result, f"{p.run_name}: what distillation adds over CE-only, per size (bars: mean; "
                                  "whiskers: 95% interval over questions; dots: seeds)")
plots.save(fig, p.report_dir, "capacity_distillation_gain")
display(HTML(capacity_report.gains_table(result).round(3).to_html(index=False)))

# %% [markdown]
# Green bars: the interval lies above 0 (distillation helps); red: below 0 (it hurts); blue: unresolved. The
# answer-loss change is distilled minus CE-only in nats (lower is better), with a t interval over seeds.

# %%
fig = plots.capacity_curve(result, "latency_batch1_fixed_ms_median",
                           "per-request latency at batch 1, fixed answer length (ms, median)",
                           f"{p.run_name}: F1 vs latency (one question at a time, the same number of tokens each)")
plots.save(fig, p.report_dir, "capacity_f1_vs_latency")

# %% [markdown]
# ## Every model
# Means over seeds. "kept F1" is the student's F1 as a share of the teacher's on the same questions (95% paired
# bootstrap interval over questions). Latency: each of the first `latency_prompts` scored questions answered alone
# (batch 1, greedy), median and 90th percentile, twice: at a fixed answer length of `max_new_tokens` tokens (the
# architecture's cost; the chart above) and until the model's own answer ends (what a user waits for: a student
# that rambles waits longer). Speedups are the teacher's median over the student's.

# %%
display(HTML(capacity_report.table(result).round(2).to_html(index=False, na_rep="")))

# %% [markdown]
# ## How it was measured
# - Students: the teacher's first and last layers plus the middle layers with the highest measured importance
#   (1 - cosine between a layer's input and output on training prompts, measured in 00_teacher), cut from the
#   SQuAD-tuned teacher; then a LoRA adapter trained CE-only or distilled, merged for scoring.
# - Per seed, every size trains on the same examples in the same order; seeds change the examples, windows, LoRA
#   init and order.
# - Every model answers the same validation questions (EM/F1 by the official SQuAD v1.1 normalisation); the
#   answer loss and top-1 are teacher-forced on the gold answer. `capacity.json` beside this page holds one record
#   per scored model and each model's per-question F1 and predictions.

# %%
print(f"{len(scores)} scored models: the teacher and {len(p.capacity_keep)} sizes x 2 trainings x "
      f"{len(p.capacity_seeds)} seeds, each on {result['n_questions']} questions")
