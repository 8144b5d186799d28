"""SQuAD scoring against an independent re-implementation of the official v1.1 evaluation script.

hypothesis is not installed in the venv, so the randomised comparison uses a seeded generator over
a pool of tricky tokens.
"""
import collections
import itertools
import random
import re
import string

import pytest

from distill.parts import metrics


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


def _metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        scores_for_ground_truths.append(metric_fn(prediction, ground_truth))
    return max(scores_for_ground_truths)


def _official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))
                prediction = predictions[qa["id"]]
                exact_match += _metric_max_over_ground_truths(_official_em, prediction, ground_truths)
                f1 += _metric_max_over_ground_truths(_official_f1, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


def _official(preds, refs):
    """Wrap flat lists into the SQuAD json structure (two articles) and run the official loop."""
    qas = [{"id": f"q{i}", "answers": [{"text": g, "answer_start": 0} for g in golds]} for i, golds in enumerate(refs)]
    half = len(qas) // 2
    dataset = [{"title": "A", "paragraphs": [{"context": "", "qas": qas[:half]}]},
               {"title": "B", "paragraphs": [{"context": "", "qas": qas[half:]}]}]
    return _official_evaluate(dataset, {f"q{i}": p for i, p in enumerate(preds)})


TRICKY = [
    ("the theater", ["theater"]),                       # article inside a word survives
    ("another one", ["other one"]),
    ("An Apple a day", ["apple day"]),
    ("1,000", ["1000"]),                                # ASCII punctuation deleted, not spaced
    ("1 000", ["1000"]),
    ("Saint-Denis", ["Saint Denis"]),
    ("U.S.", ["US", "United States"]),
    ("\u201cquoted\u201d", ['"quoted"']),               # curly quotes are not in string.punctuation
    ("2010\u20132012", ["2010-2012"]),                  # nor is the en dash
    ("", ["anything"]),                                 # empty prediction
    ("the", ["a"]),                                     # only articles: EM 1, F1 0 (v1.1 quirk)
    ("", [""]),
    ("  Denver   Broncos ", ["denver broncos"]),        # whitespace and case
    ("DENVER\tBroncos\n", ["Denver Broncos"]),
    ("Broncos", ["Carolina Panthers", "the Denver Broncos"]),  # max comes from the second gold
    ("Denver", ["Denver Broncos", "Denver"]),
    ("the cat cat", ["cat"]),                           # repeated tokens: Counter intersection
    ("cat", ["cat cat dog"]),
    ("it's", ["its"]),
    ("caf\u00e9 THE\u00e9", ["caf\u00e9 the\u00e9"]),   # unicode letters around an article
]


@pytest.mark.parametrize("pred, golds", TRICKY)
def test_tricky_strings_match_official(pred, golds):
    assert metrics.squad_scores([pred], [golds]) == pytest.approx(_official([pred], [golds]))
    for g in golds:
        assert metrics.normalize_answer(g) == _official_normalize(g)
        assert metrics.exact_match(pred, g) == _official_em(pred, g)
        assert metrics.token_f1(pred, g) == pytest.approx(_official_f1(pred, g))


def test_all_tricky_together_match_official():
    preds, refs = [p for p, _ in TRICKY], [g for _, g in TRICKY]
    assert metrics.squad_scores(preds, refs) == pytest.approx(_official(preds, refs))


POOL = ["the", "a", "an", "The", "THE", "A", "Cat", "cat,", "cat", "dog.", "1,000", "1000", "theatre", "another",
        "an-other", "(x)", "\u2014", "\u2013", "\u201cParis\u201d", "Paris", "paris!", "  ", "\t", "\u00e9t\u00e9",
        "U.S.A.", "it's", "its", "'", "...", "a.", "the,", "\u00c9T\u00c9", "\u00a0"]


def test_random_combinations_match_official():
    rng = random.Random(7)
    preds, refs = [], []
    for _ in range(600):
        preds.append(rng.choice(["", " "]).join(rng.choice(POOL) for _ in range(rng.randint(0, 5))))
        refs.append([" ".join(rng.choice(POOL) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 3))])
    assert metrics.squad_scores(preds, refs) == pytest.approx(_official(preds, refs))
    rows = metrics.per_example_scores(preds, refs)
    assert [r["f1"] for r in rows] == pytest.approx(
        [_metric_max_over_ground_truths(_official_f1, p, g) for p, g in zip(preds, refs)])
    assert [r["exact_match"] for r in rows] == [
        float(_metric_max_over_ground_truths(_official_em, p, g)) for p, g in zip(preds, refs)]


