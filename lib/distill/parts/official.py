"""The official SQuAD v1.1 evaluation, without our code: the dev file restricted to a run's scored questions.

`predictions_<model>.json` beside a run's results hold {question id: answer} for the questions the run scored;
the official script averages over every question of the dataset file it is given, so it re-scores a run
against the dev file restricted to those ids, in the official layout (data -> paragraphs -> qas):

    python -m distill squad-subset reports/<run>/results.json /tmp/dev-subset.json
    python evaluate-v1.1.py /tmp/dev-subset.json reports/<run>/predictions_distilled.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.core import paths
from distill.parts.data import load_squad


def dev_subset(rows: list[dict[str, Any]], ids: list[str]) -> dict[str, Any]:
    """The rows whose id is in `ids`, in the official dev-v1.1.json layout (order of `ids` within a paragraph)."""
    wanted = set(ids)
    by_id = {r["id"]: r for r in rows if r["id"] in wanted}
    missing = wanted - set(by_id)
    if missing:
        raise ValueError(f"{len(missing)} scored question ids are not in the SQuAD validation rows (e.g. "
                         f"{sorted(missing)[0]}): the run was scored on other data than SQUAD_DIR holds")
    articles: dict[str, dict[str, list]] = {}
    for qid in ids:
        r = by_id[qid]
        qas = articles.setdefault(r["title"], {}).setdefault(r["context"], [])
        qas.append({"id": qid, "question": r["question"],
                    "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"],
                                                                            r["answers"]["answer_start"])]})
    return {"version": "1.1", "data": [{"title": title, "paragraphs": [{"context": c, "qas": q} for c, q in ctx.items()]}
                                       for title, ctx in articles.items()]}


def write_dev_subset(results_json: Path, out: Path, squad_dir: str = "") -> int:
    try:
        ids = json.loads(Path(results_json).read_text(encoding="utf-8"))["meta"]["question_ids"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{results_json}: not a study's results.json (no meta.question_ids: {err!r}); give "
                         "reports/<run>/results.json") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{results_json}: meta.question_ids is not a list of question ids; give "
                         "reports/<run>/results.json")
    subset = dev_subset(load_squad("validation", squad_dir), ids)
    paths.write_text_atomic(Path(out), json.dumps(subset))
    return len(ids)
