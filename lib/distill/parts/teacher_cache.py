"""The teacher, paid once: its sparse targets for every training example, stored and reused.

For each example (keyed by its token ids, so every variant, seed and student size that meets the same
example reuses it) and each predicted position, the cache keeps what a sparse divergence needs:

- `topk`: the k most likely tokens at the profile's temperature, their ids (int32) and the teacher's
  log-probabilities (fp16, log-softmax over the full vocabulary at temperature T);
- `sampled`: k tokens drawn from that distribution, as distinct ids with their counts (int16) and
  log-probabilities (an unbiased estimate of the forward KL, see `losses.sampled_kd_divergence`).

Layout, under `artifacts/<run>/teacher_cache/<config>/` (config = a hash of what the targets depend on:
the teacher's content, tokenizer, chat template, max_length, temperature, format, k, and which rows:
every prediction, or only those of answer tokens when the run distils answers only):
  manifest.json          that config, the shards and their sha256, bytes and positions
  shards/<sha>.safetensors  immutable; ids / logprobs / counts of many examples, memory-mapped on read
  views/<run>.json       the examples one training run (the run, or a sweep's seed run) reads:
                         key -> (shard, first row in the shard, rows, the example's row they start at)
A training stage depends on its own view only, so filling the cache for a new seed adds a shard and a
view and leaves every earlier seed's training up to date.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from distill.core import paths, procs
from distill.kd import group
from distill.parts.data import pad_batch


class CacheMismatch(RuntimeError):
    """A cache made for other settings than the run's (another teacher, template, temperature, format or k)."""


def example_key(input_ids: Iterable[int]) -> str:
    """The cache key of an example: its token ids, nothing else (the config covers the rest)."""
    return hashlib.sha1(torch.tensor(list(input_ids), dtype=torch.int32).numpy().tobytes()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def folder_digest(folder: str | Path) -> str:
    """The teacher's content: sha256 over its files (a hub id or spec is named by itself)."""
    root = Path(folder)
    if not root.is_dir():
        return hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file()):
        digest.update(f.relative_to(root).as_posix().encode() + bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    tok_json = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer)
    return hashlib.sha256(tok_json.encode()).hexdigest()[:16]


def template_digest(tokenizer) -> str:
    """The prompt format's identity: its chat template (none: the plain Context/Question/Answer prompt)."""
    return hashlib.sha256(str(tokenizer.chat_template or "").encode()).hexdigest()[:16]


POSITIONS = ("all", "answer")
UNMARKED_PRECISION = "float32"  # the teacher precision a store's name and config leave unsaid


def cache_config(teacher_source: str, tokenizer, max_length: int, temperature: float, fmt: str, k: int,
                 positions: str = "all", precision: str = UNMARKED_PRECISION) -> dict:
    """What the stored targets depend on. `positions` is the run's distill_positions: "answer" stores only the
    rows that predict answer tokens (what an answer-only divergence reads), about a twentieth of "all".
    `precision` is how the teacher's weights are held (StudyParams.teacher_precision)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions: got {positions!r}; expected one of {POSITIONS}")
    return {"teacher": folder_digest(teacher_source), "tokenizer": tokenizer_digest(tokenizer), "vocab": len(tokenizer),
            "chat_template": template_digest(tokenizer),
            "max_length": max_length, "temperature": float(temperature), "format": fmt, "k": int(k),
            "positions": positions, **precision_entry(precision)}


def precision_entry(precision: str) -> dict[str, str]:
    """The teacher's precision as a stored config records it: absent for a float32 teacher (the stores made before
    the precision was recorded were all float32, and keep their names and configs)."""
    return {} if precision == UNMARKED_PRECISION else {"teacher_precision": precision}


def precision_suffix(p) -> str:
    """The store folder's mark of a teacher not held in float32, e.g. `-nf4-float32`."""
    return "".join(f"-{v}" for v in precision_entry(p.teacher_precision).values())


def config_name(p) -> str:
    """The store folder of a run's cache settings (what a stage depends on before the teacher is hashed)."""
    rows = "" if p.distill_positions == "all" else f"-{p.distill_positions}"
    return f"{p.teacher_cache}-k{p.teacher_cache_k}-T{p.temperature:g}-L{p.max_length}{rows}{precision_suffix(p)}"


