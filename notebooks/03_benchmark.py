# %% [markdown]
# # 03 · Teacher vs students: size, speed, memory and SQuAD EM/F1

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the subsets
bench_size: int = 8  # validation questions scored
max_new_tokens: int = 8  # greedy decoding budget
bench_batch_size: int = 4  # prompts per generation batch

# %%
import pandas as pd
from IPython.display import HTML, Image, display

from distill.core import params
from distill.report import plots, results, summaries, sweeps
from distill.study import layout

p = layout.notebook_params(params.from_notebook(globals()))
run = layout.pipeline_run(p)  # the run whose score and speed stages measured the models
names = {"teacher": results.TEACHER, "student_before": results.BEFORE, "ce_baseline": results.BASELINE,
         "distilled": results.DISTILLED}
measured = {label: layout.measurements(run, model) for model, label in names.items()}
table = results.table(measured)
meta = {"run_name": p.run_name, "n_examples": measured[results.TEACHER]["n_examples"],
        "max_new_tokens": p.max_new_tokens, "batch_size": p.bench_batch_size,
        "latency_prompts": measured[results.TEACHER]["latency_batch1_prompts"],
        "device": measured[results.TEACHER]["device"],
        "memory_kind": measured[results.TEACHER]["peak_memory_kind"],
        "teacher_disk_kind": measured[results.TEACHER]["disk_kind"],
        "runtime_rss_mb": {n: r["runtime_rss_mb"] for n, r in measured.items()},
        "question_ids": measured[results.TEACHER]["question_ids"]}
results.write(table, measured, meta, p.report_dir)
sweep_pair, sweep_missing = sweeps.paired_gain(run)

# %% [markdown]
# ## How it was measured
# Four models on the same validation questions: the teacher as the study loads it (4-bit where the profile says
# so), the student before training, the CE-only student and the distilled student. The pipeline's
# `score-<model>` stages scored each model's greedy answers (EM/F1 by the official SQuAD v1.1 normalisation;
# `predictions_<model>.json` beside this page re-score with the official script) and its teacher-forced answer
# loss and top-1 (no generation, far less noisy). Its `speed-<model>` stages timed each model alone in a fresh
# process, so peak memory is the model's own (on a GPU: CUDA max allocated):
# - **latency**: one question at a time (batch 1), greedy, from prompt ids to answer ids, median and 90th
#   percentile over the first `latency_prompts` questions; until the answer ends (what a user waits for), and at
#   a fixed `max_new_tokens` tokens (the architecture's cost, the same work for every model);
# - **throughput**: answers per second with `bench_batch_size` prompts per batch (left padding), warm-up excluded.

# %%
for col, label, _ in results.METRICS:
    fig = plots.metric_bars(table, col, results.TEACHER, f"{p.run_name}: {label}", label)
    plots.save(fig, p.report_dir, f"{col}_by_model")

# %% [markdown]
# ## Is the gap between the students real?
# One run's gap between the distilled and the CE-only student is noise until it exceeds the seed-to-seed spread.
# `make sweep` retrains both students over several seeds from this run's teacher and pruned student and scores
# them on the same questions; its paired differences are shown here when they were made from this run's models.

# %%
paired_chart = sweeps.sweeps_dir(p) / "paired_differences.png"
if sweep_pair is not None and paired_chart.exists():
    display(Image(filename=str(paired_chart)))
else:
    print(f"No seed sweep of this run's models: {sweep_missing}.")

# %% [markdown]
# ## What was scored
# The first answers of every model, raw (before the shared post-processing: first line, trimmed).

# %%
raw = pd.DataFrame({"gold": [r[0] for r in measured[results.TEACHER]["references"][:5]],
                    **{n: r["raw_generations"][:5] for n, r in measured.items()}})
with pd.option_context("display.max_colwidth", 40):
    display(raw)

# %% tags=["summary"]
plots.save(plots.f1_vs_latency(table, f"{p.run_name}: F1 vs per-question latency"), p.report_dir, "f1_vs_latency",
           show=False)
summaries.show(summaries.benchmark(table, sweep_pair, sweep_missing, meta), p.report_dir / "f1_vs_latency.png")
display(HTML(results.comparison_frame(table).to_html(classes="results", index_names=False)))
