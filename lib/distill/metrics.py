"""SQuAD v1.1 scoring, with the official evaluation script's normalisation, and answer post-processing."""
from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# End-of-turn markers a decoder may leave in text when special tokens are not skipped.
_END_MARKERS = ("<|im_end|>", "<end_of_turn>", "</s>", "<eos>", "<|endoftext|>")


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def token_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1; as in the official v1.1 script it is 0 when nothing overlaps, even if both are empty."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if not predictions:
        raise ValueError("squad_scores: no predictions to score")
    if len(predictions) != len(references):
        raise ValueError(f"squad_scores: {len(predictions)} predictions but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"squad_scores: question {i} has no gold answer")


def per_example_scores(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """EM and F1 per question, each the max over that question's gold answers."""
    _check(predictions, references)
    return [{"exact_match": float(max(exact_match(p, g) for g in refs)), "f1": max(token_f1(p, g) for g in refs)}
            for p, refs in zip(predictions, references)]


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent: the max over all gold answers, averaged over questions."""
    rows = per_example_scores(predictions, references)
    return {"exact_match": 100.0 * sum(r["exact_match"] for r in rows) / len(rows),
            "f1": 100.0 * sum(r["f1"] for r in rows) / len(rows)}


def postprocess_answer(text: str) -> str:
    """The one post-processing every model's generation gets: first non-empty line, trimmed.

    A leading "Answer:" echo and a trailing end-of-turn marker are removed too.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if line.lower().startswith("answer:"):
        line = line[len("answer:"):].strip()
    for marker in _END_MARKERS:
        if marker in line:
            line = line.split(marker)[0].strip()
    return line
