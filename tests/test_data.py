"""Data: loading, deterministic subsets, prompts, windowing that never cuts the answer, label masking."""
import json
import random

import pytest

from distill.core import params, paths
from distill.parts import data, models
from distill.study import steps


@pytest.fixture(scope="module")
def tok(tiny_paths):
    return models.load_tokenizer(str(tiny_paths[0]))


@pytest.fixture(scope="module")
def plain_tok(tiny_paths):
    t = models.load_tokenizer(str(tiny_paths[0]))
    t.chat_template = None
    return t


def test_local_jsonl_gz_and_pool_rows(squad_dir):
    rows = data.load_squad("train", str(squad_dir))
    assert len(rows) == 400
    assert len(data.load_squad("train", str(squad_dir), pool_rows=25)) == 25
    dev = data.load_squad("validation", str(squad_dir))
    assert all(len(r["answers"]["text"]) == 3 for r in dev)  # every gold answer kept for scoring


def test_official_json_and_plain_jsonl(tmp_path, squad_dir):
    rows = data.load_squad("validation", str(squad_dir), pool_rows=10)
    official = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                           "answers": [{"text": t, "answer_start": s} for t, s in
                                                       zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}
        for r in rows]}]}
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(official))
    loaded = data.load_squad("validation", str(tmp_path))
    assert [r["answers"] for r in loaded] == [r["answers"] for r in rows]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert len(data.load_squad("train", str(plain))) == 10


def test_no_data_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SQUAD_DIR", raising=False)
    monkeypatch.setattr(paths, "SHARED_SQUAD_DIR", tmp_path / "absent")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config  # read the variables at their import: an earlier test in this process may have done it
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(data.DataUnavailableError) as err:
        data.load_squad("validation", "")
    assert "SQUAD_DIR" in str(err.value) and "squad_dir" in str(err.value)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="not a folder"):
        data.load_squad("train", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataUnavailableError, match="train.jsonl"):
        data.load_squad("train", str(tmp_path))


def test_subsets_are_deterministic_and_disjoint():
    rows = list(range(100))
    a = data.disjoint_subsets(rows, [10, 20, 5], seed=3)
    b = data.disjoint_subsets(rows, [10, 20, 5], seed=3)
    c = data.disjoint_subsets(rows, [10, 20, 5], seed=4)
    assert a == b and a != c
    flat = [x for s in a for x in s]
    assert len(flat) == len(set(flat)) == 35
    with pytest.raises(ValueError, match="data_pool_rows"):
        data.disjoint_subsets(rows, [90, 20], seed=0)


def test_window_always_contains_the_span_and_moves():
    rng = random.Random(0)
    starts = set()
    for _ in range(2000):
        n = rng.randint(1, 300)
        a = rng.randint(0, n - 1)
        b = rng.randint(a + 1, min(n, a + 10))
        budget = rng.randint(b - a, 120)
        lo, hi = data.window_context(list(range(n)), (a, b), budget, rng)
        assert 0 <= lo <= a and b <= hi <= n and hi - lo == min(n, budget)
        if n == 300 and budget == 50:
            starts.add(lo)
    fixed = [data.window_context(list(range(300)), (150, 152), 50, random.Random(s))[0] for s in range(50)]
    assert len(set(fixed)) > 10  # the answer's place in the window is random, not fixed


@pytest.mark.parametrize("which", ["chat", "plain"])
@pytest.mark.parametrize("max_length", [100, 160, 512])
def test_encoded_answers_survive_and_labels_mask_the_prompt(request, which, max_length, squad_dir):
    tok = request.getfixturevalue("tok" if which == "chat" else "plain_tok")
    rows = data.load_squad("train", str(squad_dir), pool_rows=120)
    enc = data.encode_examples(rows, tok, max_length, seed=0)
    assert len(enc.features) + enc.dropped == len(rows) and len(enc.features) > 0
    if max_length == 100:
        assert enc.windowed > 0
    for f, length in zip(enc.features, enc.lengths):
        assert len(f["input_ids"]) == len(f["labels"]) == length <= max_length
        n_prompt = f["prompt_len"]
        assert all(x == -100 for x in f["labels"][:n_prompt])
        answer = f["labels"][n_prompt:]
        assert -100 not in answer and answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]).strip() == f["references"][0]
        prompt = tok.decode(f["input_ids"][:n_prompt])
        assert f["references"][0] in prompt  # the window kept the answer in the context
        question = next(r["question"] for r in rows if r["id"] == f["id"])
        assert question in prompt  # and the question


def test_windowing_is_seeded(tok, squad_dir):
    rows = data.load_squad("train", str(squad_dir), pool_rows=60)
    a = data.encode_examples(rows, tok, 100, seed=1).features
    b = data.encode_examples(rows, tok, 100, seed=1).features
    c = data.encode_examples(rows, tok, 100, seed=2).features
    assert [f["input_ids"] for f in a] == [f["input_ids"] for f in b]
    assert [f["input_ids"] for f in a] != [f["input_ids"] for f in c]


def test_generation_prompts_reserve_room(tok, squad_dir):
    rows = data.load_squad("validation", str(squad_dir), pool_rows=40)
    enc = data.encode_examples(rows, tok, 80, seed=0, with_answer=False, reserve=16)
    for f in enc.features:
        assert f["prompt_len"] == len(f["input_ids"]) <= 64 and all(x == -100 for x in f["labels"])


def test_padding_sides_keep_labels_aligned():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = data.pad_batch(feats, pad_id=0, side="right")
    left = data.pad_batch(feats, pad_id=0, side="left")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]


def test_chat_prompt_has_no_default_system_persona(tiny_paths):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_paths[0]))
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}DEFAULT PERSONA\n{% endif %}"
                         "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    parts = data.prompt_parts(tok, "Why?")
    text = tok.decode(parts.prefix + parts.suffix)
    assert "DEFAULT PERSONA" not in text and data.INSTRUCTION in text


def test_the_teachers_examples_do_not_move_with_the_students_train_size(squad_dir):
    small = params.from_mapping({"run_name": "t", "squad_dir": str(squad_dir), "data_pool_rows": 400, "train_size": 16,
                                 "teacher_finetune": True, "teacher_finetune_train_size": 24})
    big = small.replace(train_size=64)
    a, b = steps.load_data(small), steps.load_data(big)
    assert [r["id"] for r in a.teacher_rows] == [r["id"] for r in b.teacher_rows]
    assert [r["id"] for r in b.train_rows[:16]] == [r["id"] for r in a.train_rows]  # a larger set extends the smaller
    ids = [r["id"] for r in b.train_rows + b.eval_rows + b.teacher_rows]
    assert len(ids) == len(set(ids))
