"""Generation and scoring helpers of the benchmark."""
import json

import pandas as pd
import pytest
import torch

from distill import benchmark, data, models, paths, results


@pytest.fixture(scope="module")
def tiny(tiny_paths):
    torch.manual_seed(0)
    model = models.load_model(str(tiny_paths[0])).eval()
    # sharpen the random model so greedy choices are not coin flips between near-equal logits
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)
    return model, models.load_tokenizer(str(tiny_paths[0]))


def test_batched_and_single_generation_agree(tiny, squad_dir):
    model, tok = tiny
    rows = data.load_squad("validation", str(squad_dir), pool_rows=10)
    enc = data.encode_examples(rows, tok, 160, seed=0, with_answer=False, reserve=8)
    prompts = [f["input_ids"] for f in data.prompt_features(enc.features)]
    assert len({len(x) for x in prompts}) > 1  # different lengths: left padding is exercised
    batched, _ = benchmark.generate(model, tok, prompts, max_new_tokens=8, batch_size=5)
    single, _ = benchmark.generate(model, tok, prompts, max_new_tokens=8, batch_size=1)
    assert batched == single and any(batched)


def test_teacher_forced_matches_a_hand_computation(tiny):
    model, tok = tiny
    feats = [{"input_ids": [2, 10, 11, 12, 13], "labels": [-100, -100, -100, 12, 13]},
             {"input_ids": [2, 20, 21], "labels": [-100, -100, 21]}]
    got = benchmark.teacher_forced(model, feats, tok.pad_token_id, batch_size=2)
    nll, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for f in feats:
            logp = torch.log_softmax(model(torch.tensor([f["input_ids"]])).logits[0].float(), -1)
            for pos, label in enumerate(f["labels"]):
                if label != -100:
                    nll -= float(logp[pos - 1, label])
                    hits += int(logp[pos - 1].argmax() == label)
                    n += 1
    assert got["answer_tokens"] == n == 3
    assert got["answer_loss"] == pytest.approx(nll / n, rel=1e-4)
    assert got["top1_accuracy"] == pytest.approx(hits / n)


def test_comparison_text_has_ratios():
    rows = {}
    for name, scale in ((results.TEACHER, 2.0), (results.BEFORE, 1.0), (results.BASELINE, 1.0), (results.DISTILLED, 1.0)):
        rows[name] = {col: scale * (i + 1) for i, (col, _, _) in enumerate(results.METRICS)}
    df = results.table(rows)
    text = results.comparison_text(df, {"run_name": "r", "n_examples": 3, "max_new_tokens": 4, "batch_size": 2,
                                        "device": "cpu", "memory_kind": "rss", "teacher_disk_kind": "folder"})
    assert "2.00x" in text and "0.50x" in text  # half the size is 2x better; half the F1 is 0.5x
    assert isinstance(df, pd.DataFrame) and list(df.index)[0] == results.TEACHER


def test_markdown_table_rounds_per_metric_and_compares_the_students():
    rows = {name: {col: 1.0 for col, _, _ in results.METRICS} for name in
            (results.TEACHER, results.BEFORE, results.BASELINE, results.DISTILLED)}
    rows[results.TEACHER]["latency_ms_per_example"] = 600.4
    rows[results.DISTILLED].update(latency_ms_per_example=400.2, answer_loss=1.2345, f1=17.26)
    rows[results.BASELINE].update(answer_loss=1.3, f1=15.0)
    lines = results.markdown_table(results.table(rows)).splitlines()
    assert lines[0].startswith("| metric | teacher |") and len(lines) == 2 + len(results.METRICS)
    assert "| latency (ms/example) | 600 | 1 | 1 | 400 | 1.50x | +399 |" in lines
    assert "| answer loss (nats, teacher-forced) | 1.000 | 1.000 | 1.300 | 1.234 | 0.81x | -0.066 |" in lines
    assert "| SQuAD F1 (%) | 1.0 | 1.0 | 15.0 | 17.3 | 17.26x | +2.3 |" in lines


def test_readme_table_is_the_default_runs_results_json():
    """The README's results table is read off the committed results.json, so the two cannot drift apart."""
    committed = paths.PROJECT_ROOT / "reports" / "smollm2-135m_to_pruned24_cpu" / "results.json"
    table = results.markdown_table(results.table(json.loads(committed.read_text())["models"]))
    assert table in (paths.PROJECT_ROOT / "README.md").read_text()
