"""Test setup: a synthetic SQuAD-schema dataset and private output folders, set before `distill` is imported."""
from __future__ import annotations

import gzip
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(tempfile.mkdtemp(prefix="distill-tests-"))
os.environ["DISTILL_REPORTS_DIR"] = str(_ROOT / "reports")
os.environ["DISTILL_ARTIFACTS_DIR"] = str(_ROOT / "artifacts")
os.environ["DISTILL_MODELS_DIR"] = str(_ROOT / "models")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Turin", "Bergen", "Leeds", "Basel"]
THINGS = ["bridge", "museum", "tower", "library", "harbour", "cathedral", "station", "market", "garden", "theatre"]
PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Carl Gauss", "Marie Curie", "Niels Bohr", "Emmy Noether"]


def synthetic_row(rng: random.Random, i: int, split: str) -> dict:
    """A SQuAD-schema question written here (no SQuAD text), with a context of varying length."""
    city, thing, person = rng.choice(CITIES), rng.choice(THINGS), rng.choice(PEOPLE)
    year = str(rng.randint(1200, 1999))
    filler = [f"The {rng.choice(THINGS)} of {rng.choice(CITIES)} was rebuilt after the flood of {rng.randint(1100, 1990)}."
              for _ in range(rng.randint(0, 14))]
    fact = f"The {thing} in {city} was designed by {person} in {year}."
    pos = rng.randint(0, len(filler))
    context = " ".join(filler[:pos] + [fact] + filler[pos:])
    kind = rng.choice(["who", "when"])
    question, answer = ((f"Who designed the {thing} in {city}?", person) if kind == "who"
                        else (f"In what year was the {thing} in {city} designed?", year))
    start = context.index(fact) + fact.index(answer)
    answers, starts = [answer], [start]
    if split == "validation":  # several gold answers, as in the official dev set
        alt = f"in {year}" if kind == "when" else person.split()[-1]
        answers, starts = [answer, answer, alt], [start, start, context.index(fact) + fact.index(alt)]
    return {"id": f"{split}-{i}", "title": city, "context": context, "question": question,
            "answers": {"text": answers, "answer_start": starts}}


def write_synthetic_squad(folder: Path, n_train: int = 400, n_dev: int = 120) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    for split, n in (("train", n_train), ("validation", n_dev)):
        rows = "".join(json.dumps(synthetic_row(rng, i, split)) + "\n" for i in range(n))
        # mtime 0: the same bytes in every test process (the pipeline fingerprints the data by content)
        (folder / f"{split}.jsonl.gz").write_bytes(gzip.compress(rows.encode("utf-8"), mtime=0))
    return folder


# the real SQuAD copy the Makefile found (../shared/data/squad), for the tests that re-score committed results;
# every other test reads synthetic rows
# (kept under its own name: pytest-xdist's workers inherit the environment this file changes below)
REAL_SQUAD_DIR = os.environ.setdefault("DISTILL_TESTS_REAL_SQUAD_DIR", os.environ.get("SQUAD_DIR", ""))
SQUAD_DIR = write_synthetic_squad(_ROOT / "squad")
os.environ["SQUAD_DIR"] = str(SQUAD_DIR)


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    return SQUAD_DIR


@pytest.fixture(scope="session")
def real_squad_dir() -> Path:
    folder = Path(REAL_SQUAD_DIR) if REAL_SQUAD_DIR else None
    if folder is None or not (folder / "validation.jsonl.gz").exists():
        pytest.skip("the real SQuAD v1.1 copy is not here (SQUAD_DIR, as `make test` sets it from ../shared/data/squad)")
    return folder


