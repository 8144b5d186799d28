# %% [markdown]
# # 05 · Which of the teacher's signals pays, at which size?

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the scored questions and of the teacher
capacity_keep: list = []  # student sizes of the grid, in teacher layers (the pipeline injects the profile's)
capacity_seeds: list = [0, 1, 2]  # training seeds of every size and arm
capacity_arms: dict = {}  # the trainings compared: {arm: {params key: value}} (the pipeline injects the profile's)
capacity_questions: int = 300  # validation questions every model answers

# %%
from IPython.display import HTML, display

from distill.core import params
from distill.report import plots, signal_report, summaries
from distill.study import layout

p = layout.notebook_params(params.from_notebook(globals()))
run = layout.pipeline_run(p)  # the run whose grid stages trained and scored the students
signal = signal_report.collect(run, partial=True)  # a grid still running: the page opens saying what is missing
result = signal_report.analyse(signal)
signal_file = signal_report.write(p, signal, result)  # signal.json, the table and the predictions beside this page

# %% tags=["summary"]
fig = plots.signal_gains(result, f"{p.run_name}: F1 over CE-only per arm (bars: mean of {len(p.capacity_seeds)} seeds "
                                 "and the questions; whiskers: 95% t interval over questions; dots: seeds)")
plots.save(fig, p.report_dir, "signal_gains", show=False)
summaries.show("\n".join(f"- {line}" for line in signal_report.headline(result)), p.report_dir / "signal_gains.png")

# %% [markdown]
# ## Every arm
# F1 is the mean over seeds and questions, with a 95% t interval over questions of the seed-averaged F1; "kept" is
# the share of the teacher's F1 on the same questions (paired bootstrap over questions); the gain is the arm minus
# the CE-only arm, paired per question and averaged over seeds, and how many seeds it wins. Green bars: the interval
# lies above 0; red: below; blue: unresolved. Train minutes: the wall time of one training on this machine.

# %%
display(HTML(signal_report.table(result).round(2).to_html(index=False, na_rep="")))

# %% [markdown]
# ## The arms
# Each arm is the run's params with these settings; every arm of a size and seed starts from the same cut student,
# sees the same gold examples in the same order, and trains the same number of optimizer steps.

# %%
display(HTML("<ul>" + "".join(f"<li><b>{arm}</b>: {settings or 'the run as it is'}</li>"
                              for arm, settings in p.capacity_arms.items()) + "</ul>"))

# %% [markdown]
# ## How it was measured
# - Students: cut from the SQuAD-tuned teacher (its first and last layers plus the middle ones with the highest
#   measured importance), then a LoRA adapter trained per arm and seed, merged for scoring.
# - Teacher-answered questions: SQuAD train questions outside every other subset, their gold answers never read;
#   the teacher answers each greedily once, and every arm and seed that asks for them reads the same answers.
# - Every model answers the same validation questions (EM/F1 by the official SQuAD v1.1 normalisation); the answer
#   loss is teacher-forced on the gold answer. `signal.json` beside this page holds one record per model with its F1
#   per question; `signal_predictions/` holds each model's answers in the official format.

# %%
print(f"{len(signal['records'])} trained students: {len(p.capacity_keep)} sizes x {len(p.capacity_arms)} arms x "
      f"{len(p.capacity_seeds)} seeds, each on {result['n_questions']} questions")
