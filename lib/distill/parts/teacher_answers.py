"""The teacher's own answers to extra training questions, asked once and stored.

SQuAD's train split has far more questions than a CPU run trains on with their gold answers. The teacher
answers some of the others (greedy, its own prompt; their gold answers are never read: `data.question_only`),
and a student trains on the gold examples plus these, the teacher's answer as the target: cross-entropy on
them is sequence-level KD (Kim & Rush 2016), and the teacher cache holds the teacher's distribution on them
for the divergence.

Layout, beside the teacher cache (`artifacts/<run>/teacher_cache/answers-L<max_length>-N<max_new_tokens>/`):
  answers.json       {"config": what the answers depend on, "answers": {question id: {"answer", "window", "raw"}}}
  views/<run>.json   the answers one training run reads (a stage depends on its own view only)
"window" is the context window [lo, hi) in context tokens the teacher saw; the student's example uses the same.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.core import paths
from distill.parts import benchmark, data, metrics
from distill.parts.teacher_cache import (
    UNMARKED_PRECISION,
    folder_digest,
    precision_entry,
    precision_suffix,
    template_digest,
    tokenizer_digest,
)


class AnswersMissing(FileNotFoundError):
    """A training run's teacher answers are not stored yet (the teacher-cache stage asks for them)."""


def store_dir(base_run_dir: Path, p) -> Path:
    return Path(base_run_dir) / "teacher_cache" / f"answers-L{p.max_length}-N{p.max_new_tokens}{precision_suffix(p)}"


def view_file(base_run_dir: Path, p) -> Path:
    return store_dir(base_run_dir, p) / "views" / f"{p.run_name}.json"


def answers_config(teacher_source: str, tokenizer, max_length: int, max_new_tokens: int, seed: int,
                   precision: str = UNMARKED_PRECISION) -> dict[str, Any]:
    """What the answers depend on: the teacher's content, precision and prompt, the window budget and its seed."""
    return {"teacher": folder_digest(teacher_source), "tokenizer": tokenizer_digest(tokenizer),
            "chat_template": template_digest(tokenizer),
            "max_length": max_length, "max_new_tokens": max_new_tokens, "seed": seed, **precision_entry(precision)}


def _read(store: Path, config: dict[str, Any], log) -> dict[str, Any]:
    f = store / "answers.json"
    try:
        stored = json.loads(f.read_text()) if f.exists() else None
    except ValueError:
        stored = None
    if stored is not None and stored.get("config") != config:
        differs = sorted(k for k in config if stored.get("config", {}).get(k) != config[k])
        log(f"teacher answers: {store.name} were made with other {', '.join(differs)}; asking again")
        stored = None
    if stored is None:
        shutil.rmtree(store, ignore_errors=True)
        stored = {"config": config, "answers": {}}
    return stored


def fill(store: Path, config: dict[str, Any], views: dict[str, list[dict[str, Any]]], teacher, tokenizer, device,
         batch_size: int, log=print) -> dict[str, int]:
    """Make sure every question of every view (a training run's teacher-answered questions) has the teacher's
    answer in `store`, asking only the new ones; write each view. Returns counts for the log."""
    stored = _read(store, config, log)
    answers = stored["answers"]
    wanted = {r["id"]: r for rows in views.values() for r in rows}
    missing = [r for qid, r in wanted.items() if qid not in answers]
    if missing:
        reserve = config["max_new_tokens"] + 2  # the answer and its end, re-tokenized, fit in max_length
        prompts = data.answer_prompts(missing, tokenizer, config["max_length"], reserve, config["seed"])
        raw, seconds = benchmark.generate(teacher, tokenizer, [ids for ids, _ in prompts], config["max_new_tokens"],
                                          batch_size, device)
        for row, (_, window), text in zip(missing, prompts, raw):
            answers[row["id"]] = {"answer": metrics.postprocess_answer(text), "window": list(window), "raw": text}
        stored["answers"] = dict(sorted(answers.items()))
        paths.write_text_atomic(store / "answers.json", json.dumps(stored, indent=1))
        log(f"teacher answers: {len(missing)} questions answered in {seconds:.0f} s")
    for name, rows in views.items():
        paths.write_json_if_changed(store / "views" / f"{name}.json",
                                    {"config": config, "run": name, "answers": {r["id"]: answers[r["id"]] for r in rows}})
    empty = sum(not answers[q]["answer"] for q in wanted)
    return {"questions": len(wanted), "asked": len(missing), "empty": empty}


def read_view(view: Path, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stored answers of a training run's teacher-answered questions; every one must be there."""
    if not view.exists():
        raise AnswersMissing(f"{view}: no teacher answers for this run; run its teacher-cache stage (python -m distill "
                             "run <params>) before training")
    got = json.loads(view.read_text())["answers"]
    absent = [r["id"] for r in rows if r["id"] not in got]
    if absent:
        raise AnswersMissing(f"{view}: {len(absent)} of the run's {len(rows)} teacher-answered questions are not "
                             "answered (the settings changed?); run the teacher-cache stage again")
    return got
