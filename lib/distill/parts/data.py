"""SQuAD v1.1: loading (local copy or hub), deterministic subsets, prompts, windowing, collation."""
from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.core import paths

SPLITS = ("train", "validation")
OFFICIAL_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
INSTRUCTION = "Answer the question with a short span copied from the context."
_CONTEXT_SLOT = "\u2063CONTEXT\u2063"  # an invisible separator no SQuAD text contains


class DataUnavailableError(RuntimeError):
    """SQuAD cannot be read (no local copy and no hub, or a bad file); the message says how to fix it."""


class SquadDataError(DataUnavailableError):
    """A SQuAD file or row is unusable. One line: `<path>[:line N]: <problem>; <fix>`."""


REQUIRED_KEYS = ("question", "context", "answers")
_REDOWNLOAD = "re-download or re-copy the file (see the README's data section)"
_FIXES = {  # what to do about the first bad row, by kind of problem
    "schema": ("give every row question, context and answers {text: [...], answer_start: [...]} (the SQuAD v1.1 / "
               "Hugging Face squad schema), or replace the file with SQuAD v1.1"),
    "unanswered": ("this study needs SQuAD v1.1, where every question has an answer: replace the file with "
                   "SQuAD v1.1, or drop the unanswerable rows"),
    "offset": ("set each answer_start to the answer's offset in its context (context.find(text)), or re-download "
               "SQuAD v1.1"),
}
_KIND_WORDS = {"schema": "malformed", "unanswered": "without an answer", "offset": "with a wrong answer_start"}