def stored_rows(feature: dict[str, Any], positions: str) -> tuple[int, int]:
    """(first row, rows) of an example that the cache stores; row t predicts token t + 1."""
    n = len(feature["input_ids"]) - 1
    if positions == "all":
        return 0, n
    answer = [t for t in range(n) if feature["labels"][t + 1] != -100]
    if not answer:
        return 0, 0
    return answer[0], answer[-1] + 1 - answer[0]


def store_dir(base_run_dir: Path, p) -> Path:
    return Path(base_run_dir) / "teacher_cache" / config_name(p)


def view_file(base_run_dir: Path, p) -> Path:
    return store_dir(base_run_dir, p) / "views" / f"{p.run_name}.json"


@torch.no_grad()
def sparse_targets(logits: torch.Tensor, temperature: float, fmt: str, k: int, generator: torch.Generator | None
                   ) -> dict[str, torch.Tensor]:
    """Sparse targets of [P, V] teacher logits: ids [P, k] int32, logprobs [P, k] fp16 (+ counts for sampled)."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    if fmt == "topk":
        top = torch.topk(logprobs, k, dim=-1)
        return {"ids": top.indices.to(torch.int32), "logprobs": top.values.to(torch.float16)}
    draws = torch.multinomial(logprobs.exp(), k, replacement=True, generator=generator)  # [P, k]
    counts = torch.zeros_like(logprobs).scatter_add_(1, draws, torch.ones_like(draws, dtype=logprobs.dtype))
    # the distinct drawn ids first (most drawn first), zero-count slots after them
    order = torch.argsort(counts, dim=-1, descending=True, stable=True)[:, :k]
    c = counts.gather(1, order)
    return {"ids": order.to(torch.int32), "logprobs": logprobs.gather(1, order).to(torch.float16),
            "counts": c.to(torch.int16)}


@dataclass
class FillReport:
    examples: int
    positions: int
    cached_positions: int
    computed_positions: int
    bytes_on_disk: int
    bytes_per_token: float

    def line(self) -> str:
        return (f"teacher cache: {self.examples} examples, {self.positions} positions: {self.cached_positions} from "
                f"the cache, {self.computed_positions} computed by the teacher; {self.bytes_on_disk / 1e6:.2f} MB on "
                f"disk ({self.bytes_per_token:.0f} bytes per token)")


def _read_manifest(store: Path) -> dict[str, Any] | None:
    f = store / "manifest.json"
    try:
        return json.loads(f.read_text()) if f.exists() else None
    except ValueError:
        return None


def _valid_shards(store: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Shards whose bytes still hash to their name (a truncated or corrupt one is dropped, its rows recomputed),
    plus the complete shards the manifest does not list yet."""
    ok = {}
    for name, info in manifest.get("shards", {}).items():
        f = store / "shards" / name
        if f.exists() and sha256_file(f) == info["sha256"]:
            ok[name] = info
        elif f.exists():
            print(f"teacher cache: shard {name} is corrupt or truncated; its examples are recomputed", flush=True)
            f.unlink()
    return {**ok, **_new_shards(store, ok)}


