# %% [markdown]
# # 03 · Teacher vs students: size, speed, memory and SQuAD EM/F1
#
# Four models on the same fixed validation sample: the teacher as the study loads it (4-bit where
# the profile says so), the student before training, the CE-only student and the distilled student.
# Each model runs in a fresh process that loads only that model, so its peak memory is its own
# (on a GPU: CUDA max allocated). Latency and throughput are greedy decoding of the same prompts,
# batched with left padding, warm-up excluded. EM/F1 use the official SQuAD v1.1 normalisation;
# the teacher-forced answer loss and top-1 accuracy need no generation and are far less noisy.

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the subsets
bench_size: int = 8  # validation questions scored
max_new_tokens: int = 8  # greedy decoding budget
bench_batch_size: int = 4  # prompts per generation batch

# %%
import pandas as pd
from IPython.display import Image, display

from distill import params, pipeline, plots, results, sweep

p = params.from_notebook(globals())
names = {"teacher": results.TEACHER, "student_before": results.BEFORE, "ce_baseline": results.BASELINE,
         "distilled": results.DISTILLED}

# %% [markdown]
# ## The measurements
# The pipeline's `score-<model>` stages scored each model's answers; its `speed-<model>` stages timed each
# model alone in a fresh process. This page only reads what they wrote.

# %%
measured = {label: pipeline.measurements(p, model) for model, label in names.items()}
for name, m in measured.items():
    print(f"{name:28} F1 {m['f1']:5.1f}  {m['latency_ms_per_example']:8.1f} ms/example  "
          f"peak {m['peak_memory_mb']:7.0f} MB")
table = results.table(measured)
meta = {"run_name": p.run_name, "n_examples": measured[results.TEACHER]["n_examples"],
        "max_new_tokens": p.max_new_tokens, "batch_size": p.bench_batch_size,
        "device": measured[results.TEACHER]["device"],
        "memory_kind": measured[results.TEACHER]["peak_memory_kind"],
        "teacher_disk_kind": measured[results.TEACHER]["disk_kind"],
        "runtime_rss_mb": {n: r["runtime_rss_mb"] for n, r in measured.items()},
        "question_ids": measured[results.TEACHER]["question_ids"]}
results.write(table, measured, meta, p.report_dir)
print(results.comparison_text(table, meta))

# %% [markdown]
# ## Charts
# Bars are annotated with each model's ratio to the teacher.

# %%
for col, label, _ in results.METRICS:
    fig = plots.metric_bars(table, col, results.TEACHER, f"{p.run_name}: {label}", label)
    plots.save(fig, p.report_dir, f"{col}_by_model")

# %%
plots.save(plots.f1_vs_latency(table, f"{p.run_name}: F1 vs latency"), p.report_dir, "f1_vs_latency")

# %% [markdown]
# ## What was scored
# A few raw generations per model, before the shared post-processing (first line, trimmed).

# %%
raw = pd.DataFrame({"gold": [r[0] for r in measured[results.TEACHER]["references"][:5]],
                    **{n: r["raw_generations"][:5] for n, r in measured.items()}})
with pd.option_context("display.max_colwidth", 60):
    display(raw)

# %% [markdown]
# ## Is a difference between the students real?
# One run's gap between the distilled and the CE-only student is noise until it exceeds the
# seed-to-seed spread. `make sweep` retrains both students over several seeds from this run's teacher and
# pruned student, scores them on the same questions and writes `sweeps/summary.txt`, shown here when it exists.

# %%
print(sweep.report_note(p))
paired_chart = sweep.sweeps_dir(p) / "paired_differences.png"
if paired_chart.exists():
    display(Image(filename=str(paired_chart)))
