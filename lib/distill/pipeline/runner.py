"""The pipeline runner: notebooks in order with papermill, HTML reports, an index with the run's manifest."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.core import paths, procs
from distill.core.params import StudyParams
from distill.parts.models import free_cores
from distill.pipeline import dvc
from distill.report import sweeps
from distill.report.render import index_page, redact, render
from distill.report.reproduce import machine_info
from distill.study import sweep
from distill.study.layout import STAGE_ENV, record_file

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "papermill", "jupytext",
            "nbconvert", "matplotlib", "pandas", "gguf", "tokenizers", "safetensors"]


class StepFailed(RuntimeError):
    pass


def notebook_path(name: str) -> Path:
    return paths.NOTEBOOKS_DIR / f"{name}.py"


def load_notebook(path: Path):
    """A py:percent notebook converted in memory, with the kernel papermill needs to run it."""
    import jupytext  # notebook tooling: only reading a notebook needs it

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=paths.PROJECT_ROOT, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""
    # dirty: a tracked file differs from the commit, other than what runs write (their pages and committed pipelines)
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "-uno", "--", ".", ":(exclude)reports", ":(exclude)pipelines"))}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict[str, Any]:
    import torch  # heavy: only the machine record needs it


    info: dict[str, Any] = {"platform": platform.platform(), "cpu_cores": free_cores(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def quiet_papermill() -> None:
    logging.getLogger("papermill").setLevel(logging.ERROR)  # it warns for every injected key a notebook does not declare


def execute_step(name: str, notebook: str, values: dict[str, Any], executed_dir: Path, report_dir: Path) -> float:
    """Run notebooks/<notebook>.py with papermill into <executed_dir>/<name>.ipynb and render <report_dir>/<name>.html."""
    import papermill as pm  # notebook tooling: only a notebook stage needs it
    from nbclient.exceptions import DeadKernelError  # notebook tooling: only a notebook stage needs it

    nb = load_notebook(notebook_path(notebook))
    executed = executed_dir / f"{name}.ipynb"
    # papermill writes its output as cells run: under a temporary name, so a kill or a full disk never leaves a
    # half-written notebook where a complete one belongs
    partial = executed.with_name(f".{name}.partial.ipynb")
    html_out = report_dir / f"{name}.html"
    for earlier in (partial, executed, html_out):  # nothing of an earlier run may pass for this one's
        earlier.unlink(missing_ok=True)
    start = time.perf_counter()
    run_name = str(values.get("run_name", ""))
    print(f"[{run_name} {name}] running notebooks/{notebook}.py; its progress follows", file=sys.stderr, flush=True)
    failure = None
    try:
        with ipc_kernel() as config, stage_kernel(name):
            # the kernel's stdout and stderr stream to this terminal as they come (training steps, generation
            # batches); papermill's cell counter would say nothing for minutes
            pm.execute_notebook(nb, str(partial), parameters=values, kernel_name="python3",
                                cwd=str(paths.NOTEBOOKS_DIR), progress_bar=False, log_output=False, report_mode=False,
                                stdout_file=sys.stdout, stderr_file=sys.stderr, config=config)
    except pm.PapermillExecutionError as err:
        failure = f"failed in cell {err.exec_count} with {err.ename}: {err.evalue}"
    except (DeadKernelError, RuntimeError) as err:
        if not isinstance(err, DeadKernelError) and "kernel died" not in str(err).lower():
            raise
        failure = ("stopped: its kernel died (killed from outside, or out of memory: see `dmesg`); run the same "
                   "command again to resume")
    except OSError as err:
        failure = f"stopped: cannot write {err.filename or 'its output'} ({err.strerror or err})"
    if partial.exists():
        _redact_file(partial)
        partial.replace(executed)
    if executed.exists():
        render(executed, html_out, notebook, run_name)
    if failure:
        see = f"; see {paths.shown(html_out)}" if html_out.exists() else ""
        raise StepFailed(f"notebook {notebook} ({name}) {failure}{see}")
    return time.perf_counter() - start


@contextmanager
def stage_kernel(name: str):
    """The kernel started inside inherits STAGE_ENV: its notebook runs as the pipeline's step, not by hand
    (see study.layout.notebook_params); this process's environment is restored after."""
    before = os.environ.get(STAGE_ENV)
    os.environ[STAGE_ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STAGE_ENV, None)
        else:
            os.environ[STAGE_ENV] = before


