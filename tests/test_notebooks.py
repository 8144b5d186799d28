"""Notebooks stay thin: no def/class, a tagged parameters cell of annotated literals, valid keys only."""
import ast
from pathlib import Path

import jupytext
import pytest

from distill.core import params
from distill.pipeline.runner import load_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert [n.stem for n in NOTEBOOKS] == ["00_teacher", "01_distill", "02_merge", "03_benchmark", "04_capacity", "05_signal", "06_fourbit"]


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
        assert ast.unparse(node.annotation) in ("str", "int", "float", "bool", "list", "dict"), name
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


    out = Path(tempfile.mkdtemp()) / f"{path.stem}.ipynb"
    jupytext.write(load_notebook(path), out)
    return out


def _step_calls(tree: ast.AST) -> list[str]:
    """The study steps a piece of code calls (`training.fit(...)`, `steps.load_data(...)`, `fit(...)`), in order."""
    from distill.study import training

    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    names = [c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "") for c in calls]
    return [n for n in names if n in training.STEPS]


def test_the_notebook_and_a_launched_rank_run_the_same_steps_in_the_same_order():
    """01_distill's cells and `training.run` (what each accelerate rank runs) compose the same step functions."""
    import inspect

    from distill.study import training

    notebook = jupytext.read(NOTEBOOKS[1])
    cells = ast.parse("\n".join(c.source for c in notebook.cells if c.cell_type == "code"))
    in_notebook = _step_calls(cells)
    in_rank = _step_calls(ast.parse(inspect.getsource(training.run)))
    assert in_rank == list(training.STEPS)
    assert in_notebook == list(training.STEPS), "01_distill must call each step once, in the ranks' order"


def test_no_notebook_calls_one_function_that_does_its_whole_work():
    """A notebook walks steps: no call of a whole student's training (`train_student`, `run`) or a whole stage."""
    whole = {"train_student", "run", "run_study", "run_notebook_stage", "main"}
    for path in NOTEBOOKS:
        names = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
                 for c in ast.walk(ast.parse(path.read_text())) if isinstance(c, ast.Call)}
        assert not names & whole, f"{path.name} calls {names & whole}"
        assert "distill.pipeline" not in path.read_text(), f"{path.name}: notebooks never import the pipeline layer"


def test_a_notebook_run_by_hand_gets_a_run_folder_of_its_own(monkeypatch):
    """Under the pipeline (its runner sets DISTILL_STAGE) the run's own folders; by hand, a lab run that reads the
    pipeline run's models and writes only to its own folders, named after its settings."""
    from distill.study import layout

    p = params.load("params/smoke.yaml")
    monkeypatch.setenv(layout.STAGE_ENV, "01_distill")
    assert layout.notebook_params(p) == p
    monkeypatch.delenv(layout.STAGE_ENV)
    lab = layout.notebook_params(p)
    assert lab.run_name.startswith("_lab_smoke_") and layout.lab_of(lab) == "smoke"
    assert lab.run_dir != p.run_dir and lab.report_dir != p.report_dir
    assert layout.tuned_teacher_dir(lab) == layout.tuned_teacher_dir(p)  # the pipeline run's models, read only
    assert layout.variant_dir(lab, "distilled") != layout.variant_dir(p, "distilled")
    assert layout.notebook_params(p.replace(temperature=4.0)).run_name != lab.run_name
    assert layout.notebook_params(p.replace(variant="ce_baseline", gamma_kl=0.0, beta_mse=0.0)).run_dir != lab.run_dir
    assert layout.notebook_params(p).run_name == lab.run_name  # the same settings again: the same lab run (resumes)


def test_every_notebook_run_by_hand_writes_only_to_its_lab_run(monkeypatch, tmp_path):
    """00_teacher by hand makes the lab's own base models (never the run's); the notebooks after it read them once
    made, else the run's; 02_merge merges only what the lab trained; 03/04 draw the run's scores."""
    from distill.study import layout, merge

    monkeypatch.delenv(layout.STAGE_ENV, raising=False)
    p = params.load("params/smoke.yaml").replace(output_dir=str(tmp_path / "smoke"))
    for path in NOTEBOOKS:
        assert "layout.notebook_params(params.from_notebook(globals())" in path.read_text(), path.name
    teacher_lab = layout.notebook_params(p, makes_base_models=True)
    assert layout.tuned_teacher_dir(teacher_lab) == teacher_lab.run_dir / "teacher" != layout.tuned_teacher_dir(p)
    assert layout.student_init_dir(teacher_lab).parent == teacher_lab.run_dir
    lab = layout.notebook_params(p)
    assert lab.run_dir == teacher_lab.run_dir and layout.tuned_teacher_dir(lab) == layout.tuned_teacher_dir(p)
    layout.tuned_teacher_dir(teacher_lab).mkdir(parents=True)  # 00_teacher ran by hand with these settings
    assert layout.tuned_teacher_dir(layout.notebook_params(p)) == layout.tuned_teacher_dir(teacher_lab)
    run = layout.pipeline_run(lab)
    assert (run.run_name, run.run_dir, layout.scores_file(run, "teacher")) == \
        (p.run_name, p.run_dir, layout.scores_file(p, "teacher"))
    assert layout.pipeline_run(p) == p
    with pytest.raises(FileNotFoundError, match="01_distill by hand first"):
        merge.trained_variants(lab)
    (layout.variant_dir(lab, "distilled") / "best").mkdir(parents=True)
    assert merge.trained_variants(lab) == ("distilled",) and merge.trained_variants(p) == layout.VARIANTS
