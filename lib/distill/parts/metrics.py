"""SQuAD v1.1 scoring, with the official evaluation script's normalisation, and answer post-processing.

The scores reproduce the official `evaluate-v1.1.py` exactly, quirks included:

* Only ASCII punctuation (`string.punctuation`) is removed: curly quotes, en/em dashes and other
  Unicode punctuation stay in the tokens, so "2010–2012" does not match "2010-2012".
* Punctuation is deleted, not replaced by a space: "1,000" -> "1000" but "Saint-Denis" -> "saintdenis".
* Articles are removed as whole words only ("theater" and "another" keep their letters).
* F1 is 0 whenever prediction and gold share no token, *including when both normalise to empty*
  (e.g. prediction "the", gold "a"): that pair gets exact match 1 but F1 0, as in v1.1.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# End-of-turn markers a decoder may leave in text when special tokens are not skipped
# (ChatML/Qwen/SmolLM, Gemma, Llama 2/Mistral, generic GPT-style).
_END_MARKERS = ("<|im_end|>", "<end_of_turn>", "</s>", "<eos>", "<|endoftext|>", "<|eot_id|>")
_ANSWER_PREFIX = "answer:"


def normalize_answer(s: str) -> str:
    """Official v1.1 normalisation, in its order: lower -> drop ASCII punctuation -> drop a/an/the -> collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    """True when both strings are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def token_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 (multiset intersection of normalised tokens), in [0, 1].

    As in the official v1.1 script it is 0.0 when nothing overlaps, even if both sides normalise
    to empty (so `token_f1("", "")` is 0.0 while `exact_match("", "")` is True).
    """
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) == 0:
        raise ValueError("squad scoring: no predictions to score")
    if len(predictions) != len(references):
        raise ValueError(f"squad scoring: {len(predictions)} predictions but {len(references)} reference lists "
                         "(need one list of gold answers per prediction)")
    for i, refs in enumerate(references):
        if isinstance(refs, str):  # a bare string would be scored as a list of characters
            raise TypeError(f"squad scoring: references[{i}] is a string {refs!r}; expected a list of gold answers")
        if len(refs) == 0:
            raise ValueError(f"squad scoring: references[{i}] has no gold answer")


def per_example_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """One {"exact_match", "f1"} dict per question, each in [0, 1] (not percent): the max over its gold answers."""
    _check(predictions, references)
    return [{"exact_match": float(max(exact_match(p, g) for g in refs)), "f1": max(token_f1(p, g) for g in refs)}
            for p, refs in zip(predictions, references)]


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent (0-100): per question the max over its gold answers, then the mean.

    Raises ValueError if there are no predictions, if the lengths differ, or if a question has no
    gold answer; TypeError if a reference entry is a bare string instead of a list of strings.
    """
    rows = per_example_scores(predictions, references)
    return {"exact_match": 100.0 * sum(r["exact_match"] for r in rows) / len(rows),
            "f1": 100.0 * sum(r["f1"] for r in rows) / len(rows)}


def postprocess_answer(text: str) -> str:
    """The one post-processing every model's generation gets, before scoring.

    1. Cut the text at the first end-of-turn marker (`_END_MARKERS`), if the decoder left one in:
       nothing after the end of the turn belongs to the answer.
    2. Drop a leading "Answer:" (any case) if the model echoes the prompt's cue.
    3. Keep the first non-empty line, stripped of surrounding whitespace.
    """
    for marker in _END_MARKERS:
        text = text.split(marker, 1)[0]
    text = text.lstrip()
    if text[:len(_ANSWER_PREFIX)].lower() == _ANSWER_PREFIX:
        text = text[len(_ANSWER_PREFIX):]
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