def _one_line(text: Any, limit: int = 160) -> str:
    """`text` for a one-line message: no line breaks, at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(where: str, problem: str, fix: str) -> SquadDataError:
    return SquadDataError(f"{where}: {_one_line(problem, 400)}; {fix}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def resolve_squad_dir(squad_dir: str = "") -> Path | None:
    """The local SQuAD folder: the params value, then $SQUAD_DIR, then ../shared/data/squad."""
    for key, candidate in (("squad_dir", squad_dir), ("$SQUAD_DIR", os.environ.get("SQUAD_DIR", ""))):
        if candidate:
            path = paths.resolve(candidate)
            try:
                path.stat()
            except FileNotFoundError:
                pass
            except OSError as err:  # a parent folder we may not look into
                raise _error(str(path), f"{key} cannot be looked at ({err.strerror or err})",
                             "make its parent folders readable (chmod a+rx) or point squad_dir at a readable "
                             "copy") from None
            if path.is_file():
                raise _error(str(path), f"{key} names a file, not a folder",
                             f"point squad_dir (or $SQUAD_DIR) at the folder that holds it ({path.parent})")
            if not path.is_dir():
                raise _error(str(path), f"{key} is not a folder (it does not exist)",
                             "point squad_dir or $SQUAD_DIR at a folder holding train/validation JSON Lines "
                             "(train.jsonl.gz, validation.jsonl.gz) or train-v1.1.json and dev-v1.1.json")
            return path
    return paths.SHARED_SQUAD_DIR if paths.SHARED_SQUAD_DIR.is_dir() else None


def _local_file(folder: Path, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", OFFICIAL_FILES[split]):
        try:
            if (folder / name).exists():
                return folder / name
        except OSError as err:  # a folder we may not look into
            raise _error(str(folder), f"cannot be searched for {name} ({err.strerror or err})",
                         "make the folder readable (chmod a+rx) or point squad_dir at a readable copy") from None
    return None


def squad_files(folder: Path) -> dict[str, Path | None]:
    """{split: the file the study reads from a local SQuAD folder (None: not there)}."""
    return {split: _local_file(folder, split) for split in SPLITS}


def _unreadable(path: Path, err: OSError) -> SquadDataError:
    if isinstance(err, PermissionError):
        fix = f"make it readable (chmod a+r {path}) or point squad_dir at a readable copy"
    elif isinstance(err, IsADirectoryError):
        fix = "it is a folder: put the data file itself there, or point squad_dir at the folder holding it"
    else:
        fix = _REDOWNLOAD
    return _error(str(path), f"cannot be read ({err.strerror or err.__class__.__name__})", fix)


def _row_problem(row: Any) -> tuple[str, str] | None:
    """(kind, problem) for a row that does not hold a SQuAD v1.1 question with located answers, else None."""
    if not isinstance(row, dict):
        return "schema", f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        return "schema", f"lacks {', '.join(repr(k) for k in missing)}"
    question, context, answers = row["question"], row["context"], row["answers"]
    if not isinstance(question, str) or not question.strip():
        return "schema", "'question' is not a non-empty string"
    if not isinstance(context, str) or not context:
        return "schema", "'context' is not a non-empty string"
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list):
        return "schema", "'answers' is not {text: [...], answer_start: [...]}"
    texts, starts = answers["text"], answers["answer_start"]
    if not texts and not starts:
        return "unanswered", "has no answer (answers.text is empty, as in SQuAD v2's unanswerable questions)"
    if len(texts) != len(starts):
        return "schema", f"answers.text has {len(texts)} entries but answers.answer_start {len(starts)}"
    for k, (text, start) in enumerate(zip(texts, starts)):
        if not isinstance(text, str) or not text:
            return "schema", f"answers.text[{k}] is not a non-empty string"
        if type(start) is not int:
            return "schema", f"answers.answer_start[{k}] is {start!r}, not an integer"
        if start < 0 or context[start:start + len(text)] != text:
            there = (f"the context there reads {_one_line(context[start:start + len(text)], 60)!r}"
                     if 0 <= start < len(context) else f"the context has {len(context)} characters")
            return "offset", (f"answers.answer_start[{k}] = {start} does not point at the answer "
                              f"{_one_line(text, 60)!r} ({there})")
    return None


class _RowCheck:
    """Checks every row read; after the last, `finish` raises one line about the first bad row and the count."""
    def __init__(self, source: str):
        self.source, self.n, self.bad, self.first = source, 0, {}, None

    def add(self, row: Any, where: str) -> None:
        self.n += 1
        found = _row_problem(row)
        if found is not None:
            self.note(row, where, found)

    def note(self, row: Any, where: str, found: tuple[str, str]) -> None:
        """A bad row (`found` from _row_problem); the caller counts the rows (`n`) itself on the hot path."""
        kind, problem = found
        self.bad[kind] = self.bad.get(kind, 0) + 1
        if self.first is None:
            row_id = row.get("id") if isinstance(row, dict) else None
            self.first = (where, kind, f"row {row_id!r}: {problem}" if row_id not in (None, "") else problem)

    def finish(self) -> None:
        if self.n == 0:
            raise _error(self.source, "holds no SQuAD rows (an empty file)", _REDOWNLOAD)
        if self.first is None:
            return
        where, kind, problem = self.first
        counts = ", ".join(f"{n} {'row' if n == 1 else 'rows'} {_KIND_WORDS[k]}" for k, n in self.bad.items())
        first = ", the first shown" if sum(self.bad.values()) > 1 else ""
        raise _error(f"{self.source}{where}", f"{problem} ({counts}, of {self.n} read{first})", _FIXES[kind])


def _read_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    """JSON Lines (optionally gzip), one row per line; every row read is checked (see `_row_problem`)."""
    gz = path.suffix == ".gz"
    check, rows, n = _RowCheck(str(path)), [], 0
    try:
        fh = gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as err:
        raise _unreadable(path, err) from None
    with fh:
        try:
            for n, raw in enumerate(fh, 1):
                if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte-order mark
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _error(f"{path}:line {n}", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                 f"{err.start + 1})", "re-save the file as UTF-8, or " + _REDOWNLOAD) from None
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    column = min(err.pos, len(text.rstrip())) + 1  # an error at the line's end, not past its newline
                    raise _error(f"{path}:line {n}", f"not valid JSON ({err.msg} at column {column})",
                                 "fix or delete that line, or " + _REDOWNLOAD) from None
                found = _row_problem(row)
                if found is not None:
                    check.note(row, f":line {n}", found)
                rows.append(row)
                if limit and len(rows) >= limit:
                    break
        except EOFError:
            raise _error(str(path), f"the gzip data ends early after line {n} (a truncated download or copy)",
                         _REDOWNLOAD) from None
        except (zlib.error, gzip.BadGzipFile) as err:
            hint = ""
            if n == 0 and gz:
                try:
                    with open(path, "rb") as head:
                        hint = " (it is not gzip-compressed: if it is plain JSON Lines, name it .jsonl)" \
                            if head.read(2) != b"\x1f\x8b" else ""
                except OSError:
                    pass
            at = f"after line {n}" if n else "at the start"
            raise _error(str(path), f"corrupt gzip data {at} ({_one_line(err, 80)}){hint}", _REDOWNLOAD) from None
        except OSError as err:
            raise _unreadable(path, err) from None
    check.n = len(rows)
    check.finish()
    return rows


def _read_official(path: Path, limit: int) -> list[dict[str, Any]]:
    """The official nested `{"data": [{"paragraphs": [{"qas": ...}]}]}` file, flattened to the hub schema."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _error(f"{path}:line {line}", f"not UTF-8 text (byte 0x{raw[err.start]:02x})",
                     "re-save the file as UTF-8, or " + _REDOWNLOAD) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise _error(f"{path}:line {err.lineno}", f"not valid JSON ({err.msg} at column {err.colno})",
                     _REDOWNLOAD + ", or replace it with the official SQuAD v1.1 file") from None
    official = "replace it with the official SQuAD v1.1 file (train-v1.1.json / dev-v1.1.json) or use JSON Lines"
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        shape = f"keys {sorted(doc)[:6]}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise _error(str(path), f'not the official SQuAD layout: no top-level "data" list ({shape})', official)
    check, rows = _RowCheck(str(path)), []
    for i, article in enumerate(doc["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise _error(str(path), f'data[{i}] has no "paragraphs" list', official)
        for j, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise _error(str(path), f'data[{i}].paragraphs[{j}] has no "qas" list', official)
            for k, qa in enumerate(para["qas"]):
                if not isinstance(qa, dict):
                    raise _error(str(path), f"data[{i}].paragraphs[{j}].qas[{k}] is not an object", official)
                row = {"id": qa.get("id", ""), "title": article.get("title", "")}
                if "context" in para:
                    row["context"] = para["context"]
                if "question" in qa:
                    row["question"] = qa["question"]
                answers = qa.get("answers")
                if isinstance(answers, list) and all(isinstance(a, dict) and "text" in a and "answer_start" in a
                                                     for a in answers):
                    answers = {"text": [a["text"] for a in answers],
                               "answer_start": [a["answer_start"] for a in answers]}
                if "answers" in qa:
                    row["answers"] = answers
                check.add(row, f": data[{i}].paragraphs[{j}].qas[{k}]")
                rows.append(row)
                if limit and len(rows) >= limit:
                    check.finish()
                    return rows
    check.finish()
    return rows


def _read_split(split: str, squad_dir: str, pool_rows: int) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from): every row read is checked; a bad file or row raises SquadDataError."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; expected one of {SPLITS}")
    folder = resolve_squad_dir(squad_dir)
    if folder is None:
        rows = _load_from_hub(split, pool_rows)
        source = f"the hub's rajpurkar/squad ({split})"
        check = _RowCheck(source)
        for i, row in enumerate(rows):
            check.add(row, f": row {i}")
        check.finish()
        return rows, source
    path = _local_file(folder, split)
    if path is None:
        raise _error(str(folder), f"no {split}.jsonl.gz, {split}.jsonl or {OFFICIAL_FILES[split]} here",
                     f"put the {split} split there (see the README's data section) or point squad_dir at a "
                     "folder that holds it")
    rows = _read_official(path, pool_rows) if path.suffix == ".json" else _read_jsonl(path, pool_rows)
    return rows, str(path)


