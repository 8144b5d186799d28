"""The DVC pipeline as generated: what each stage reads and writes, and the committed pipelines stay current."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

from distill.core import params, paths, procs
from distill.pipeline import dvc
from distill.study import sweep

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "params").glob("*.yaml"))


def _in_project(p):
    """The tests keep their outputs outside the project (conftest); the pipeline needs them inside."""
    return p.replace(output_dir=f"artifacts/{p.run_name}")


@pytest.fixture
def reports_inside(monkeypatch):
    monkeypatch.setattr(paths, "REPORTS_DIR", paths.PROJECT_ROOT / "reports")
    monkeypatch.setattr(sweep, "load_registry", lambda base: {"questions": 0, "sweeps": {}})  # no local sweeps


def stage_map(p):
    return {s.name: s for s in dvc.stages(p)}


def test_a_loss_key_reruns_only_what_is_downstream_of_distillation(reports_inside):
    s = stage_map(_in_project(params.load("params/smoke.yaml")))
    readers = {name for name, st in s.items() if "temperature" in st.params}
    assert readers == {"train-distilled"}
    # merge, scoring and the report follow through their deps on the distilled student's folders
    assert "artifacts/smoke/students/distilled" in s["merge"].deps
    assert "artifacts/smoke/deploy" in s["score-distilled"].deps and "artifacts/smoke/deploy" in s["speed-distilled"].deps
    assert "artifacts/smoke/deploy" not in s["score-ce_baseline"].deps


def test_teacher_preparation_reads_no_student_training_key(reports_inside):
    teacher = set(stage_map(_in_project(params.load("params/smoke.yaml")))["teacher"].params)
    assert not teacher & {"temperature", "gamma_kl", "beta_mse", "kd_kind", "max_steps", "learning_rate", "use_lora",
                          "alpha_ce", "bench_warmup", "qualitative_examples", "deploy_dir"}
    assert {"teacher", "teacher_finetune_steps", "prune_keep", "seed", "max_length"} <= teacher


def test_ce_baseline_does_not_read_teacher_terms(reports_inside):
    s = stage_map(_in_project(params.load("params/smoke.yaml")))
    assert not set(s["train-ce_baseline"].params) & set(dvc.TEACHER_TERMS)
    assert set(dvc.TEACHER_TERMS) <= set(s["train-distilled"].params)
    assert dvc.stage_params(params.load("params/smoke.yaml"), "train-ce_baseline").uses_teacher is False


def test_every_stage_key_is_a_params_key(reports_inside):
    p = _in_project(params.load("params/smoke.yaml"))
    known = set(params.field_names())
    for s in dvc.stages(p):
        assert set(s.params) <= known, (s.name, set(s.params) - known)


def test_training_checkpoints_persist_and_reports_are_not_cached(reports_inside):
    d = dvc.dvc_yaml(_in_project(params.load("params/smoke.yaml")))["stages"]
    outs = d["train-distilled"]["outs"]
    assert {"artifacts/smoke/students/distilled": {"persist": True}} in outs
    assert {"artifacts/smoke/executed/01_distill.ipynb": {"cache": False}} in outs
    # pages are views of the executed notebook, rendered outside the cache: a renderer change re-runs no stage
    assert not any(str(next(iter(o))).endswith(".html") for s in d.values() for o in s.get("outs", []))
    assert d["teacher"]["wdir"] == "../.." and d["teacher"]["cmd"].startswith("python -m distill stage ")
    code = [x for x in d["report"]["deps"] if "scores" not in x and "speed" not in x]
    assert code == ["lib/distill/core", "lib/distill/kd", "lib/distill/parts", "lib/distill/report", "lib/distill/study",
                    "notebooks/03_benchmark.py", "pipelines/smoke/inputs.json"]


def test_stages_depend_on_code_by_layer_never_on_the_pipeline_layer(reports_inside):
    """Code dependencies are the lib's layer folders (no hand-kept file lists); the pipeline layer only orders and
    launches stages, so a change there re-runs nothing, while a change in any layer a stage runs re-runs it."""
    d = dvc.dvc_yaml(_in_project(params.load("params/smoke.yaml")))["stages"]
    layers = {"lib/distill/" + x for x in ("core", "kd", "parts", "study", "report", "pipeline")}
    for name, stage in d.items():
        code = [x for x in stage["deps"] if x.startswith("lib/")]
        assert code and set(code) <= layers - {"lib/distill/pipeline"}, (name, code)
        assert {"lib/distill/core", "lib/distill/kd", "lib/distill/parts", "lib/distill/study"} <= set(code), name
    assert all(not x.endswith(".py") or x.startswith("notebooks/") for s in d.values() for x in s["deps"])


def test_report_files_follow_the_params(reports_inside):
    p = _in_project(params.load("params/smoke.yaml"))
    with_recovery = stage_map(p)["train-distilled"].reports
    without = stage_map(p.replace(recovery_steps=0))["train-distilled"].reports
    assert "reports/smoke/recovery_loss_components_distilled.png" in with_recovery
    assert "reports/smoke/recovery_loss_components_distilled.png" not in without


def test_outputs_outside_the_project_are_refused_with_the_fix(reports_inside):
    p = params.load("params/smoke.yaml").replace(output_dir="/tmp/elsewhere")
    with pytest.raises(params.ParamsError, match=r"output_dir: /tmp/elsewhere is outside the project"):
        dvc.stages(p)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_dvc_accepts_every_profile_pipeline(profile, tmp_path):
    """Each profile's generated dvc.yaml parses in DVC: no overlapping outputs, no cycle, params found."""
    from conftest import make_project_copy, project_env

    project = make_project_copy(tmp_path / "project")
    subprocess.run([sys.executable, "-m", "distill", "pipeline", str(profile.relative_to(ROOT))], cwd=project,
                   env=project_env(project), check=True, capture_output=True)
    run_name = params.load(profile).run_name
    dag = subprocess.run([shutil.which("dvc", path=str(Path(sys.executable).parent)), "dag", "--md",
                          f"pipelines/{run_name}/dvc.yaml"], cwd=project, capture_output=True, text=True)
    assert dag.returncode == 0, dag.stderr
    assert "teacher" in dag.stdout and "report" in dag.stdout


