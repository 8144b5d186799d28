"""The official SQuAD v1.1 evaluation's metric, written from its definition and kept apart from distill.metrics,
so a test can re-score a run's predictions the way the official script does: answers lower-cased, punctuation
and the articles a/an/the removed, whitespace collapsed; EM and token F1 take the best gold answer; both are
averaged over every question of the dataset file (an unanswered question scores 0), times 100."""
import re
import string
from collections import Counter

PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def evaluate(articles: list, predictions: dict) -> dict:
    em = f1 = total = 0.0
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                golds = [a["text"] for a in qa["answers"]]
                em += max(float(normalize(predictions[qa["id"]]) == normalize(g)) for g in golds)
                f1 += max(token_f1(predictions[qa["id"]], g) for g in golds)
    return {"exact_match": 100 * em / total, "f1": 100 * f1 / total}
