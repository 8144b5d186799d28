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
teacher: str = "tiny:teacher"  # the teacher spec
student: str = "tiny:student"  # the base student spec
teacher_load_in_4bit: bool = True  # benchmark the teacher as the study loads it
teacher_finetune: bool = True  # the SQuAD-tuned teacher from 00_teacher
deploy_dir: str = ""  # the merged distilled student; empty = <run>/deploy
data_pool_rows: int = 400  # read only the first N rows of each split (0 = all)
bench_size: int = 8  # validation questions scored
max_length: int = 160  # tokens per prompt
max_new_tokens: int = 8  # greedy decoding budget
bench_batch_size: int = 4  # prompts per generation batch
bench_warmup: int = 1  # untimed warm-up batches

# %%
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from distill import benchmark, models, params, plots, results, study, sweep

p = params.from_notebook(globals())
models.setup_torch(p.seed, p.torch_threads)
device = models.resolve_device(p.device)
sets = study.load_data(p)
rows_file = Path(tempfile.mkdtemp()) / "bench_rows.json"
study.write_json(rows_file, sets.bench_rows)
common = dict(rows_file=str(rows_file), seed=p.seed, device=p.device, threads=p.torch_threads, dtype=p.model_dtype,
              max_length=p.max_length, max_new_tokens=p.max_new_tokens, batch_size=p.bench_batch_size,
              warmup_batches=p.bench_warmup, bnb_compute_dtype=p.bnb_compute_dtype)
specs = {results.TEACHER: dict(source=study.teacher_source(p), load_in_4bit=p.teacher_load_in_4bit),
         results.BEFORE: dict(source=study.student_source(p)),
         results.BASELINE: dict(source=str(study.merged_dir(p, "ce_baseline"))),
         results.DISTILLED: dict(source=str(study.merged_dir(p, "distilled")))}

# %% [markdown]
# ## Running each model in its own process

# %%
measured = {}
for name, spec in specs.items():
    measured[name] = benchmark.benchmark_in_subprocess({**common, **spec, "name": name})
    print(f"{name:28} F1 {measured[name]['f1']:5.1f}  {measured[name]['latency_ms_per_example']:8.1f} ms/example  "
          f"peak {measured[name]['peak_memory_mb']:7.0f} MB")
table = results.table(measured)
meta = {"run_name": p.run_name, "n_examples": len(sets.bench_rows), "max_new_tokens": p.max_new_tokens,
        "batch_size": p.bench_batch_size, "device": str(device),
        "memory_kind": measured[results.TEACHER]["peak_memory_kind"],
        "teacher_disk_kind": measured[results.TEACHER]["disk_kind"],
        "runtime_rss_mb": {n: r["runtime_rss_mb"] for n, r in measured.items()}}
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
raw = pd.DataFrame({"question": [r["question"] for r in sets.bench_rows[:5]],
                    "gold": [r["answers"]["text"][0] for r in sets.bench_rows[:5]],
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
