"""Where things live, derived from the package's own location (never from the cwd).

JupyterLab runs a notebook with cwd = notebooks/, papermill with the caller's cwd: both must
resolve the same folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


def atomic_folder(build_into: Callable[[Path], None], final: Path) -> Path:
    """Build a folder under a temporary name beside `final`, then rename: an existing folder is replaced only
    by a complete one, and a failed build leaves no temporary folder behind."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_into(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
