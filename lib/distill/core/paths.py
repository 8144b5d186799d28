"""Where things live, derived from the package's own location (never from the cwd).

JupyterLab runs a notebook with cwd = notebooks/, papermill with the caller's cwd: both must
resolve the same folders.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # lib/distill/core/paths.py
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "params"
# Overridable so tests (and users with a big scratch disk) can keep heavy output elsewhere.
REPORTS_DIR = Path(os.environ.get("DISTILL_REPORTS_DIR", PROJECT_ROOT / "reports"))
ARTIFACTS_DIR = Path(os.environ.get("DISTILL_ARTIFACTS_DIR", PROJECT_ROOT / "artifacts"))
MODELS_DIR = Path(os.environ.get("DISTILL_MODELS_DIR", PROJECT_ROOT / "models"))
# The offline SQuAD copy beside a checkout of this workplace; see data.resolve_squad_dir.
SHARED_SQUAD_DIR = PROJECT_ROOT.parent / "shared" / "data" / "squad"


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_if_changed(path: Path, obj: Any) -> bool:
    """Write `obj` as sorted, indented JSON unless the file already holds exactly that: an unchanged file keeps its
    bytes, so the DVC stage that reads it stays up to date. Returns whether it wrote."""
    text = json.dumps(obj, indent=1, sort_keys=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


DEPLOY_MARKER = "DISTILL_DEPLOYMENT.json"


class NotOurFolder(ValueError):
    """A folder we were asked to replace holds something we did not write."""


def check_replaceable(folder: Path, key: str = "deploy_dir") -> None:
    """Replace a folder only when it is missing, empty, or one of our deployments (it carries DEPLOY_MARKER)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise NotOurFolder(f"{key}: {folder} is a file, not a folder; name a new folder")
    if any(folder.iterdir()) and not (folder / DEPLOY_MARKER).exists():
        raise NotOurFolder(f"{key}: {folder} holds files that are not a deployment of this study (no "
                           f"{DEPLOY_MARKER}); it would be replaced: name a new or empty folder (an earlier "
                           "deployment of this study without the marker: delete it yourself)")


def is_within(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


_HOST = socket.gethostname()


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.distill-tmp."


def _stale_temps(final: Path) -> list[Path]:
    """Temporary folders of `final` whose builder on this host died (a kill leaves them; each can be a whole model).

    Only our own names (`.<name>.distill-tmp.<host>.<pid>.<random>`) are considered: never a user's folder, never
    a live build, never one of another host sharing the disk.
    """
    prefix = _temp_prefix(final)
    stale = []
    for tmp in final.parent.glob(glob.escape(prefix) + "*"):
        parts = tmp.name[len(prefix):].rsplit(".", 2)  # host (may hold dots), pid, random
        if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit() and len(parts[1]) <= 9 \
                and not _alive(int(parts[1])):
            stale.append(tmp)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_folder(build_into: Callable[[Path], None], final: Path, marker: dict[str, Any] | None = None) -> Path:
    """Build a folder under a temporary name beside `final`, then rename: an existing folder is replaced only
    by a complete one, and a failed build leaves no temporary folder behind (nor does a killed one, at the next
    build of the same folder).

    With `marker`, the folder is a deployment: it gets DEPLOY_MARKER (see `check_replaceable`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f"{_temp_prefix(final)}old")
    if old.exists() and not final.exists():  # killed between the two renames below: the old folder comes back
        old.rename(final)
    for stale in _stale_temps(final):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(final)}{_HOST}.{os.getpid()}.", dir=final.parent))
    try:
        build_into(tmp)
        if marker is not None:
            (tmp / DEPLOY_MARKER).write_text(json.dumps(marker, indent=1, default=str), encoding="utf-8")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                tmp.rename(final)
            except OSError:
                if not final.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process built the same folder first: it stands
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


NAME_RULE = "letters, digits, '.', '-' and '_', not starting with '.'"
# the project's own folders: never an output folder, never replaced
OWN_FOLDERS = ("lib", "notebooks", "params", "tests", "reports", "artifacts", "models", "pipelines", "benchmarks",
               ".git", ".dvc", ".venv")


def check_name(key: str, value: str) -> str:
    """A run or sweep name names folders under reports/ and artifacts/: a name, never a path."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", value or "") or ".." in value:
        raise ValueError(f"{key}: got {value!r}; a name is {NAME_RULE}, at most 100 characters (it names folders "
                         "under reports/ and artifacts/; to write elsewhere set output_dir)")
    return value


def check_output_folder(key: str, value: str) -> Path:
    """An explicit output folder may lie anywhere but over the checkout: not the project, a parent of it, or one of
    its own folders."""
    folder = resolve(value).resolve()
    root = PROJECT_ROOT.resolve()
    if folder == root or folder in root.parents:
        raise ValueError(f"{key}: {value!r} is this checkout or a folder above it ({folder}); a run would write "
                         "over it: name a new folder, e.g. artifacts/my_run")
    for own in OWN_FOLDERS:
        if folder == root / own or (own not in ("reports", "artifacts", "models") and root / own in folder.parents):
            raise ValueError(f"{key}: {value!r} is the project's own {own}/ folder; name a new folder, e.g. "
                             "artifacts/my_run")
    return folder


def check_run_folder(key: str, value: str, run_name: str, base_run_dir: str = "") -> None:
    """A run's output folder is its own: never in the model cache, and under artifacts/ only in artifacts/<run_name>
    (a sweep's or a grid's seed run: inside its base run's folder), so no run writes into another's."""
    folder = resolve(value).resolve()
    for models in dict.fromkeys((MODELS_DIR.resolve(), (PROJECT_ROOT / "models").resolve())):
        if folder == models or models in folder.parents:
            raise ValueError(f"{key}: {value!r} is inside the model cache {shown(models)}/; name a folder of this "
                             f"run's own, e.g. artifacts/{run_name}")
    base = resolve(base_run_dir).resolve() if base_run_dir else None
    if base is not None and (folder == base or base in folder.parents):
        return
    for artifacts in dict.fromkeys((ARTIFACTS_DIR.resolve(), (PROJECT_ROOT / "artifacts").resolve())):
        if artifacts in folder.parents and folder.relative_to(artifacts).parts[0] != run_name:
            owner = folder.relative_to(artifacts).parts[0]
            raise ValueError(f"{key}: {value!r} lies in {shown(artifacts / owner)}/, the folder of run {owner!r}; "
                             f"runs never share folders: use artifacts/{run_name} (or a folder outside artifacts/)")


def hash_config(obj: Any) -> str:
    """A short, stable name for a JSON-able description (cache folders, training keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resolve(path: str | os.PathLike) -> Path:
    """A params path: absolute as given, relative ones against the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def shown(path: Path | str) -> str:
    """A path as a reader should see it: relative to the project when it lies inside (a report names no machine)."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def write_json(path: Path, obj: Any) -> None:
    """A JSON file written atomically (`write_text_atomic`); values JSON cannot hold are written as strings."""
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))
