"""Where a run's things live: its folders, its models' folders, its score files; which models and variants it has.

Every stage, notebook and report asks here, so they agree on one folder per thing (one place for one fact).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.core import paths
from distill.core.params import ParamsError, StudyParams

# The students a run trains: distilled from the teacher, and the CE-only baseline (gold answers, CE only).
VARIANTS = ("distilled", "ce_baseline")
VARIANT_OVERRIDES = {"distilled": {"variant": "distilled"},
                     "ce_baseline": {"variant": "ce_baseline", "gamma_kl": 0.0, "beta_mse": 0.0, "lmbda": 0.0,
                                     "teacher_answered_size": 0}}
# The models a run scores: the teacher, the student before training, and both trained students.
MODELS = ("teacher", "student_before", "ce_baseline", "distilled")
PIPELINES_DIR = paths.PROJECT_ROOT / "pipelines"
# Set by the pipeline's runner in the kernels it starts; a notebook run without it was run by hand.
STAGE_ENV = "DISTILL_STAGE"
LAB_PREFIX = "_lab_"


def variant_params(p: StudyParams, variant: str) -> StudyParams:
    """The params a variant's student trains with: the run's, with the variant's own settings."""
    return p.replace(**VARIANT_OVERRIDES[variant])


def notebook_params(p: StudyParams, makes_base_models: bool = False) -> StudyParams:
    """The params a notebook runs with. Under the pipeline: the run's own. Run by hand (JupyterLab, papermill): a
    run of its own, `_lab_<run>_<settings>`, that writes only to its own folders (git-ignored), so changed settings
    never touch the pipeline run's models, checkpoints or reports; the same settings again resume the same lab run.

    `makes_base_models` (00_teacher): the lab tunes its own teacher and cuts its own student. Otherwise the lab reads
    them from its own folder when 00_teacher made them there by hand, else from the pipeline run's."""
    if os.environ.get(STAGE_ENV):
        return p
    settings = paths.hash_config({k: v for k, v in p.to_dict().items() if k != "variant"})
    lab = p.replace(run_name=f"{LAB_PREFIX}{p.run_name}_{settings}"[:100], output_dir="", deploy_dir="",
                    base_run_dir="")
    if not makes_base_models and not any(d.exists() for d in base_models_dirs(lab)):
        lab = lab.replace(base_run_dir=p.base_run_dir or str(p.run_dir))
    print(f"run by hand: this notebook writes to {paths.shown(lab.run_dir)} and {paths.shown(lab.report_dir)}, and "
          f"reads the base models of run {lab.run_name if makes_base_models else p.run_name} from "
          f"{paths.shown(base_run_dir(lab))}")
    return lab


def pipeline_run(p: StudyParams) -> StudyParams:
    """The pipeline run whose scores a page shows: `p` itself, or the run a by-hand lab run was made from (its
    score and speed stages ran there)."""
    run = lab_of(p)
    if run is None:
        return p
    return p.replace(run_name=run, output_dir=p.base_run_dir or "", base_run_dir="")


def lab_of(p: StudyParams) -> str | None:
    """The pipeline run a by-hand run (`notebook_params`) reads from, or None for a pipeline run."""
    if not p.run_name.startswith(LAB_PREFIX):
        return None
    return p.run_name[len(LAB_PREFIX):].rsplit("_", 1)[0]


# --------------------------------------------------------------------------------------------
# Folders of a run
# --------------------------------------------------------------------------------------------
def base_run_dir(p: StudyParams) -> Path:
    """Where the run's tuned teacher and pruned student live: its own folder, or the base run's for a sweep."""
    return paths.resolve(p.base_run_dir) if p.base_run_dir else p.run_dir


def run_dir_cache(p: StudyParams) -> Path:
    """The run's teacher cache (every config's store; see parts.teacher_cache)."""
    return base_run_dir(p) / "teacher_cache"


def tuned_teacher_dir(p: StudyParams) -> Path:
    return base_run_dir(p) / "teacher"


def student_init_dir(p: StudyParams) -> Path:
    return base_run_dir(p) / "student_init"


def variant_dir(p: StudyParams, variant: str) -> Path:
    return p.run_dir / "students" / variant


def merged_dir(p: StudyParams, variant: str) -> Path:
    return p.deploy_path if variant == "distilled" else p.run_dir / "merged" / variant


def base_models_dirs(p: StudyParams) -> list[Path]:
    """The tuned teacher and pruned student folders a run (or a sweep's seed run) trains from."""
    return ([tuned_teacher_dir(p)] if p.teacher_finetune else []) + \
        ([student_init_dir(p)] if p.student == "prune" else [])


def model_dir(p: StudyParams, model: str) -> Path | None:
    """The folder a scored model is loaded from when the run made it (None: a spec outside the run: a hub id,
    a local folder, a packaged model)."""
    if model == "teacher":
        return tuned_teacher_dir(p) if p.teacher_finetune else None
    if model == "student_before":
        return student_init_dir(p) if p.student == "prune" else None
    if model not in VARIANTS:
        raise ValueError(f"{model}: not a scored model ({', '.join(MODELS)})")
    return merged_dir(p, model)


def scores_file(p: StudyParams, model: str) -> Path:
    return p.run_dir / "scores" / f"{model}.json"


def speed_file(p: StudyParams, model: str) -> Path:
    return p.run_dir / "speed" / f"{model}.json"


def record_file(p: StudyParams, report_name: str) -> Path:
    """How a notebook stage went (status, times, failure): written by the stage, read into the run's manifest."""
    return p.run_dir / "executed" / f"{report_name}.json"


def measurements(p: StudyParams, model: str) -> dict[str, Any]:
    """What the score and speed stages measured for one model, as one record."""
    found = {}
    for kind, path in (("score", scores_file(p, model)), ("speed", speed_file(p, model))):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {kind} of {model}; run the pipeline (python -m distill run ...)")
        found[kind] = json.loads(path.read_text(encoding="utf-8"))
    return {**found["speed"], **found["score"]}


# --------------------------------------------------------------------------------------------
# The run's pipeline folder (pipelines/<run>/: params.yaml, dvc.yaml, dvc.lock, sweeps.yaml)
# --------------------------------------------------------------------------------------------
def pipeline_dir(p: StudyParams) -> Path:
    return PIPELINES_DIR / p.run_name


def project_relative(path: Path, what: str) -> str:
    """A path relative to the project, as DVC tracks it; one outside the project is a params error."""
    try:
        return Path(path).resolve().relative_to(paths.PROJECT_ROOT).as_posix()
    except ValueError:
        raise ParamsError(f"{what}: {path} is outside the project {paths.PROJECT_ROOT}; the pipeline (DVC) only "
                          f"tracks folders inside it: leave {what} empty or give a folder under the project") from None
