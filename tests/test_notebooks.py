"""Notebooks stay thin: no def/class, a tagged parameters cell of annotated literals, valid keys only."""
import ast
from pathlib import Path

import jupytext
import pytest

from distill import params

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert [n.stem for n in NOTEBOOKS] == ["00_teacher", "01_distill", "02_merge", "03_benchmark", "04_capacity"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_function_or_class_in_notebooks(path):
    tree = ast.parse(path.read_text())
    defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert defined == [], f"{path.name} defines {defined}: move them into lib/distill"
    assert "lambda" not in path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_annotated_literals_of_schema_keys(path):
    nb = jupytext.read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged parameters"
    schema = params.field_names()
    hints = params._hints()
    values = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.AnnAssign), f"{ast.unparse(node)}: parameters are annotated assignments"
        name = node.target.id
        assert name in schema, f"{name} is not a params key"
        values[name] = ast.literal_eval(node.value)  # literals only
        assert ast.unparse(node.annotation) in ("str", "int", "float", "bool", "list"), name
        assert hints[name] is not None
    params.from_mapping(values)  # the defaults together are a valid profile
    lines = [line for line in tagged[0].source.splitlines() if line.strip()]
    assert all("  # " in line for line in lines), "every parameter has a short comment"


def test_papermill_can_describe_the_notebooks():
    import papermill as pm

    for path in NOTEBOOKS:
        described = pm.inspect_notebook(str(_as_ipynb(path)))
        assert "run_name" in described and described["run_name"]["help"]


def _as_ipynb(path: Path) -> Path:
    import tempfile

    from distill.runner import load_notebook

    out = Path(tempfile.mkdtemp()) / f"{path.stem}.ipynb"
    jupytext.write(load_notebook(path), out)
    return out