def test_pairwise_pool_matches_official():
    for p, g in itertools.product(POOL, repeat=2):
        assert metrics.normalize_answer(p) == _official_normalize(p)
        assert metrics.exact_match(p, g) == _official_em(p, g)
        assert metrics.token_f1(p, g) == pytest.approx(_official_f1(p, g))


def test_known_values():
    assert metrics.squad_scores(["Denver Broncos"], [["Denver Broncos", "Broncos"]]) == {"exact_match": 100.0, "f1": 100.0}
    s = metrics.squad_scores(["the Broncos of Denver"], [["Denver Broncos"]])
    assert s["exact_match"] == 0.0 and s["f1"] == pytest.approx(100 * 2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics.normalize_answer("The  Theater, another!") == "theater another"
    assert metrics.normalize_answer("1,000") == "1000"
    assert metrics.normalize_answer("\u201cx\u201d") == "\u201cx\u201d"
    # v1.1 quirk: both normalise to empty -> exact match, but no overlapping token -> F1 0
    assert metrics.exact_match("the", "a") is True and metrics.token_f1("the", "a") == 0.0
    assert metrics.token_f1("", "") == 0.0
    assert metrics.token_f1("the cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.squad_scores(["x", "y"], [["x"], ["z"]]) == {"exact_match": 50.0, "f1": 50.0}


def test_per_example_scores_shape():
    rows = metrics.per_example_scores(["Paris", "Lima"], [["paris"], ["Oslo", "Lima city"]])
    assert rows == [{"exact_match": 1.0, "f1": 1.0}, {"exact_match": 0.0, "f1": pytest.approx(2 / 3)}]


@pytest.mark.parametrize("preds, refs, needle", [
    ([], [], "no predictions"),
    (["a"], [["a"], ["b"]], "1 predictions but 2"),
    (["a", "b"], [["a"]], "2 predictions but 1"),
    (["a"], [[]], r"references\[0\] has no gold answer"),
    (["a", "b"], [["a"], []], r"references\[1\] has no gold answer"),
])
def test_bad_input(preds, refs, needle):
    with pytest.raises(ValueError, match=needle):
        metrics.squad_scores(preds, refs)
    with pytest.raises(ValueError, match=needle):
        metrics.per_example_scores(preds, refs)


def test_bare_string_reference_rejected():
    with pytest.raises(TypeError, match="expected a list of gold answers"):
        metrics.squad_scores(["Paris"], ["Paris"])


@pytest.mark.parametrize("raw, clean", [
    ("Paris", "Paris"),
    ("  Paris  \nThe capital of France.", "Paris"),
    ("\n\nAnswer: 1066", "1066"),
    ("ANSWER:1066", "1066"),
    ("Answer:\n 1066\nmore", "1066"),
    ("The answer: Paris", "The answer: Paris"),        # only a leading prefix is removed
    ("Denver Broncos<|im_end|>", "Denver Broncos"),
    ("gold<end_of_turn>\n", "gold"),
    ("Lima</s>", "Lima"),
    ("Lima <eos>", "Lima"),
    ("Oslo<|eot_id|>", "Oslo"),
    ("Oslo<|endoftext|>Human: next question", "Oslo"),
    ("<|im_end|>\nParis", ""),                         # nothing before the end of turn: empty answer
    ("", ""),
    ("   \n\t\n", ""),
])
def test_postprocess(raw, clean):
    assert metrics.postprocess_answer(raw) == clean