def load_squad(split: str, squad_dir: str = "", pool_rows: int = 0) -> list[dict[str, Any]]:
    """Rows of one split in the Hugging Face `squad` schema; `pool_rows` > 0 reads only the first N.

    Every row read is checked (question, context, answers with located answer_start); a bad file or row
    raises SquadDataError with one line: `<path>[:line N]: <problem>; <fix>`.
    """
    return _read_split(split, squad_dir, pool_rows)[0]


def check_squad(squad_dir: str = "", pool_rows: int = 0) -> dict[str, Any]:
    """Read both splits as the study does (same code, same checks); a small summary, or SquadDataError.

    `{"folder": ..., "train": {"file": ..., "rows": n, "skipped": 0}, "validation": {...}}`. Bad rows are
    never skipped: any one stops the load (the shared copy has none).
    """
    folder = resolve_squad_dir(squad_dir)
    out: dict[str, Any] = {"folder": str(folder) if folder is not None else "the hub's rajpurkar/squad"}
    for split in SPLITS:
        rows, source = _read_split(split, squad_dir, pool_rows)
        out[split] = {"file": source, "rows": len(rows), "answers": sum(len(r["answers"]["text"]) for r in rows),
                      "skipped": 0}
    return out


def _load_from_hub(split: str, pool_rows: int) -> list[dict[str, Any]]:
    try:
        import datasets  # heavy: only the hub fallback needs it

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


