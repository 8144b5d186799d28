"""Atomic folders: a killed build's temporary folder is removed at the next build, and nothing else is."""
import os
import subprocess

import pytest

from distill.core import paths


def test_only_temp_folders_of_dead_builders_on_this_host_are_removed(tmp_path):
    final = tmp_path / "deploy"
    dead = subprocess.Popen(["true"])
    dead.wait()
    prefix = f".deploy.distill-tmp.{paths._HOST}"
    (tmp_path / f"{prefix}.{dead.pid}.abc").mkdir()  # killed mid-build
    (tmp_path / f"{prefix}.{os.getpid()}.xyz").mkdir()  # a live build (this process)
    (tmp_path / ".deploy.2024.backup").mkdir()  # a user's folder with a look-alike name
    (tmp_path / ".deploy.distill-tmp.another-host.1.abc").mkdir()  # a build on another host sharing the disk
    paths.atomic_folder(lambda tmp: (tmp / "weights").write_text("new"), final)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".deploy.2024.backup", ".deploy.distill-tmp.another-host.1.abc",
                           f"{prefix}.{os.getpid()}.xyz", "deploy"])
    assert (final / "weights").read_text() == "new"


def test_a_kill_between_the_two_renames_gives_the_old_folder_back(tmp_path):
    final = tmp_path / "deploy"
    old = tmp_path / ".deploy.distill-tmp.old"
    old.mkdir()
    (old / "weights").write_text("previous")
    def failing_build(tmp):
        raise RuntimeError("build failed")
    with pytest.raises(RuntimeError):
        paths.atomic_folder(failing_build, final)
    assert (final / "weights").read_text() == "previous" and not old.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["deploy"]


def test_a_deployment_gets_our_marker_and_only_marked_or_empty_folders_are_replaceable(tmp_path):
    final = tmp_path / "deploy"
    paths.atomic_folder(lambda tmp: (tmp / "config.json").write_text("{}"), final, marker={"run_name": "x"})
    assert (final / paths.DEPLOY_MARKER).exists()
    paths.check_replaceable(final)  # ours: no error
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(paths.NotOurFolder, match="not a deployment of this study"):
        paths.check_replaceable(tmp_path / "mine")


def test_an_unchanged_json_file_keeps_its_bytes_and_time_so_its_stage_stays_up_to_date(tmp_path):
    target = tmp_path / "views" / "run.json"
    assert paths.write_json_if_changed(target, {"b": 1, "a": [1, 2]}) is True
    first = target.read_text()
    os.utime(target, (1_000_000, 1_000_000))
    assert paths.write_json_if_changed(target, {"a": [1, 2], "b": 1}) is False  # the same content, keys in any order
    assert target.read_text() == first and target.stat().st_mtime == 1_000_000
    assert paths.write_json_if_changed(target, {"a": [1, 2], "b": 2}) is True
    assert '"b": 2' in target.read_text() and target.stat().st_mtime != 1_000_000
    assert [p.name for p in target.parent.iterdir()] == ["run.json"]  # no temporary file left beside it
