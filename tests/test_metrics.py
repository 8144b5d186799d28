"""SQuAD scoring against an independent re-implementation of the official v1.1 evaluation script."""
import collections
import random
import re
import string

import pytest

from distill import metrics


# --- the official v1.1 script's logic, written out independently in its own style -------------
def _official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_em(prediction, ground_truth):
    return _official_normalize(prediction) == _official_normalize(ground_truth)


def _official_evaluate(predictions, references):
    f1 = exact_match = total = 0
    for pred, golds in zip(predictions, references):
        total += 1
        exact_match += max(_official_em(pred, g) for g in golds)
        f1 += max(_official_f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


TRICKY = [
    ("the theater", ["theater"]),
    ("another one", ["other one"]),
    ("1,000", ["1000"]),
    ("1 000", ["1000"]),
    ("\u201cquoted\u201d", ['"quoted"']),
    ("2010\u20132012", ["2010-2012"]),
    ("", ["anything"]),
    ("the", ["a"]),
    ("  Denver   Broncos ", ["denver broncos"]),
    ("Broncos", ["Carolina Panthers", "the Denver Broncos"]),
    ("the cat cat", ["cat"]),
    ("An Apple a day", ["apple day"]),
    ("Saint-Denis", ["Saint Denis"]),
    ("U.S.", ["US", "United States"]),
]


@pytest.mark.parametrize("pred, golds", TRICKY)
def test_tricky_strings_match_official(pred, golds):
    assert metrics.squad_scores([pred], [golds]) == pytest.approx(_official_evaluate([pred], [golds]))


def test_random_combinations_match_official():
    rng = random.Random(7)
    pool = ["the", "a", "an", "The", "Cat", "cat,", "dog.", "1,000", "1000", "theatre", "an-other", "(x)",
            "\u2014", "Paris", "paris!", "  ", "\u00e9t\u00e9", "U.S.A.", "it's", "its"]
    preds, refs = [], []
    for _ in range(400):
        preds.append(" ".join(rng.choice(pool) for _ in range(rng.randint(0, 5))))
        refs.append([" ".join(rng.choice(pool) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))])
    assert metrics.squad_scores(preds, refs) == pytest.approx(_official_evaluate(preds, refs))
    rows = metrics.per_example_scores(preds, refs)
    assert [r["f1"] for r in rows] == pytest.approx([max(_official_f1(p, g) for g in r) for p, r in zip(preds, refs)])


def test_known_values():
    assert metrics.squad_scores(["Denver Broncos"], [["Denver Broncos", "Broncos"]]) == {"exact_match": 100.0, "f1": 100.0}
    s = metrics.squad_scores(["the Broncos of Denver"], [["Denver Broncos"]])
    assert s["exact_match"] == 0.0 and s["f1"] == pytest.approx(100 * 2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics.token_f1("", "") == 0.0  # as the v1.1 script: no overlap, no credit


@pytest.mark.parametrize("preds, refs, needle", [
    ([], [], "no predictions"),
    (["a"], [["a"], ["b"]], "1 predictions but 2"),
    (["a"], [[]], "no gold answer"),
])
def test_bad_input(preds, refs, needle):
    with pytest.raises(ValueError, match=needle):
        metrics.squad_scores(preds, refs)


@pytest.mark.parametrize("raw, clean", [
    ("Paris", "Paris"),
    ("  Paris  \nThe capital of France.", "Paris"),
    ("\n\nAnswer: 1066", "1066"),
    ("Denver Broncos<|im_end|>", "Denver Broncos"),
    ("gold<end_of_turn>\n", "gold"),
    ("", ""),
])
def test_postprocess(raw, clean):
    assert metrics.postprocess_answer(raw) == clean