def test_run_lock_refuses_a_second_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    p = params.load("params/smoke.yaml")
    with dvc.run_lock(p):
        with pytest.raises(dvc.RunLocked, match="run smoke is already running"):
            with dvc.run_lock(p):
                pass
    with dvc.run_lock(p):  # released when the holder ends
        pass


def test_two_run_names_writing_one_output_dir_are_refused_too(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    a = params.load("params/smoke.yaml", ["run_name=a", f"output_dir={tmp_path / 'shared'}"])
    b = params.load("params/smoke.yaml", ["run_name=b", f"output_dir={tmp_path / 'shared'}"])
    with dvc.run_lock(a):
        with pytest.raises(dvc.RunLocked, match=r"output folder .*shared is being written by another run "
                                                     r"\(pid \d+, run a\); wait for it to finish, or set another "
                                                     "output_dir"):
            with dvc.run_lock(b):
                pass


def test_a_lock_left_by_a_killed_run_is_not_in_the_way(tmp_path, monkeypatch):
    """kill -9 of the holder: its lock file stays, with its pid, but the next run takes it."""
    import signal

    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from distill.core import paths, params; from distill.pipeline import dvc; "
            "from pathlib import Path; paths.PROJECT_ROOT = Path(sys.argv[2]); "
            "p = params.load('params/smoke.yaml')\n"
            "with dvc.run_lock(p):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "lib"), str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    p = params.load("params/smoke.yaml")
    with pytest.raises(dvc.RunLocked, match=f"pid {holder.pid}"):
        with dvc.run_lock(p):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert list((tmp_path / ".dvc" / "tmp").glob("distill-run-smoke.lock"))  # the file stays ...
    with dvc.run_lock(p):  # ... and does not block
        pass


def _parameters_cell(path: Path) -> dict:
    cell = next(c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body}


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.py")), ids=lambda p: p.stem)
def test_notebook_defaults_are_the_smoke_profile(path):
    """A notebook run by hand (papermill with few -p) must compute what the runner computes for smoke."""
    smoke = params.load("params/smoke.yaml").to_dict()
    for key, value in _parameters_cell(path).items():
        assert value == smoke[key], f"{path.name}: {key} = {value!r}, smoke profile has {smoke[key]!r}"


def test_dvc_config_copies_outputs_out_of_the_cache():
    """Copies (or reflinks), never hard links: an output edited in place must not edit DVC's cached copy too."""
    config = (ROOT / ".dvc" / "config").read_text()
    assert 'type = "reflink,copy"' in config and "analytics = false" in config
    assert (ROOT / ".dvcignore").exists()


def test_generated_pipeline_round_trips(reports_inside):
    p = _in_project(params.load("params/smoke.yaml"))
    dvc_text, params_text = dvc.pipeline_texts(p)
    assert params.from_mapping(yaml.safe_load(params_text)) == p
    assert list(yaml.safe_load(dvc_text)["stages"]) == [s.name for s in dvc.stages(p)]


def test_a_cached_teacher_adds_a_cache_stage_that_only_the_distilled_student_reads(reports_inside):
    p = _in_project(params.load("params/smoke.yaml")).replace(teacher_cache="topk", teacher_cache_k=8)
    s = stage_map(p)
    names = list(s)
    assert names.index("teacher") < names.index("teacher-cache") < names.index("train-distilled")
    view = "artifacts/smoke/teacher_cache/topk-k8-T2-L128-nf4-float32/views/smoke.json"  # the smoke teacher is NF4
    assert view in s["train-distilled"].deps and view not in s["train-ce_baseline"].deps
    assert {"teacher_cache", "teacher_cache_k", "kd_sparse_tail"} <= set(s["train-distilled"].params)
    assert {"temperature", "teacher_cache_k"} <= set(s["teacher-cache"].params)
    assert s["teacher-cache"].persist == ["artifacts/smoke/teacher_cache"]
    assert "teacher-cache" not in stage_map(_in_project(params.load("params/smoke.yaml")))


def test_a_stage_ends_when_its_run_is_killed():
    """kill -9 of a run must not leave its stage (and the stage's kernel) running, holding outputs and CPU."""
    import time

    run = subprocess.Popen(["sleep", "60"])
    stage = subprocess.Popen([sys.executable, "-c", "from distill.core import procs; import time; "
                              "procs.die_with_run(); time.sleep(60)"],
                             env={**__import__("os").environ, procs.RUN_PID_ENV: str(run.pid)})
    time.sleep(1.5)
    assert stage.poll() is None  # alive while its run is
    run.kill()
    run.wait()
    assert stage.wait(timeout=10) == 137


def test_a_run_whose_folders_overlap_another_pipelines_is_refused_with_the_fix(tmp_path, monkeypatch):
    """Two pipelines writing overlapping folders break every DVC command of the project: refused before writing."""
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(dvc, "pipeline_dir", lambda p: tmp_path / "pipelines" / p.run_name)
    other = params.load("params/smoke.yaml", ["run_name=pa", f"output_dir={tmp_path / 'out' / 'pa'}"])
    (tmp_path / "pipelines" / "pa").mkdir(parents=True)
    (tmp_path / "pipelines" / "pa" / "params.yaml").write_text(yaml.safe_dump(other.to_dict()))
    mine = params.load("params/smoke.yaml", ["run_name=pv", f"deploy_dir={tmp_path / 'out' / 'pa' / 'deploy'}"])
    with pytest.raises(params.ParamsError, match=r"run pv's deploy_dir .* overlaps run pa's output folder .*delete "
                                                 r"pipelines/pa/ if that run is gone"):
        dvc.check_no_overlap(mine)
    dvc.check_no_overlap(params.load("params/smoke.yaml", ["run_name=pv", f"output_dir={tmp_path / 'out' / 'pv'}"]))


@pytest.mark.parametrize("key, value, said", [
    ("output_dir", "artifacts/pa", "the folder of run 'pa'"),
    ("deploy_dir", "artifacts/pa/deploy", "the folder of run 'pa'"),
    ("output_dir", "models/mine", "inside the model cache"),
])
def test_a_folder_of_another_run_or_the_model_cache_is_refused_at_validation(key, value, said):
    with pytest.raises(params.ParamsError, match=said):
        params.load("params/smoke.yaml", ["run_name=pv", f"{key}={value}"])
    params.load("params/smoke.yaml", ["run_name=pv", f"{key}=artifacts/pv/{key}"])  # its own: fine


def test_the_squad_files_are_an_input_of_every_stage(reports_inside, tmp_path, monkeypatch):
    """By content: another copy of the same bytes changes nothing; one changed row changes the fingerprint every
    stage depends on."""
    import gzip
    import shutil

    from conftest import SQUAD_DIR

    p = _in_project(params.load("params/smoke.yaml"))
    entries = dvc.dvc_yaml(p)["stages"]
    inputs = dvc.project_relative(dvc.inputs_file(p), "inputs")
    assert {name for name, e in entries.items() if inputs in e["deps"]} == set(entries)
    monkeypatch.setattr(dvc, "pipeline_dir", lambda p: tmp_path / "pipelines" / p.run_name)  # its MD5 memo
    same = shutil.copytree(SQUAD_DIR, tmp_path / "same")
    before = dvc.input_fingerprint(p)
    assert set(before["squad"]) == {"train", "validation"} and all(len(v["sha256"]) == 64 for v in before["squad"].values())
    monkeypatch.setenv("SQUAD_DIR", str(same))
    assert dvc.input_fingerprint(p) == before
    with gzip.open(same / "validation.jsonl.gz", "at", encoding="utf-8") as fh:
        fh.write('{"id": "x", "title": "t", "context": "c", "question": "q", "answers": {"text": ["c"], '
                 '"answer_start": [0]}}\n')
    after = dvc.input_fingerprint(p)
    assert after["squad"]["validation"] != before["squad"]["validation"]
    assert after["squad"]["train"] == before["squad"]["train"]


def test_a_stage_whose_code_changed_while_it_ran_is_not_recorded(tmp_path, monkeypatch, capsys):
    """DVC hashes a stage's dependencies when it ends: a code edit during the stage must fail it (exit 3), so the
    lock never names code that did not make the outputs and the next run re-runs it."""
    from distill.pipeline import stage

    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    code = tmp_path / "lib" / "distill" / "parts" / "x.py"
    code.parent.mkdir(parents=True)
    code.write_text("A = 1\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setattr(stage, "_run", lambda *a: 0)
    assert stage.main("pipelines/x/params.yaml", "score", "teacher") == 0
    (tmp_path / "lib" / "distill" / "parts" / "__pycache__").mkdir()
    monkeypatch.setattr(stage, "_run", lambda *a: (code.parent / "__pycache__" / "x.pyc").write_bytes(b"") and 0)
    assert stage.main("pipelines/x/params.yaml", "score", "teacher") == 0  # what DVC ignores changes nothing
    monkeypatch.setattr(stage, "_run", lambda *a: code.write_text("A = 2\n") and 0)
    assert stage.main("pipelines/x/params.yaml", "score", "teacher") == 3
    assert "changed while stage score teacher ran" in capsys.readouterr().out


def test_a_local_teacher_folder_is_an_input_by_content(reports_inside, tiny_paths, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(dvc, "pipeline_dir", lambda p: tmp_path / "pipelines" / p.run_name)  # its MD5 memo
    teacher = shutil.copytree(tiny_paths[0], tmp_path / "teacher")
    p = _in_project(params.load("params/smoke.yaml")).replace(teacher=str(teacher))
    before = dvc.input_fingerprint(p)
    assert "model.safetensors" in before["teacher"] and "student" not in before  # tiny:student: made from the data
    assert dvc.input_fingerprint(p) == before
    (teacher / "config.json").write_text((teacher / "config.json").read_text() + " ")
    after = dvc.input_fingerprint(p)
    assert after["teacher"]["config.json"] != before["teacher"]["config.json"]
    assert after["teacher"]["model.safetensors"] == before["teacher"]["model.safetensors"]
