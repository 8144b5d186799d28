"""The runner: a failing cell stops the run, exits non-zero, names the cell, and still renders its HTML."""
import json

import nbformat

from distill import params, paths, runner


def test_failing_cell_is_reported_and_rendered(tmp_path, monkeypatch):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    (nb_dir / "00_teacher.py").write_text(
        '# %% tags=["parameters"]\nrun_name: str = "x"  # the run\n\n# %%\nprint("first cell ran")\n\n'
        '# %%\nraise ValueError("deliberate failure for the test")\n')
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    p = params.from_mapping({"run_name": "failing", "output_dir": str(tmp_path / "artifacts")})
    monkeypatch.setattr(paths, "REPORTS_DIR", tmp_path / "reports")
    logs = []
    code = runner.run_study(p, only=["00_teacher", "01_distill"], log=logs.append)
    assert code == 1
    report = tmp_path / "reports" / "failing"
    html = (report / "00_teacher.html").read_text()
    assert "deliberate failure for the test" in html and "first cell ran" in html
    assert any("00_teacher" in line and "ValueError" in line and "cell" in line for line in logs)
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert [s["status"] for s in manifest["steps"]] == ["failed", "not run"]
    assert (report / "index.html").exists()
    assert "x" * 34 not in (report / "index.html").read_text()


def test_secrets_are_redacted(monkeypatch):
    token = "hf_" + "A1b2" * 9
    monkeypatch.setenv("HF_TOKEN", token)
    assert token not in runner.redact(f"token={token} and {token[:10]}")
    assert "***redacted***" in runner.redact(f"token={token}")


def test_manifest_bits():
    versions = runner.package_versions()
    assert versions["torch"] != "not installed" and versions["papermill"] != "not installed"
    assert runner.git_commit()["commit"]
    assert runner.device_info()["cpu_cores"] >= 1


def test_steps_cover_both_students():
    names = [s.name for s in runner.STEPS]
    assert names == ["00_teacher", "01_distill", "01_distill_ce_baseline", "02_merge", "03_benchmark"]
    baseline = params.StudyParams().replace(**runner.STEPS[2].overrides)
    assert baseline.variant == "ce_baseline" and not baseline.uses_teacher
    _ = nbformat  # executed notebooks are nbformat files; imported to fail early if missing
