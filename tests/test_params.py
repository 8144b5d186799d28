"""Params: one typed schema; bad input exits early with one line naming the key, value and fix."""
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from distill.core import params
from distill.core.params import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def test_every_profile_validates():
    profiles = sorted((ROOT / "params").glob("*.yaml"))
    assert len(profiles) >= 2
    for path in profiles:
        p = params.load(path)
        assert p.run_name
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path.name} must start with a comment saying what it runs"


@pytest.mark.parametrize("changes, key, needle", [
    ({"learning_rat": 1.0e-3}, "learning_rat", "did you mean 'learning_rate'"),
    ({"gamma_kl": -0.5}, "gamma_kl", ">= 0.0"),
    ({"alpha_ce": 0.0, "gamma_kl": 0.0, "beta_mse": 0.0}, "alpha_ce", "all 0"),
    ({"temperature": 0.0}, "temperature", "> 0"),
    ({"lora_r": 0}, "lora_r", ">= 1"),
    ({"eval_size": 0}, "eval_size", ">= 1"),
    ({"bench_size": 0}, "bench_size", ">= 1"),
    ({"max_steps": "ten"}, "max_steps", "expected a int"),
    ({"learning_rate": "2e-5"}, "learning_rate", "2.0e-5"),
    ({"use_lora": "yes"}, "use_lora", "expected a bool"),
    ({"kd_kind": "kl"}, "kd_kind", "one of"),
    ({"layer_map": [0, "x"]}, "layer_map[1]", "expected a int"),
    ({"variant": "ce_baseline"}, "variant", "gamma_kl: 0"),
])
def test_bad_values_name_the_key(changes, key, needle):
    with pytest.raises(ParamsError) as err:
        params.from_mapping(changes)
    msg = str(err.value)
    assert msg.startswith(key) and needle in msg and "\n" not in msg


def test_bool_is_not_an_int():
    with pytest.raises(ParamsError, match="max_steps"):
        params.from_mapping({"max_steps": True})


def test_ints_are_accepted_as_floats_and_lists_copied():
    p = params.from_mapping({"learning_rate": 1, "layer_map": [1, 3]})
    assert p.learning_rate == 1.0 and isinstance(p.learning_rate, float)
    assert params.StudyParams().layer_map == [] and params.StudyParams().layer_map is not params.StudyParams().layer_map


def test_from_notebook_collects_only_schema_keys():
    ns = {"run_name": "x", "max_steps": 3, "pd": object(), "_private": 1}
    p = params.from_notebook(ns)
    assert (p.run_name, p.max_steps) == ("x", 3)
    with pytest.raises(ParamsError, match="max_steps"):
        params.from_notebook({"max_steps": -1})


def test_replace_revalidates():
    p = params.StudyParams()
    assert p.replace(max_steps=7).max_steps == 7
    with pytest.raises(ParamsError):
        p.replace(gamma_kl=-1.0)


def test_run_name_defaults_to_file_stem(tmp_path):
    f = tmp_path / "my-profile.yaml"
    f.write_text(yaml.safe_dump({"max_steps": 2}))
    assert params.load(f).run_name == "my-profile"


@pytest.mark.parametrize("content, needle", [
    ("learning_rat: 0.001\n", "learning_rat"),
    ("gamma_kl: -1.0\n", "gamma_kl"),
    ("max_steps: ten\n", "max_steps"),
    ("- a\n- b\n", "mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_cli_validate_bad_files_exit_nonzero_with_one_line(tmp_path, content, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    res = run_cli("validate", str(f))
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_missing_file_names_the_path(tmp_path):
    res = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "nope.yaml" in res.stderr and "not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_run_validates_before_anything_loads(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("learning_rat: 0.001\n")
    res = run_cli("run", str(f))
    assert res.returncode == 2 and "learning_rat" in res.stderr and "Traceback" not in res.stderr


def test_cli_validate_ok():
    res = run_cli("validate", "params/smoke.yaml")
    assert res.returncode == 0, res.stderr


def test_overrides_on_the_command_line(tmp_path):
    p = params.load("params/smoke.yaml", overrides=["seed=3", "run_name=smoke_seed3", "learning_rate=5.0e-4"])
    assert (p.seed, p.run_name, p.learning_rate) == (3, "smoke_seed3", 5.0e-4)
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        params.load("params/smoke.yaml", overrides=["seed"])
    with pytest.raises(ParamsError, match="sed"):
        params.load("params/smoke.yaml", overrides=["sed=1"])
    res = run_cli("validate", "params/smoke.yaml", "--set", "gamma_kl=-1")
    assert res.returncode == 2 and "gamma_kl" in res.stderr