def _new_shards(store: Path, known: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Complete shards not in `known` (written by other processes, or before a kill); a file whose bytes do not
    hash to its name was never finished and is removed."""

    found = {}
    for f in sorted((store / "shards").glob("*.safetensors")):
        if f.name in known:
            continue
        sha = sha256_file(f)
        if f.name != f"{sha[:20]}.safetensors":
            f.unlink()
            continue
        with safe_open(str(f), "pt") as fh:
            rows = sum(where[1] for where in json.loads(fh.metadata()["index"]).values())
        found[f.name] = {"sha256": sha, "bytes": f.stat().st_size, "positions": rows}
    return found


def _prepare(store: Path, config: dict[str, Any], log) -> None:
    """The store ready for `config`: one made with another config is removed (never used silently), and the
    manifest lists exactly the shards that are whole."""

    manifest = _read_manifest(store)
    if manifest is not None and manifest.get("config") != config:
        differs = sorted(k for k in config if manifest.get("config", {}).get(k) != config[k])
        log(f"teacher cache: {store.name} was made with other {', '.join(differs)}; rebuilding it")
        manifest = None
    if manifest is None:
        shutil.rmtree(store, ignore_errors=True)
        manifest = {"config": config, "shards": {}}
    (store / "shards").mkdir(parents=True, exist_ok=True)
    manifest["shards"] = dict(sorted(_valid_shards(store, manifest).items()))
    paths.write_text_atomic(store / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))


def _located(store: Path, shards: dict[str, Any]) -> dict[str, list]:
    """key -> [shard, first row in the shard, rows, the example's row they start at]"""
    located: dict[str, list] = {}
    for name in shards:
        with safe_open(str(store / "shards" / name), "pt") as fh:
            for key, where in json.loads(fh.metadata()["index"]).items():
                located[key] = [name, *where]
    return located


@torch.no_grad()
def _write_shard(store: Path, config: dict[str, Any], chunks: list[list[tuple[str, dict]]], teacher, device,
                 pad_id: int, tag: str) -> int:
    """Run the teacher on `chunks` (batches of (key, feature)) and store their targets as one shard; the rows."""


    positions = config.get("positions", "all")
    parts: dict[str, list[torch.Tensor]] = {}
    index: dict[str, list[int]] = {}
    row = 0
    teacher.eval()
    for chunk in chunks:
        batch = pad_batch([{"input_ids": f["input_ids"]} for _, f in chunk], pad_id, side="right")
        spans = [stored_rows(f, positions) for _, f in chunk]
        keep = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        for j, (first, n) in enumerate(spans):
            keep[j, first:first + n] = True
        # the vocabulary projection only at the stored rows, flattened in row-major order
        logits = teacher(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         logits_to_keep=keep.to(device), use_cache=False).logits
        at = 0
        for (key, f), (first, n) in zip(chunk, spans):
            # the same draws whenever it is refilled (on the logits' device: a CUDA draw needs a CUDA generator)
            gen = torch.Generator(device=logits.device).manual_seed(int(key[:12], 16))
            targets = sparse_targets(logits[at:at + n, :config["vocab"]], config["temperature"],
                                     config["format"], config["k"], gen)
            at += n
            for name, tensor in targets.items():
                parts.setdefault(name, []).append(tensor.cpu())
            index[key] = [row, n, first]
            row += n
        del logits
        procs.release_freed_memory()  # else the freed [positions, vocabulary] tensors pile up on the heap
    if not index:
        return 0
    tensors = {name: torch.cat(ts).contiguous() for name, ts in parts.items()}
    tmp = store / "shards" / f".new-{tag}.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"index": json.dumps(index, sort_keys=True)})
    tmp.replace(store / "shards" / f"{sha256_file(tmp)[:20]}.safetensors")
    return row


def fill(store: Path, config: dict[str, Any], views: dict[str, list[dict[str, Any]]], teacher, device,
         batch_size: int, pad_id: int, log=print, part: tuple[int, int] = (0, 1)) -> FillReport | None:
    """Make sure every example of every view (a training run's examples) has its targets in `store`; write
    each view.

    Examples already stored (same key) are not run through the teacher again. A store made with another
    config is removed first (never used silently). `part` = (rank, processes): on N processes each rank runs
    every N-th batch of the missing examples (the same batches one process would run, so the same targets)
    and writes its own shard; rank 0 then lists them and writes the views, and returns the report (the
    others return None).
    """
    rank, world = part
    if rank == 0:
        _prepare(store, config, log)
    group.barrier()
    before = _read_manifest(store)["shards"]
    located = _located(store, before)
    wanted: dict[str, dict[str, Any]] = {}
    for feats in views.values():
        for f in feats:
            wanted.setdefault(example_key(f["input_ids"]), f)
    missing = [(k, f) for k, f in wanted.items() if k not in located]
    batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    _write_shard(store, config, batches[rank::world], teacher, device, pad_id, tag=f"{os.getpid()}-{rank}")
    group.barrier()
    if rank != 0:
        group.barrier()
        return None
    # `before` was checked by _prepare: only the shards the ranks just wrote are hashed
    manifest = {"config": config, "shards": dict(sorted({**before, **_new_shards(store, before)}.items()))}
    shards = manifest["shards"]
    located = _located(store, shards)
    for view_name, feats in views.items():
        keys = sorted({example_key(f["input_ids"]) for f in feats})
        used = sorted({located[k][0] for k in keys})
        view = {"config": config, "run": view_name, "shards": {n: shards[n]["sha256"] for n in used},
                "entries": {k: located[k] for k in keys}}
        paths.write_json_if_changed(store / "views" / f"{view_name}.json", view)  # unchanged: training up to date
    paths.write_text_atomic(store / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    group.barrier()
    computed = {k for k, _ in missing}
    cached_positions = sum(located[k][2] for k in wanted if k not in computed)
    computed_positions = sum(located[k][2] for k in computed)
    total_bytes = sum(s["bytes"] for s in shards.values())
    total_positions = sum(s["positions"] for s in shards.values())
    return FillReport(len(wanted), cached_positions + computed_positions, cached_positions, computed_positions,
                      total_bytes, total_bytes / max(total_positions, 1))


class CachedTargets:
    """One seed's view of the cache: sparse targets by example, read from memory-mapped shards."""
    def __init__(self, view_path: Path, expected: dict[str, Any] | None = None):
        self.view_path = Path(view_path)
        if not self.view_path.exists():
            raise FileNotFoundError(f"{view_path}: no teacher cache for this seed; run the teacher-cache stage "
                                    "(python -m distill run <params> --only teacher-cache)")
        view = json.loads(self.view_path.read_text())
        if expected is not None and view["config"] != expected:
            differs = sorted(k for k in expected if view["config"].get(k) != expected[k])
            raise CacheMismatch(f"{view_path}: the teacher cache was made with other {', '.join(differs)} than this "
                                "run uses; run the teacher-cache stage again (dvc repro re-makes it)")
        self.config = view["config"]
        store = self.view_path.parent.parent
        self.files = {}
        for name, sha in view["shards"].items():
            f = store / "shards" / name
            if not f.exists() or sha256_file(f) != sha:
                raise CacheMismatch(f"{f}: teacher cache shard missing, truncated or corrupt; run the teacher-cache "
                                    "stage again (python -m distill run <params> --only teacher-cache --force)")
            self.files[name] = safe_open(str(f), "pt")
        self.entries = view["entries"]
        self.hits = 0

    def lookup(self, input_ids) -> dict[str, torch.Tensor]:
        return self.lookup_key(example_key(input_ids))

    def lookup_key(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self.entries:
            raise KeyError(f"an example is not in the teacher cache {self.view_path} (key {key[:12]}); the cache "
                           "stage and the training disagree on the examples: run the pipeline again")
        shard, start, n, *first = self.entries[key]
        fh = self.files[shard]
        self.hits += 1
        found = {name: fh.get_slice(name)[start:start + n] for name in fh.keys()}
        found["first_row"] = first[0] if first else 0  # the example's row the first stored row is
        return found


class CachedTeacherCollator:
    """Adds the cached sparse targets, padded to [B, T-1, k], to what the base collator makes."""
    def __init__(self, base, targets: CachedTargets):
        self.base, self.targets = base, targets

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base(features)
        width = batch["input_ids"].shape[1] - 1
        found = [self.targets.lookup(f["input_ids"]) for f in features]
        k = found[0]["ids"].shape[-1]
        out = {"teacher_ids": torch.zeros(len(found), width, k, dtype=torch.long),
               "teacher_logprobs": torch.full((len(found), width, k), -1e4, dtype=torch.float32)}
        if "counts" in found[0]:
            out["teacher_counts"] = torch.zeros(len(found), width, k, dtype=torch.float32)
        for i, t in enumerate(found):
            rows = slice(t["first_row"], t["first_row"] + t["ids"].shape[0])
            out["teacher_ids"][i, rows] = t["ids"].long()
            out["teacher_logprobs"][i, rows] = t["logprobs"].float()
            if "counts" in t:
                out["teacher_counts"][i, rows] = t["counts"].float()
        batch.update(out)
        return batch
