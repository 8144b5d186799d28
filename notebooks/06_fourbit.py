# %% [markdown]
# # 06 · What does a 4-bit teacher cost the student?

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the scored questions and of the teacher
teacher: str = "tiny:teacher"  # the teacher's source (names its family)
temperature: float = 2.0  # the run's distillation temperature (KL is also measured at T 1)
capacity_keep: list = []  # student sizes of the grid, in teacher layers (the pipeline injects the profile's)
capacity_seeds: list = [0, 1, 2]  # training seeds of every size and arm
capacity_arms: dict = {}  # the trainings compared, e.g. {kd_nf4: {teacher_load_in_4bit: true}} (injected)
capacity_questions: int = 300  # validation questions every model answers
fidelity_precisions: list = []  # the 4-bit teachers measured against float32, e.g. [nf4-float32, nf4dq-float32]

# %%
from IPython.display import HTML, display

from distill.core import params
from distill.report import fourbit_report, plots, summaries
from distill.study import layout

p = layout.notebook_params(params.from_notebook(globals()))
run = layout.pipeline_run(p)  # the run whose stages scored the teachers and trained the students
fourbit = fourbit_report.collect(run)
students = fourbit_report.analyse(fourbit)  # each 4-bit arm against its float32 twin
arms = fourbit_report.arms_summary(fourbit)  # every arm against CE-only
fourbit_file = fourbit_report.write(p, fourbit, students, arms)  # fourbit.json and the predictions beside this page

# %% tags=["summary"]
fig = plots.fourbit_fidelity(fourbit, students, f"{p.run_name}: the 4-bit teacher against float32, on "
                                                f"{len(fourbit['question_ids'])} SQuAD validation questions",
                             fourbit_report.teacher_differences(fourbit))
plots.save(fig, p.report_dir, "fourbit_fidelity", show=False)
summaries.show("\n".join(f"- {line}" for line in fourbit_report.headline(fourbit, students, arms)),
               p.report_dir / "fourbit_fidelity.png")

# %% [markdown]
# ## The teachers
# KL(float32 || 4-bit) over the whole vocabulary on every row that predicts a gold answer token (teacher-forced),
# mean and 90th percentile over those rows, at T 1 and at the run's temperature; top-1: how often both put the
# same token first. Cache distance: total variation between the sampled sparse targets (k draws) the teacher cache
# would store from each teacher, drawn with the same random numbers; the noise floor is the same distance between
# two caches of the float32 teacher drawn with different random numbers. EM/F1 and answer loss on the scored
# questions; load time, peak memory (the scoring process) and batch-1 latency (median) on this machine. Below it,
# each 4-bit teacher's F1 minus float32's on the same questions, with a 95% t interval over questions.

# %%
display(HTML(fourbit_report.fidelity_table(fourbit).round(4).to_html(index=False, na_rep="")))
display(HTML(fourbit_report.teacher_differences_table(fourbit).round(2).to_html(index=False)))

# %% [markdown]
# ## The students
# Every arm against the CE-only baseline (no teacher): mean over seeds, and the F1 difference paired per seed and
# question with a 95% t interval over questions. Then each 4-bit arm against its float32 twin (the same settings but the teacher's precision): the F1 difference per
# question averaged over seeds, with a 95% t interval over questions (the seeds held fixed: the per-seed differences
# in `fourbit.json` show the training's own spread); the answer-loss difference averaged over seeds. The cache
# distance draws both teachers' caches with the same random numbers, the noise floor with different ones: a
# distance below the floor still measures a difference in the distributions, not its absence.

# %%
display(HTML(fourbit_report.students_html(students, arms)))

# %% [markdown]
# ## How it was measured
# - The teachers: the run's SQuAD-tuned teacher, loaded in float32 and in each precision (bitsandbytes NF4; `dq`:
#   double quantisation of the scales; then the dtype its matmuls compute in). Nothing else differs.
# - The students: cut from the float32 teacher, each arm's LoRA adapter trained on the same gold examples in the
#   same order for the same number of steps, its divergence's targets read from the cache its own teacher filled.
# - `fourbit.json` beside this page holds every teacher's and student's F1 per question, so every interval can be
#   recomputed; `fourbit_predictions/` holds their answers in the official SQuAD v1.1 format.