def _answer_token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int,
                       row_id: Any = "") -> tuple[int, int]:
    """The context tokens [first, last + 1) that overlap the answer's characters [char_start, char_end).

    A ValueError naming the row when no token does (an answer_start past the context, or an answer made of
    characters the tokenizer drops, such as whitespace only).
    """
    first = next((i for i, (s, e) in enumerate(offsets) if e > char_start and s < char_end), None)
    if first is None:
        raise ValueError(f"row {row_id!r}: no context token covers the answer at characters {char_start}-{char_end} "
                         f"({len(offsets)} context tokens); fix the row's answer_start/answer text (load_squad "
                         "checks rows read from files) or drop the row")
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
        try:
            gold, start = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"row {row.get('id', '')!r}: no answers.text/answer_start to train or score on; "
                             "use rows from load_squad (SQuAD v1.1: every question answered)") from None
        parts = prompt_parts(tokenizer, row["question"])
        target = answer_ids(tokenizer, gold) if with_answer else []
        ctx = tokenizer(row["context"], add_special_tokens=False, return_offsets_mapping=True)
        budget = max_length - reserve - len(parts.prefix) - len(parts.suffix) - len(target)
        span = _answer_token_span(ctx["offset_mapping"], start, start + len(gold), row.get("id", ""))
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


def question_only(row: dict[str, Any]) -> dict[str, Any]:
    """A train row for the teacher to answer: its gold answers dropped, so nothing downstream can read them."""
    return {k: row[k] for k in ("id", "title", "context", "question") if k in row}


def answer_prompts(rows: list[dict[str, Any]], tokenizer, max_length: int, reserve: int, seed: int
                   ) -> list[tuple[list[int], tuple[int, int]]]:
    """(prompt ids, context window [lo, hi) in context tokens) of questions asked without a gold answer: a context
    too long for `max_length - reserve` gets a window drawn uniformly among all windows (no answer to keep)."""
    out = []
    for row in rows:
        rng = random.Random(f"{seed}:{row['id']}")  # a question's window never depends on the others asked with it
        parts = prompt_parts(tokenizer, row["question"])
        ctx = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
        budget = max(0, max_length - reserve - len(parts.prefix) - len(parts.suffix))
        lo = rng.randint(0, len(ctx) - budget) if len(ctx) > budget else 0
        hi = min(len(ctx), lo + budget)
        out.append((parts.prefix + ctx[lo:hi] + parts.suffix, (lo, hi)))
    return out


def encode_answered(rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]], tokenizer,
                    max_length: int) -> Encoded:
    """Training examples of teacher-answered questions: the prompt the teacher saw (its context window) and the
    teacher's answer as the target. A question the teacher left unanswered (empty answer), or whose answer
    re-tokenizes past `max_length`, is dropped."""
    out = Encoded(features=[])
    for row in rows:
        got = answers[row["id"]]
        if not got["answer"]:
            out.dropped += 1
            continue
        parts = prompt_parts(tokenizer, row["question"])
        ctx = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
        lo, hi = got["window"]
        prompt = parts.prefix + ctx[lo:hi] + parts.suffix
        target = answer_ids(tokenizer, got["answer"])
        if len(prompt) + len(target) > max_length:
            out.dropped += 1
            continue
        out.windowed += int(hi - lo < len(ctx))
        out.features.append({"input_ids": prompt + target, "labels": [-100] * len(prompt) + target,
                             "prompt_len": len(prompt), "references": [got["answer"]], "id": row["id"]})
        out.lengths.append(len(prompt) + len(target))
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