@pytest.fixture(scope="session")
def tiny_paths():
    """Cached tiny teacher and student folders (built once per session from the synthetic data)."""
    from distill.parts.tiny import ensure_tiny_model  # after the environment above: distill reads it at import

    return ensure_tiny_model("teacher"), ensure_tiny_model("student")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # pytest-xdist's processes share the cores
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // workers))
    yield


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    import subprocess

    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def make_project_copy(dest: Path) -> Path:
    """The project's tracked sources in a fresh folder with git and DVC, so a pipeline run writes only there.

    The copy imports its own `distill` (PYTHONPATH) and shares the session's model cache and synthetic SQuAD.
    """
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("lib", "notebooks", "params", "configs"):
        shutil.copytree(root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dvc.lock"))
    (dest / ".dvc").mkdir()
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        shutil.copy(root / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def project_env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISTILL_REPORTS_DIR", "DISTILL_ARTIFACTS_DIR")}
    env["PYTHONPATH"] = str(project / "lib")
    return env


def run_in_project(project: Path, *args: str, timeout: int = 900):
    import subprocess

    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, cwd=project,
                          env=project_env(project), timeout=timeout)


# the build's seed sweep of the smoke run, and its capacity grid (a run of its own, one size and one seed: every kind
# of grid stage runs; several sizes and seeds are tests/test_capacity.py's stage and analysis tests)
SMOKE_SWEEP = ["sweep", "params/smoke.yaml", "--name", "t", "--seeds", "1", "--questions", "4", "--reference",
               "t/ce_baseline"]
SMOKE_GRID = ["run", "params/smoke.yaml", "--set", "run_name=grid", "--set", "student=prune", "--set", "prune_keep=3",
              "--set", "capacity_keep=[2]", "--set", "capacity_seeds=[0]", "--set", "capacity_questions=8",
              "--set", "latency_prompts=2", "--set", "teacher_cache=sampled", "--set", "teacher_cache_k=4",
              "--set", "beta_mse=0", "--set", "distill_positions=answer", "--only", "capacity-report"]


class SmokeBuild:
    """The smoke study built once per test run in a fresh copy of the project, with a seed sweep of it and a
    capacity grid: what the end-to-end, browser and report tests read. `result`, `sweep` and `grid` are the three
    commands' outcomes. A test that runs anything works on `snapshot()`, so every test sees the build as made."""
    RUN = "smoke"

    def __init__(self, project: Path, said: dict):
        import subprocess

        import yaml

        self.project = project
        self.result, self.sweep, self.grid = (subprocess.CompletedProcess(**said[k]) for k in ("run", "sweep", "grid"))
        self.report_dir = project / "reports" / self.RUN
        self.run_dir = project / "artifacts" / self.RUN
        results_file = self.report_dir / "results.json"
        self.results = json.loads(results_file.read_text()) if results_file.exists() else None
        lock = project / "pipelines" / self.RUN / "dvc.lock"
        self.lock = yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}  # the study's and the sweep's

    def snapshot(self, dest: Path) -> Path:
        """A copy of the built project (its DVC cache, pipelines, artifacts and reports) for a test to change."""
        import subprocess

        assert self.result.returncode == 0, "the shared smoke build failed (see test_runner_succeeds)"
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(self.project), str(dest)], check=True)  # -a keeps the cache's hard links
        return dest


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory) -> SmokeBuild:
    """`python -m distill run params/smoke.yaml`, a seed sweep of it and a capacity grid, in a fresh copy of the
    project, once per test run: with pytest-xdist's workers (`make test`), the first one to need it builds it under
    a lock and the others read it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the parent: this run's, all workers'
    folder, said = shared / "smoke_build", shared / "smoke_build" / "result.json"
    with FileLock(str(shared / "smoke_build.lock")):
        if not said.exists():
            project = make_project_copy(folder / "project")
            out = {}
            for name, args in (("run", ["run", "params/smoke.yaml"]), ("sweep", SMOKE_SWEEP), ("grid", SMOKE_GRID)):
                res = run_in_project(project, *args)
                out[name] = {"args": res.args, "returncode": res.returncode, "stdout": res.stdout,
                             "stderr": res.stderr}
            said.write_text(json.dumps(out))
    return SmokeBuild(folder / "project", json.loads(said.read_text()))
