"""SQuAD v1.1: loading (local copy or hub), deterministic subsets, prompts, windowing, collation."""
from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import paths

SPLITS = ("train", "validation")
OFFICIAL_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
INSTRUCTION = "Answer the question with a short span copied from the context."
_CONTEXT_SLOT = "\u2063CONTEXT\u2063"  # an invisible separator no SQuAD text contains


class DataUnavailableError(RuntimeError):
    """No local SQuAD copy and the hub cannot be reached; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def resolve_squad_dir(squad_dir: str = "") -> Path | None:
    """The local SQuAD folder: the params value, then $SQUAD_DIR, then ../shared/data/squad."""
    for candidate in (squad_dir, os.environ.get("SQUAD_DIR", "")):
        if candidate:
            path = paths.resolve(candidate)
            if not path.is_dir():
                raise DataUnavailableError(f"squad_dir: {path} is not a folder; point squad_dir or $SQUAD_DIR "
                                           "at a folder holding train/validation JSON Lines or *-v1.1.json")
            return path
    return paths.SHARED_SQUAD_DIR if paths.SHARED_SQUAD_DIR.is_dir() else None


def _local_file(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", OFFICIAL_FILES[split]):
        if (folder / name).exists():
            return folder / name
    return None


def _read_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
    return rows


def _read_official(path: Path, limit: int) -> list[dict[str, Any]]:
    """The official nested `{"data": [{"paragraphs": [{"qas": ...}]}]}` file, flattened to the hub schema."""
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                rows.append({"id": qa["id"], "title": article["title"], "context": para["context"],
                             "question": qa["question"],
                             "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}})
                if limit and len(rows) >= limit:
                    return rows
    return rows


def load_squad(split: str, squad_dir: str = "", pool_rows: int = 0) -> list[dict[str, Any]]:
    """Rows of one split in the Hugging Face `squad` schema; `pool_rows` > 0 reads only the first N."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; expected one of {SPLITS}")
    folder = resolve_squad_dir(squad_dir)
    if folder is not None:
        path = _local_file(folder, split)
        if path is None:
            raise DataUnavailableError(
                f"{folder} has no {split}.jsonl[.gz] or {OFFICIAL_FILES[split]}; see the README's data section")
        rows = _read_official(path, pool_rows) if path.suffix == ".json" else _read_jsonl(path, pool_rows)
    else:
        rows = _load_from_hub(split, pool_rows)
    for row in rows[:1]:
        missing = {"context", "question", "answers"} - set(row)
        if missing:
            raise DataUnavailableError(f"SQuAD rows lack {sorted(missing)}: expected the Hugging Face squad schema")
    return rows


def _load_from_hub(split: str, pool_rows: int) -> list[dict[str, Any]]:
    try:
        import datasets

        sel = f"{split}[:{pool_rows}]" if pool_rows else split
        return list(datasets.load_dataset("rajpurkar/squad", split=sel))
    except Exception as err:  # offline, hub down, no credentials: one clear message instead of a network traceback
        raise DataUnavailableError(
            "SQuAD v1.1 not found locally and the hub's rajpurkar/squad could not be loaded "
            f"({err.__class__.__name__}). Set squad_dir in the params file or export SQUAD_DIR=<folder with "
            "train.jsonl.gz and validation.jsonl.gz, or train-v1.1.json and dev-v1.1.json>.") from None


def disjoint_subsets(rows: list[Any], sizes: list[int], seed: int) -> list[list[Any]]:
    """Deterministic, non-overlapping random subsets of `rows` (same seed, same examples)."""
    if sum(sizes) > len(rows):
        raise ValueError(f"asked for {sum(sizes)} examples ({sizes}) but only {len(rows)} rows were read; "
                         "raise data_pool_rows (0 = all) or lower the sizes")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out, start = [], 0
    for n in sizes:
        out.append([rows[i] for i in order[start:start + n]])
        start += n
    return out


# --------------------------------------------------------------------------------------------
# Prompts and windowing
# --------------------------------------------------------------------------------------------
@dataclass
class PromptParts:
    """A prompt as token ids around the context: prefix + context window + suffix (question, turn start)."""
    prefix: list[int]
    suffix: list[int]


