"""Bad SQuAD data fails early with ONE line: `<path>[:line N]: <problem>; <fix>` (never a raw Python exception)."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest
from conftest import synthetic_row

from distill.parts import data


def _rows(split: str, n: int) -> list[dict]:
    rng = random.Random(7)
    return [synthetic_row(rng, i, split) for i in range(n)]


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def _folder(tmp_path: Path, train: bytes | None = None, validation: bytes | None = None,
            train_name: str = "train.jsonl.gz", validation_name: str = "validation.jsonl.gz") -> Path:
    """A squad folder with 30 good rows per split unless a split's raw bytes are given (written as-is)."""
    folder = tmp_path / "squad"
    folder.mkdir()
    for split, raw, name in (("train", train, train_name), ("validation", validation, validation_name)):
        if raw is None:
            raw = _jsonl(_rows(split, 30))
            raw = gzip.compress(raw) if name.endswith(".gz") else raw
        (folder / name).write_bytes(raw)
    return folder


def _official(rows: list[dict], **extra_qa) -> dict:
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                           "answers": [{"text": t, "answer_start": s} for t, s in
                                                       zip(r["answers"]["text"], r["answers"]["answer_start"])],
                                           **extra_qa}]} for r in rows]}]}


# --------------------------------------------------------------------------------------------
# The cases: each builds a folder and says which split breaks, which file the message names, and what it says.
# --------------------------------------------------------------------------------------------
def truncated_gzip(tmp_path):
    raw = gzip.compress(_jsonl(_rows("train", 200)))
    folder = _folder(tmp_path, train=raw[: len(raw) // 2])
    return folder, "train", folder / "train.jsonl.gz", ["ends early", "truncated"], "re-download"


def corrupt_gzip_checksum(tmp_path):
    raw = bytearray(gzip.compress(_jsonl(_rows("validation", 200))))
    raw[-8] ^= 0xFF  # the CRC32 of the trailer: every line decompresses, the check at the end fails
    folder = _folder(tmp_path, validation=bytes(raw))
    return (folder, "validation", folder / "validation.jsonl.gz", ["corrupt gzip data after line 200", "CRC"],
            "re-download")


def corrupt_gzip_header(tmp_path):
    raw = bytearray(gzip.compress(_jsonl(_rows("train", 20))))
    raw[2] = 0x07  # compression method: only 8 (deflate) exists
    folder = _folder(tmp_path, train=bytes(raw))
    return folder, "train", folder / "train.jsonl.gz", ["corrupt gzip data at the start"], "re-download"


def plain_text_named_gz(tmp_path):
    folder = _folder(tmp_path, train=_jsonl(_rows("train", 5)))
    return folder, "train", folder / "train.jsonl.gz", ["corrupt gzip", "not gzip-compressed", ".jsonl"], "re-download"


def bad_json_line(tmp_path):
    lines = [json.dumps(r) for r in _rows("train", 8)]
    lines.insert(2, "")  # a blank line still counts as a line of the file
    lines[5] = lines[5][:-7]  # line 6 is cut short
    folder = _folder(tmp_path, train=("\n".join(lines) + "\n").encode(), train_name="train.jsonl")
    return (folder, "train", folder / "train.jsonl", [":line 6:", "not valid JSON", f"column {len(lines[5]) + 1})"],
            "fix or delete that line")


def line_not_an_object(tmp_path):
    rows = _rows("train", 4)
    folder = _folder(tmp_path, train=_jsonl([rows[0], [rows[1]], rows[2]]), train_name="train.jsonl")
    return folder, "train", folder / "train.jsonl", [":line 2:", "not an object"], "SQuAD v1.1"


def official_not_json(tmp_path):
    folder = _folder(tmp_path, validation=b"<html>\n<body>Not Found</body>\n", validation_name="dev-v1.1.json")
    return folder, "validation", folder / "dev-v1.1.json", [":line 1:", "not valid JSON"], "official SQuAD v1.1"


def official_without_data(tmp_path):
    raw = json.dumps({"version": "1.1", "articles": []}).encode()
    folder = _folder(tmp_path, validation=raw, validation_name="dev-v1.1.json")
    return folder, "validation", folder / "dev-v1.1.json", ['no top-level "data"', "articles"], "SQuAD v1.1"


def official_v2_unanswerable(tmp_path):
    doc = _official(_rows("validation", 3))
    doc["data"][0]["paragraphs"][1]["qas"][0].update(answers=[], is_impossible=True)
    folder = _folder(tmp_path, validation=json.dumps(doc).encode(), validation_name="dev-v1.1.json")
    return (folder, "validation", folder / "dev-v1.1.json",
            ["data[0].paragraphs[1].qas[0]", "'validation-1'", "no answer", "SQuAD v2"], "SQuAD v1.1")


def missing_answers(tmp_path):
    rows = _rows("train", 10)
    del rows[3]["answers"]  # not the first row: every row read is checked
    folder = _folder(tmp_path, train=gzip.compress(_jsonl(rows)))
    return folder, "train", folder / "train.jsonl.gz", [":line 4:", "'train-3'", "lacks 'answers'"], "SQuAD v1.1"


def missing_question(tmp_path):
    rows = _rows("validation", 10)
    del rows[9]["question"]
    folder = _folder(tmp_path, validation=gzip.compress(_jsonl(rows)))
    return (folder, "validation", folder / "validation.jsonl.gz", [":line 10:", "lacks 'question'", "1 row malformed"],
            "SQuAD v1.1")


def empty_answers_v2(tmp_path):
    rows = _rows("validation", 10)
    for i in (2, 5):
        rows[i]["answers"] = {"text": [], "answer_start": []}
    folder = _folder(tmp_path, validation=gzip.compress(_jsonl(rows)))
    return (folder, "validation", folder / "validation.jsonl.gz",
            [":line 3:", "no answer", "2 rows without an answer", "of 10 read"], "SQuAD v1.1")


def unequal_answer_lists(tmp_path):
    rows = _rows("validation", 6)
    rows[1]["answers"]["answer_start"] = rows[1]["answers"]["answer_start"][:1]
    folder = _folder(tmp_path, validation=gzip.compress(_jsonl(rows)))
    return folder, "validation", folder / "validation.jsonl.gz", [":line 2:", "3 entries but"], "SQuAD v1.1"


def answer_start_mismatch(tmp_path):
    rows = _rows("train", 20)
    for i in (4, 11, 12):
        rows[i]["answers"]["answer_start"][0] += 1
    folder = _folder(tmp_path, train=gzip.compress(_jsonl(rows)))
    return (folder, "train", folder / "train.jsonl.gz",
            [":line 5:", "'train-4'", "does not point at the answer", "3 rows with a wrong answer_start", "of 20 read"],
            "re-download SQuAD v1.1")


def answer_start_past_context(tmp_path):
    rows = _rows("train", 5)
    rows[0]["answers"]["answer_start"][0] = len(rows[0]["context"]) + 50
    folder = _folder(tmp_path, train=_jsonl(rows), train_name="train.jsonl")
    return (folder, "train", folder / "train.jsonl",
            [":line 1:", "does not point at the answer", f"context has {len(rows[0]['context'])} characters"],
            "context.find(text)")


def not_utf8(tmp_path):
    rows = _rows("train", 5)
    lines = _jsonl(rows).split(b"\n")
    lines[1] = lines[1].replace(b"The ", "The caf\u00e9 ".encode("latin-1"), 1)
    folder = _folder(tmp_path, train=gzip.compress(b"\n".join(lines)))
    return folder, "train", folder / "train.jsonl.gz", [":line 2:", "not UTF-8", "0xe9"], "re-save the file as UTF-8"


def empty_file(tmp_path):
    folder = _folder(tmp_path, validation=gzip.compress(b""))
    return folder, "validation", folder / "validation.jsonl.gz", ["no SQuAD rows"], "re-download"


def squad_dir_is_a_file(tmp_path):
    folder = _folder(tmp_path)
    return folder / "train.jsonl.gz", "train", folder / "train.jsonl.gz", ["names a file, not a folder"], \
        f"point squad_dir (or $SQUAD_DIR) at the folder that holds it ({folder})"


def squad_dir_missing(tmp_path):
    return tmp_path / "nowhere", "train", tmp_path / "nowhere", ["not a folder", "does not exist"], "point squad_dir"


def unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file: a permission error cannot be provoked")
    folder = _folder(tmp_path)
    (folder / "validation.jsonl.gz").chmod(0)
    return folder, "validation", folder / "validation.jsonl.gz", ["cannot be read", "Permission denied"], "chmod a+r"


def split_file_is_a_folder(tmp_path):
    folder = _folder(tmp_path, train_name="train-v1.1.json")
    (folder / "train-v1.1.json").unlink()
    (folder / "train-v1.1.json").mkdir()
    return folder, "train", folder / "train-v1.1.json", ["cannot be read"], "it is a folder"


def missing_split_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "validation.jsonl.gz").unlink()
    return (folder, "validation", folder, ["no validation.jsonl.gz, validation.jsonl or dev-v1.1.json"],
            "point squad_dir at a folder that holds it")


CASES = [truncated_gzip, corrupt_gzip_checksum, corrupt_gzip_header, plain_text_named_gz, bad_json_line,
         line_not_an_object, official_not_json, official_without_data, official_v2_unanswerable, missing_answers,
         missing_question, empty_answers_v2, unequal_answer_lists, answer_start_mismatch, answer_start_past_context,
         not_utf8, empty_file, squad_dir_is_a_file, squad_dir_missing, unreadable_file, split_file_is_a_folder,
         missing_split_file]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_data_is_one_clear_line(case, tmp_path, monkeypatch):
    monkeypatch.delenv("SQUAD_DIR", raising=False)
    squad_dir, split, bad_file, problem, fix = case(tmp_path)
    with pytest.raises(data.SquadDataError) as caught:
        data.load_squad(split, str(squad_dir))
    message = str(caught.value)
    assert isinstance(caught.value, data.DataUnavailableError)  # what callers (preflight, stages) already catch
    assert "\n" not in message and message.strip() == message
    assert message.startswith(f"{bad_file}:") or message.startswith(f"{bad_file}:line "), message
    for words in problem:
        assert words in message, (words, message)
    head, _, tail = message.partition("; ")
    assert fix in tail, (fix, message)  # the fix comes after the problem
    err = caught.value  # no raw traceback chained on
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    # the preflight's check reads both splits through the same code and stops at the same line
    with pytest.raises(data.SquadDataError) as again:
        data.check_squad(str(squad_dir))
    assert str(again.value) == message


@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.jsonl", "train-v1.1.json"])
def test_permission_denied_is_named_even_as_root(tmp_path, monkeypatch, name):
    """The unreadable_file case skips as root; here the open itself is refused, for each kind of file."""
    folder = _folder(tmp_path, train=b"{}", train_name=name)
    real_open = open

    def refuse(path, *args, **kwargs):
        if Path(path).name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data.gzip, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    monkeypatch.setattr(Path, "read_bytes", lambda self: refuse(self))
    with pytest.raises(data.SquadDataError) as caught:
        data.load_squad("train", str(folder))
    assert str(caught.value) == (f"{folder / name}: cannot be read (Permission denied); make it readable "
                                 f"(chmod a+r {folder / name}) or point squad_dir at a readable copy")


def test_squad_dir_from_the_environment_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUAD_DIR", str(tmp_path / "gone"))
    with pytest.raises(data.SquadDataError, match=r"\$SQUAD_DIR is not a folder"):
        data.check_squad("")


def test_only_rows_read_are_checked(tmp_path):
    rows = _rows("train", 10)
    del rows[7]["answers"]
    folder = _folder(tmp_path, train=gzip.compress(_jsonl(rows)))
    assert len(data.load_squad("train", str(folder), pool_rows=5)) == 5  # the bad row 8 is never read
    with pytest.raises(data.SquadDataError, match=r":line 8: row 'train-7': lacks 'answers'"):
        data.load_squad("train", str(folder), pool_rows=8)


def test_truncated_gzip_within_pool_rows_still_loads(tmp_path):
    raw = gzip.compress(_jsonl(_rows("train", 200)))
    folder = _folder(tmp_path, train=raw[: len(raw) * 3 // 4])
    assert len(data.load_squad("train", str(folder), pool_rows=10)) == 10
    with pytest.raises(data.SquadDataError, match="ends early"):
        data.load_squad("train", str(folder))


def test_byte_order_mark_and_blank_lines_are_fine(tmp_path):
    rows = _rows("train", 6)
    raw = b"\xef\xbb\xbf" + _jsonl(rows[:3]) + b"\n  \n" + _jsonl(rows[3:])
    folder = _folder(tmp_path, train=raw, train_name="train.jsonl")
    assert [r["id"] for r in data.load_squad("train", str(folder))] == [r["id"] for r in rows]


def test_synthetic_data_passes_check_squad(squad_dir):
    summary = data.check_squad(str(squad_dir))
    assert summary["folder"] == str(squad_dir)
    assert summary["train"] == {"file": str(squad_dir / "train.jsonl.gz"), "rows": 400, "answers": 400, "skipped": 0}
    assert summary["validation"] == {"file": str(squad_dir / "validation.jsonl.gz"), "rows": 120, "answers": 360,
                                     "skipped": 0}
    small = data.check_squad(str(squad_dir), pool_rows=25)
    assert small["train"]["rows"] == small["validation"]["rows"] == 25
    json.dumps(summary)  # plain data: the validate command may print or store it


def test_official_json_passes_check_squad(tmp_path, squad_dir):
    folder = tmp_path / "official"
    folder.mkdir()
    for split, name in data.OFFICIAL_FILES.items():
        (folder / name).write_text(json.dumps(_official(data.load_squad(split, str(squad_dir), pool_rows=12))))
    summary = data.check_squad(str(folder))
    assert summary["train"]["rows"] == summary["validation"]["rows"] == 12
    assert summary["validation"]["answers"] == 36 and summary["validation"]["file"].endswith("dev-v1.1.json")


def test_real_squad_copy_has_no_bad_rows(real_squad_dir):
    summary = data.check_squad(str(real_squad_dir))
    assert summary["train"]["rows"] == 87599 and summary["validation"]["rows"] == 10570
    assert summary["validation"]["answers"] == 34726 and summary["train"]["skipped"] == 0


# --------------------------------------------------------------------------------------------
# Encoding: an answer no context token covers is a ValueError naming the row, never a bare StopIteration
# --------------------------------------------------------------------------------------------
class WordTokenizer:
    """Whitespace words as tokens, with character offsets: enough of a tokenizer for encode_examples."""
    chat_template = None
    bos_token, bos_token_id, eos_token_id = "", None, 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        import re

        words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        out = {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 1) for w, _, _ in words]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(s, e) for _, s, e in words]
        return out


def test_answer_token_span_names_the_row():
    offsets = [(0, 3), (4, 9), (12, 15)]
    assert data._answer_token_span(offsets, 4, 9) == (1, 2)
    assert data._answer_token_span(offsets, 5, 13) == (1, 3)
    for start, end in ((20, 25), (9, 12)):  # past the context; only the whitespace between tokens
        with pytest.raises(ValueError, match=r"row 'q-7': no context token covers the answer.*; fix"):
            data._answer_token_span(offsets, start, end, "q-7")


def test_encode_examples_raises_value_error_for_an_uncovered_answer(squad_dir):
    tok = WordTokenizer()
    rows = data.load_squad("train", str(squad_dir), pool_rows=5)
    assert len(data.encode_examples(rows, tok, 400, seed=0).features) == 5
    bad = json.loads(json.dumps(rows[2]))
    bad["answers"] = {"text": ["   "], "answer_start": [len(bad["context"])]}  # whitespace beyond the last word
    with pytest.raises(ValueError, match=rf"row '{bad['id']}': no context token covers the answer") as caught:
        data.encode_examples(rows[:2] + [bad], tok, 400, seed=0)
    assert not isinstance(caught.value.__context__, StopIteration)
    no_answer = {**rows[0], "answers": {"text": [], "answer_start": []}}
    with pytest.raises(ValueError, match=r"no answers.text/answer_start"):
        data.encode_examples([no_answer], tok, 400, seed=0)