@contextmanager
def ipc_kernel():
    """Kernel manager settings for Unix sockets in a private temp folder: no TCP ports, so ipykernel has no
    unencrypted transport to warn about at every step (the client still starts and stops the kernel)."""
    from traitlets.config import Config  # notebook tooling: only a notebook stage needs it

    clean_kernel_leftovers()
    with tempfile.TemporaryDirectory(prefix=f"{KERNEL_PREFIX}{os.getpid()}-") as folder:
        yield Config({"KernelManager": {"transport": "ipc", "ip": str(Path(folder) / "kernel")}})


KERNEL_PREFIX = "distill-kernel-"


def clean_kernel_leftovers(temp: Path | None = None) -> list[Path]:
    """Remove the socket folders of kernels whose stage was killed (`kill -9` skips the cleanup): named after the
    stage's process, removed once that process is gone; folders of the older unnamed kind after a day."""
    gone = []
    for folder in Path(temp or tempfile.gettempdir()).glob(f"{KERNEL_PREFIX}*"):
        owner = folder.name[len(KERNEL_PREFIX):].split("-", 1)[0]
        try:
            stale = not procs.alive(int(owner)) if owner.isdigit() else time.time() - folder.stat().st_mtime > 86400
        except OSError:
            continue
        if stale and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _redact_file(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    clean = redact(text)
    if clean != text:
        path.write_text(clean, encoding="utf-8")


def write_index(p: StudyParams, manifest: dict[str, Any]) -> Path:
    page = index_page(p, manifest)
    out = p.report_dir / "index.html"
    paths.write_text_atomic(out, redact(page))
    paths.write_text_atomic(p.report_dir / "manifest.json", redact(json.dumps(manifest, indent=1, default=str)))
    return out


def run_study(p: StudyParams, only: list[str] | None = None, log=print, force: bool = False, before=None) -> int:
    """Bring the run's pipeline up to date with `dvc repro`; 0 when every stage is, 1 when one failed.

    `only` names stages (see `dvc.stages`) to bring up to date, with what they need upstream. `before` runs
    once the run's lock is held, before anything is written (the preflight checks).
    """
    names = [s.name for s in dvc.stages(p)]
    unknown = set(only or []) - set(names)
    if unknown:
        raise ValueError(f"--only: unknown stage(s) {sorted(unknown)}; stages: {', '.join(names)}")
    dvc.ensure_dvc_repo()
    start = dt.datetime.now(dt.timezone.utc)
    with dvc.run_lock(p):
        if before is not None:
            before()
        dvcfile = dvc.write_pipeline(p)
        # from now until the end the index and manifest say "running": a kill at any moment never leaves a
        # previous run's "ok" standing
        write_run_index(p, start, None, dvcfile, log, render_pages=False)
        log(f"run {p.run_name}: {paths.shown(dvcfile)} ({len(names)} stages); dvc repro runs what is out of date")
        # the report stage is the pipeline's sink: reproducing it brings every stage it needs up to date
        repro_args = ["repro", *(dvc.targets(p, only) if only else dvc.targets(p, ["report"]))]
        if force:  # with --only: those stages alone, not what they need upstream
            repro_args += ["--force", "--single-item"] if only else ["--force"]
        try:
            res = dvc.dvc(*repro_args)
        except KeyboardInterrupt:
            write_run_index(p, start, 130, dvcfile, log, failure="interrupted (Ctrl-C); run the same command "
                            "again: finished stages are kept and training resumes from its last checkpoint")
            return 130
        code = 0 if res.returncode == 0 else 1
        index = write_run_index(p, start, code, dvcfile, log)
        log(f"report: {paths.shown(index)}")
    return code


def write_run_index(p: StudyParams, start: dt.datetime, code: int | None, dvcfile: Path, log=print,
                    render_pages: bool = True, failure: str | None = None) -> Path:
    """index.html and manifest.json of a run from its stages' records; a failed repro says so, never "ok".

    `code` None: the run is under way (the manifest names its process, so a reader can tell a killed run).
    """
    end = dt.datetime.now(dt.timezone.utc)
    steps = []
    for s in dvc.run_pages(p):
        executed = p.run_dir / "executed" / f"{s.report}.ipynb"
        if render_pages and executed.exists():  # pages are views of the executed notebooks: re-rendered today
            render(executed, p.report_dir / f"{s.report}.html", s.notebook, p.run_name)
        rec = record_file(p, s.report)
        info = json.loads(rec.read_text()) if rec.exists() else {}
        steps.append({"name": s.report, "stage": s.name, "notebook": s.notebook, "title": s.title,
                      "status": info.get("status", "not run"), "wall_s": info.get("wall_s"),
                      "ran_at": info.get("start"), "failure": info.get("failure")})
    status = "running" if code is None else "ok" if code == 0 else "failed"
    manifest: dict[str, Any] = {
        "run_name": p.run_name, "status": status,
        "start": start.isoformat(timespec="seconds"), "end": None if code is None else end.isoformat(timespec="seconds"),
        "wall_s": None if code is None else (end - start).total_seconds(), "seed": p.seed, "params": p.to_dict(),
        "pipeline": paths.shown(dvcfile), "git": git_commit(), "packages": package_versions(),
        "device": device_info(), "machine": machine_info(), "steps": steps}
    if code is None:
        manifest["failure"] = (f"under way since {manifest['start']} (process {os.getpid()} on {platform.node()}); "
                               "if that process is gone, the run was interrupted: run the same command again")
    elif code:
        failed = [s for s in steps if s["status"] == "failed" and s.get("failure")]
        manifest["failure"] = failure or (failed[0]["failure"] if failed else
                                          "dvc repro failed; its error is printed above")
        log(f"FAILED: {manifest['failure']}")
    lock = dvcfile.with_name("dvc.lock")
    if lock.exists():  # what DVC recorded of every stage's inputs and outputs, beside the reports
        paths.write_text_atomic(p.report_dir / "dvc.lock.yaml", lock.read_text(encoding="utf-8"))
    return write_index(p, manifest)


def run_sweeps(base: StudyParams, register, log=print) -> int:
    """Register a seed sweep (under the run's lock), then bring the run's sweep stages up to date with DVC."""
    dvc.ensure_dvc_repo()
    with dvc.run_lock(base):
        register()
        dvcfile = dvc.write_pipeline(base)
        log(f"run {base.run_name}: sweeps registered in {paths.shown(sweep.registry_file(base))}; dvc repro trains and "
            "scores what is missing")
        summary = sweeps.sweeps_dir(base) / "summary.json"
        before = summary.read_text() if summary.exists() else None
        try:
            res = dvc.dvc("repro", *dvc.targets(base, ["sweep-summary"]))
        except KeyboardInterrupt:
            log("interrupted (Ctrl-C); run the same command again: trained and scored seeds are kept")
            return 130
        if res.returncode != 0:
            log(f"FAILED: dvc repro exited {res.returncode}; see the stage's output above and {paths.shown(dvcfile)}")
            return 1
        changed = (summary.read_text() if summary.exists() else None) != before
        if changed and (base.report_dir / "03_benchmark.html").exists():  # the benchmark report shows the new one
            start = dt.datetime.now(dt.timezone.utc)
            res = dvc.dvc("repro", "--force", "--single-item", *dvc.targets(base, ["report"]))
            write_run_index(base, start, 0 if res.returncode == 0 else 1, dvcfile, log)
    log((sweeps.sweeps_dir(base) / "summary.txt").read_text())
    return 0