def prompt_parts(tokenizer, question: str) -> PromptParts:
    """Chat template when the tokenizer has one (instruct models), else `Context: ... Question: ... Answer:`."""
    if tokenizer.chat_template:
        user = f"{INSTRUCTION}\n\nContext: {_CONTEXT_SLOT}\nQuestion: {question}"
        # A system message stops templates (SmolLM2) from inserting their default persona; templates
        # without a system role (Gemma) refuse it, and then the instruction alone stands in the user turn.
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user}],
                tokenize=False, add_generation_prompt=True)
        except Exception:
            text = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                 tokenize=False, add_generation_prompt=True)
    else:
        bos = tokenizer.bos_token or ""
        text = f"{bos}Context: {_CONTEXT_SLOT}\nQuestion: {question}\nAnswer:"
    before, after = text.split(_CONTEXT_SLOT)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return PromptParts(prefix=enc(before), suffix=enc(after))


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The target: the answer then end of turn (eos), so generation learns to stop."""
    lead = "" if tokenizer.chat_template else " "
    return tokenizer(lead + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def window_context(context_ids: list[int], span: tuple[int, int], budget: int, rng: random.Random) -> tuple[int, int]:
    """A window [start, end) of at most `budget` tokens that contains the answer span [a, b).

    The window's start is drawn uniformly among the starts that keep the span, so the answer's
    place in the window carries no signal.
    """
    n = len(context_ids)
    if n <= budget:
        return 0, n
    a, b = span
    if b - a > budget:
        raise ValueError("answer span longer than the window budget")
    lo, hi = max(0, b - budget), min(a, n - budget)
    start = rng.randint(lo, hi)
    return start, start + budget


def _answer_token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int]:
    first = next(i for i, (s, e) in enumerate(offsets) if e > char_start)
    last = max(i for i, (s, e) in enumerate(offsets) if s < char_end)
    return first, last + 1


@dataclass
class Encoded:
    """Tokenized examples plus what windowing did to them."""
    features: list[dict[str, Any]]
    windowed: int = 0
    dropped: int = 0
    lengths: list[int] = field(default_factory=list)


def encode_examples(rows: list[dict[str, Any]], tokenizer, max_length: int, seed: int,
                    with_answer: bool = True, reserve: int = 0) -> Encoded:
    """Token ids with labels on answer tokens only (-100 elsewhere), windowed to `max_length`.

    With `with_answer=False` (generation), only the prompt is built; `reserve` keeps room for
    the tokens to generate. The window always keeps the (first) gold answer and the question.
    """
    rng = random.Random(seed)
    out = Encoded(features=[])
    for row in rows:
        gold, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        parts = prompt_parts(tokenizer, row["question"])
        target = answer_ids(tokenizer, gold) if with_answer else []
        ctx = tokenizer(row["context"], add_special_tokens=False, return_offsets_mapping=True)
        budget = max_length - reserve - len(parts.prefix) - len(parts.suffix) - len(target)
        span = _answer_token_span(ctx["offset_mapping"], start, start + len(gold))
        if budget < span[1] - span[0]:
            out.dropped += 1  # the question alone does not fit: never cut the answer or the question
            continue
        lo, hi = window_context(ctx["input_ids"], span, budget, rng)
        out.windowed += int(hi - lo < len(ctx["input_ids"]))
        prompt = parts.prefix + ctx["input_ids"][lo:hi] + parts.suffix
        ids = prompt + target
        out.features.append({
            "input_ids": ids,
            "labels": [-100] * len(prompt) + target,
            "prompt_len": len(prompt),
            "references": list(row["answers"]["text"]),
            "id": row.get("id", ""),
        })
        out.lengths.append(len(ids))
    return out


def encode_contexts(rows: list[dict[str, Any]], tokenizer, max_length: int) -> list[dict[str, Any]]:
    """Plain language-modelling examples on the distinct contexts (the recovery phase)."""
    seen, feats = set(), []
    for row in rows:
        if row["context"] in seen:
            continue
        seen.add(row["context"])
        ids = tokenizer(row["context"], add_special_tokens=False)["input_ids"][: max_length - 1]
        ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
        feats.append({"input_ids": ids, "labels": list(ids), "prompt_len": 0, "references": [], "id": ""})
    return feats


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"n": 0}
    t = torch.tensor(lengths, dtype=torch.float32)
    q = torch.quantile(t, torch.tensor([0.5, 0.9, 0.99]))
    return {"n": len(lengths), "min": int(t.min()), "median": float(q[0]), "p90": float(q[1]),
            "p99": float(q[2]), "max": int(t.max()), "mean": float(t.mean())}


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def pad_batch(features: list[dict[str, Any]], pad_id: int, side: str = "right",
              key: str = "input_ids") -> dict[str, torch.Tensor]:
    """Pad `input_ids` (and labels when present) into tensors; the attention mask marks real tokens."""
    n = max(len(f[key]) for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        seq = f[key]
        pad = n - len(seq)
        if side == "left":
            ids.append([pad_id] * pad + seq)
            mask.append([0] * pad + [1] * len(seq))
            if "labels" in f and key == "input_ids":
                labels.append([-100] * pad + f["labels"])
        else:
            ids.append(seq + [pad_id] * pad)
            mask.append([1] * len(seq) + [0] * pad)
            if "labels" in f and key == "input_ids":
                labels.append(f["labels"] + [-100] * pad)
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if labels:
        batch["labels"] = torch.tensor(labels)
    return batch


class TrainCollator:
    """Right-padded batches for training; pad = eos in some tokenizers, so the mask, not the id, marks padding."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.pad_id, side="right")


def prompt_features(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generation inputs: the prompt part of each encoded example."""
    return [{"input_ids": f["input_ids"][: f["prompt_len"]], "references": f["references"], "id": f["id"]}
            for f in features]
