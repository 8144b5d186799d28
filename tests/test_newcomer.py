"""A newcomer's path by hand (README "Notebooks by hand"): `make notebooks` writes .ipynb files whose kernel is the
project's Python, and the README's papermill command runs once the run's earlier steps have made their outputs."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import project_env, run_in_project

from distill.pipeline.runner import load_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))


def make_notebooks(project: Path) -> subprocess.CompletedProcess:
    """The Makefile's own `notebooks` recipe, run in `project` (a copy holding notebooks/), with this interpreter as
    .venv's Python; `-o .venv/.installed` skips `make setup` (the interpreter is already set up)."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    return subprocess.run(["make", "-o", ".venv/.installed", "notebooks", f"PY={sys.executable}"], cwd=project,
                          capture_output=True, text=True, timeout=300)


def kernel_command(name: str) -> list[str]:
    """What Jupyter launches for kernel `name`: the kernelspec KernelSpecManager finds, its argv formatted as
    papermill and JupyterLab format it when they run from this interpreter (a bare `python` is their own)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpecManager().get_kernel_spec(name)  # NoSuchKernel when nothing resolves the name
    assert spec.language == "python", spec.to_dict()
    return KernelManager(kernel_name=name).format_kernel_cmd()


def test_make_notebooks_writes_every_notebook_with_a_kernel_that_imports_distill(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_*"))
    sources = {p.name: p.read_text() for p in (project / "notebooks").glob("*.py")}
    res = make_notebooks(project)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert {p.name: p.read_text() for p in (project / "notebooks").glob("*.py")} == sources, "the sync rewrote a source"


    runner_kernel = load_notebook(ROOT / "notebooks" / f"{NOTEBOOKS[0]}.py").metadata["kernelspec"]["name"]
    kernels = set()
    for name in NOTEBOOKS:
        ipynb = project / "notebooks" / f"{name}.ipynb"
        assert ipynb.exists(), f"make notebooks wrote no {ipynb.name}"
        kernels.add(json.loads(ipynb.read_text())["metadata"]["kernelspec"]["name"])
    assert kernels == {runner_kernel}, "by hand and in the pipeline the notebooks run in the same kernel"

    cmd = kernel_command(runner_kernel)
    assert "ipykernel_launcher" in cmd, cmd
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the kernel's interpreter on its own
    check = subprocess.run([cmd[0], "-c", "import importlib.util, distill; "
                            "assert importlib.util.find_spec('ipykernel_launcher'); print(distill.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, f"kernel {runner_kernel} runs {cmd[0]}, which cannot import distill: {check.stderr}"
    assert Path(check.stdout.strip()).resolve().is_relative_to(ROOT / "lib"), check.stdout  # this checkout's


def readme_commands() -> list[str]:
    """The command lines of README's "Notebooks by hand" that run something (`make`, `--help-notebook` left out)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Notebooks by hand", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #")[0].strip() for line in section.splitlines() if line.startswith("    ")]
    return [line for line in lines if line.startswith((".venv/bin/python -m distill ", ".venv/bin/papermill "))
            and "--help-notebook" not in line]


@pytest.mark.slow
def test_readme_papermill_command_runs_after_the_steps_it_needs(smoke_build, tmp_path):
    """README's commands in order, in a copy of the built smoke project: the earlier step (up to date there), then
    papermill by hand, which never touches the pipeline run's folders."""
    commands = readme_commands()
    assert any(c.startswith(".venv/bin/papermill notebooks/") for c in commands), "README shows no papermill run"
    project = smoke_build.snapshot(tmp_path / "project")
    students = project / "artifacts" / "smoke" / "students"
    before = {f: f.stat().st_mtime_ns for f in students.rglob("*")}
    made = make_notebooks(project)
    assert made.returncode == 0, made.stderr[-2000:]
    for line in commands:
        argv = shlex.split(line)
        if argv[0].endswith("python"):  # python -m distill ...: the copy's own distill, as run_in_project runs it
            res = run_in_project(project, *argv[3:])
            assert res.returncode == 0, f"{line}\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
            continue
        out = tmp_path / Path(argv[2]).name
        argv = [str(Path(sys.executable).with_name("papermill")), argv[1], str(out), *argv[3:]]
        ran = subprocess.run(argv, cwd=project, env=project_env(project), capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, f"{line}\n{ran.stdout[-3000:]}{ran.stderr[-3000:]}"
        executed = json.loads(out.read_text())
        assert executed["metadata"]["kernelspec"]["name"] == "python3"
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, errors[:1]
        if "01_distill" in argv[1]:  # by hand: a lab run of its own, never the pipeline run's folders
            labs = sorted((project / "artifacts").glob("_lab_smoke_*"))
            assert labs and all(list((lab / "students" / "distilled").iterdir()) for lab in labs), "nothing trained"
            assert {f: f.stat().st_mtime_ns for f in students.rglob("*")} == before, "a by-hand run wrote the run's folder"
