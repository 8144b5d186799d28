"""The pipeline runner: notebooks in order with papermill, HTML reports, an index with the run's manifest."""
from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import paths
from .params import StudyParams

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "papermill", "jupytext",
            "nbconvert", "matplotlib", "pandas", "gguf", "tokenizers", "safetensors"]
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")


@dataclass
class Step:
    """One notebook execution: its report name, the notebook, and params that differ for it."""
    name: str
    notebook: str
    overrides: dict[str, Any] = field(default_factory=dict)
    title: str = ""


STEPS = [
    Step("00_teacher", "00_teacher", {}, "Teacher: zero-shot, SQuAD fine-tune, pruned student"),
    Step("01_distill", "01_distill", {"variant": "distilled"}, "Distillation of the student"),
    Step("01_distill_ce_baseline", "01_distill", {"variant": "ce_baseline", "gamma_kl": 0.0, "beta_mse": 0.0},
         "Baseline: the same student trained on CE only"),
    Step("02_merge", "02_merge", {}, "Merge the adapters; answers side by side"),
    Step("03_benchmark", "03_benchmark", {}, "Teacher vs students: size, speed, memory, EM/F1"),
]


class StepFailed(RuntimeError):
    pass


def notebook_path(name: str) -> Path:
    return paths.NOTEBOOKS_DIR / f"{name}.py"


def load_notebook(path: Path):
    """A py:percent notebook converted in memory, with the kernel papermill needs to run it."""
    import jupytext

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=paths.PROJECT_ROOT, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain", "-uno"))}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict[str, Any]:
    import torch

    from .models import free_cores

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_cores": free_cores(),
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def redact(text: str) -> str:
    """Hub tokens never reach a report, even if a cell printed one."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "***redacted***")
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "***redacted***", text)


def render_html(executed: Path, out_html: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    paths.write_text_atomic(out_html, redact(body))


def execute_step(step: Step, values: dict[str, Any], executed_dir: Path, report_dir: Path) -> float:
    import papermill as pm

    nb = load_notebook(notebook_path(step.notebook))
    executed = executed_dir / f"{step.name}.ipynb"
    start = time.perf_counter()
    try:
        pm.execute_notebook(nb, str(executed), parameters=values, kernel_name="python3",
                            cwd=str(paths.NOTEBOOKS_DIR), progress_bar=True,
                            log_output=False, report_mode=False)
    except pm.PapermillExecutionError as err:
        render_html(executed, report_dir / f"{step.name}.html")
        raise StepFailed(f"notebook {step.notebook} ({step.name}) failed in cell {err.exec_count} "
                         f"with {err.ename}: {err.evalue}; see {report_dir / (step.name + '.html')}") from None
    finally:
        if executed.exists():
            _redact_file(executed)
    render_html(executed, report_dir / f"{step.name}.html")
    return time.perf_counter() - start


def _redact_file(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    clean = redact(text)
    if clean != text:
        path.write_text(clean, encoding="utf-8")


def write_index(p: StudyParams, manifest: dict[str, Any]) -> Path:
    rows = []
    for s in manifest["steps"]:
        link = f'<a href="{s["name"]}.html">{html.escape(s["name"])}</a>' if s["status"] != "not run" else s["name"]
        wall = f'{s["wall_s"]:.1f}' if s.get("wall_s") is not None else ""
        rows.append(f"<tr><td>{link}</td><td>{html.escape(s['title'])}</td><td>{s['status']}</td>"
                    f"<td style='text-align:right'>{wall}</td></tr>")
    listed = ("results.txt", "results.csv", "results.json", "sweeps/summary.txt")
    extras = "".join(f'<li><a href="{n}">{n}</a></li>' for n in listed if (p.report_dir / n).exists())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>distill-study: {html.escape(p.run_name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>distill-study run <code>{html.escape(p.run_name)}</code></h1>
<p>Status: <b>{manifest['status']}</b>. Started {manifest['start']}, ended {manifest['end']},
wall time {manifest['wall_s']:.1f} s. Commit <code>{manifest['git']['commit'][:12]}</code>{' (uncommitted changes)' if manifest['git']['dirty'] else ''}.</p>
<table><tr><th>notebook</th><th>what it does</th><th>status</th><th>wall s</th></tr>{''.join(rows)}</table>
{f'<h2>Results</h2><ul>{extras}</ul>' if extras else ''}
<h2>Manifest</h2><pre>{html.escape(json.dumps(manifest, indent=1, default=str))}</pre></body></html>"""
    out = p.report_dir / "index.html"
    paths.write_text_atomic(out, redact(page))
    paths.write_text_atomic(p.report_dir / "manifest.json", redact(json.dumps(manifest, indent=1, default=str)))
    return out


def run_study(p: StudyParams, only: list[str] | None = None, log=print) -> int:
    """Run the notebooks of the study; 0 when all succeed, 1 when one fails (its HTML still rendered)."""
    logging.getLogger("papermill").setLevel(logging.ERROR)  # it warns for every injected key a notebook does not declare
    steps = [s for s in STEPS if not only or s.name in only]
    unknown = set(only or []) - {s.name for s in STEPS}
    if unknown:
        raise ValueError(f"--only: unknown step(s) {sorted(unknown)}; steps: {', '.join(s.name for s in STEPS)}")
    step_params = [(s, p.replace(**s.overrides)) for s in steps]  # validate every step before running any
    executed_dir = p.run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    p.report_dir.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.now(dt.timezone.utc)
    manifest: dict[str, Any] = {
        "run_name": p.run_name, "status": "running", "start": start.isoformat(timespec="seconds"), "end": None,
        "wall_s": 0.0, "seed": p.seed, "params": p.to_dict(), "git": git_commit(), "packages": package_versions(),
        "device": device_info(),
        "steps": [{"name": s.name, "notebook": s.notebook, "title": s.title, "overrides": s.overrides,
                   "status": "not run", "wall_s": None} for s in steps]}
    code = 0
    for i, (step, sp) in enumerate(step_params):
        log(f"[{i + 1}/{len(steps)}] {step.name}: {step.title}")
        try:
            manifest["steps"][i]["wall_s"] = execute_step(step, sp.to_dict(), executed_dir, p.report_dir)
            manifest["steps"][i]["status"] = "ok"
            log(f"    done in {manifest['steps'][i]['wall_s']:.1f} s -> {p.report_dir / (step.name + '.html')}")
        except StepFailed as err:
            manifest["steps"][i]["status"] = "failed"
            manifest["failure"] = str(err)
            log(f"FAILED: {err}")
            code = 1
            break
    end = dt.datetime.now(dt.timezone.utc)
    manifest.update(status="failed" if code else "ok", end=end.isoformat(timespec="seconds"),
                    wall_s=(end - start).total_seconds())
    index = write_index(p, manifest)
    log(f"report: {index}")
    return code
