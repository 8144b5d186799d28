# %% [markdown]
# # 02 · Merging the adapters: the deployable student
#
# Each trained adapter is merged into its base student (`merge_and_unload`) and saved as a
# standalone model (safetensors, tokenizer, generation config) that loads with
# `AutoModelForCausalLM.from_pretrained` alone. The distilled student goes to `deploy_dir`; the folder
# is written under a temporary name and renamed, so an existing deployment is replaced only by a
# complete one. The merge is checked: merged and adapter models must give the same logits.

# %% tags=["parameters"]
run_name: str = "smoke"  # report folder reports/<run_name>
seed: int = 0  # seed of the subsets
teacher: str = "tiny:teacher"  # the teacher spec (for the side-by-side answers)
student: str = "tiny:student"  # the base student spec
teacher_load_in_4bit: bool = True  # the teacher as the study loads it
teacher_finetune: bool = True  # use the SQuAD-tuned teacher from 00_teacher
deploy_dir: str = ""  # where the merged distilled student goes; empty = <run>/deploy
data_pool_rows: int = 400  # read only the first N rows of each split (0 = all)
max_length: int = 128  # tokens per prompt
max_new_tokens: int = 8  # greedy decoding budget
bench_batch_size: int = 4  # prompts per generation batch
qualitative_examples: int = 3  # validation examples shown side by side

# %%
import pandas as pd
from IPython.display import display

from distill.core import params, paths
from distill.parts import benchmark, models
from distill.report import plots, results, summaries
from distill.study import layout, merge, steps

p = layout.notebook_params(params.from_notebook(globals()))
models.setup_torch(p.seed, p.torch_threads)
device = models.resolve_device(p.device)
sets = steps.load_data(p)

# %% [markdown]
# ## Merge and verify

# %%
merges = [merge.merge_variant(p, v, device, sets.eval_rows[:4]) for v in merge.trained_variants(p)]
display(pd.DataFrame(merges))
plots.save(plots.merge_check(merges, f"{p.run_name}: merged vs adapter logits"), p.report_dir, "merge_logit_check",
           show=False)  # the summary shows it first

# %% [markdown]
# ## Answers side by side
# The same validation questions, greedy answers post-processed the same way for every model.

# %%
rows = sets.bench_rows[: p.qualitative_examples]
answers = {}
if rows:
    sources = {"teacher": steps.scored_source(p, "teacher"),
               "student before training": steps.scored_source(p, "student_before"),
               **{label: steps.scored_source(p, name) for label, name in results.MODEL_KEYS.items()
                  if name in {m["variant"] for m in merges}}}
    for name, (source, quant) in sources.items():
        model = models.load_model(source, dtype=p.model_dtype, **quant, device=device)
        tok = models.load_tokenizer(source)
        result = benchmark.evaluate(model, tok, rows, max_length=p.max_length, max_new_tokens=p.max_new_tokens,
                                    batch_size=p.bench_batch_size, seed=p.seed, device=device)
        answers[name] = result["predictions"]
        del model
    side_by_side = pd.DataFrame({"question": [r["question"] for r in rows],
                                 "gold answers": [" | ".join(dict.fromkeys(r["answers"]["text"])) for r in rows],
                                 **answers})
    with pd.option_context("display.max_colwidth", 80):
        display(side_by_side)
    side_by_side.to_csv(p.report_dir / "answers_side_by_side.csv", index=False)

# %%
paths.write_json(p.report_dir / "merge.json", merges)

# %% tags=["summary"]
summaries.show(summaries.merge(merges, paths.shown(layout.merged_dir(p, "distilled"))),
               p.report_dir / "merge_logit_check.png")
