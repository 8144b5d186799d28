"""Generation and scoring helpers of the benchmark."""
import json

import pandas as pd
import pytest
import torch

from distill.core import paths
from distill.parts import benchmark, data, models, official
from distill.report import results


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


def test_ratios_read_one_way_whichever_side_is_better():
    """Every ratio reads "N x <word>" with N >= 1: a student that is worse says so with the opposite word."""
    assert results.versus_teacher("params_m", 100.0, 119.0) == "1.19x smaller"
    assert results.versus_teacher("params_m", 119.0, 100.0) == "1.19x larger"
    assert results.versus_teacher("latency_batch1_ms_median", 300.0, 405.0) == "1.35x faster"
    assert results.versus_teacher("latency_batch1_ms_median", 405.0, 300.0) == "1.35x slower"
    assert results.versus_teacher("throughput_examples_per_s", 4.05, 3.0) == "1.35x faster"  # higher is faster
    assert results.versus_teacher("throughput_examples_per_s", 3.0, 4.05) == "1.35x slower"
    assert results.versus_teacher("peak_memory_mb", 500.0, 1000.0) == "2.00x leaner"
    assert results.versus_teacher("f1", 30.0, 40.0) == "75% of the teacher"
    assert results.versus_teacher("answer_loss", 1.25, 1.0) == "+0.250 nats"
    assert results.versus_teacher("f1", 30.0, 0.0) == "n/a"


def test_comparison_text_names_the_latency_it_reports():
    rows = {}
    for name, scale in ((results.TEACHER, 2.0), (results.BEFORE, 1.0), (results.BASELINE, 1.0), (results.DISTILLED, 1.0)):
        rows[name] = {col: scale * (i + 1) for i, (col, _, _) in enumerate(results.METRICS)}
    df = results.table(rows)
    text = results.comparison_text(df, {"run_name": "r", "n_examples": 3, "max_new_tokens": 4, "batch_size": 2,
                                        "latency_prompts": 3, "device": "cpu", "memory_kind": "rss",
                                        "teacher_disk_kind": "folder"})
    assert "2.00x smaller" in text and "2.00x faster" in text and "2.00x slower" in text  # throughput halves
    assert "50% of the teacher" in text and "batch 1" in text and "batches of 2" in text
    assert isinstance(df, pd.DataFrame) and list(df.index)[0] == results.TEACHER


def test_markdown_table_rounds_per_metric_and_compares_the_students():
    rows = {name: {col: 1.0 for col, _, _ in results.METRICS} for name in
            (results.TEACHER, results.BEFORE, results.BASELINE, results.DISTILLED)}
    rows[results.TEACHER]["latency_batch1_ms_median"] = 1600.4
    rows[results.DISTILLED].update(latency_batch1_ms_median=400.2, answer_loss=1.2345, f1=17.26)
    rows[results.BASELINE].update(answer_loss=1.3, f1=15.0)
    lines = results.markdown_table(results.table(rows)).splitlines()
    assert lines[0].startswith("| metric | teacher |") and len(lines) == 2 + len(results.METRICS)
    assert "| latency, batch 1, median (ms) | 1,600 | 1 | 1 | 400 | 4.00x faster | +399 |" in lines
    assert "| answer loss (nats, teacher-forced) | 1.000 | 1.000 | 1.300 | 1.234 | +0.234 nats | -0.066 |" in lines
    assert "| SQuAD F1 (%) | 1.0 | 1.0 | 15.0 | 17.3 | 1726% of the teacher | +2.3 |" in lines


def test_prediction_files_are_the_official_format_keyed_by_question_id():
    scored = {results.TEACHER: {"question_ids": ["a1", "b2"], "predictions": ["Denver Broncos", ""]}}
    files = results.prediction_files(scored)
    assert json.loads(files["predictions_teacher.json"]) == {"a1": "Denver Broncos", "b2": ""}
    with pytest.raises(ValueError, match="question ids"):
        results.prediction_files({results.TEACHER: {"question_ids": ["a1"], "predictions": ["x", "y"]}})


def test_readme_table_is_the_default_runs_results_json():
    """The README's results table is read off the committed results.json, so the two cannot drift apart."""
    committed = paths.PROJECT_ROOT / "reports" / "smollm2-135m_to_pruned20_cpu" / "results.json"
    table = results.markdown_table(results.table(json.loads(committed.read_text())["models"]))
    assert table in (paths.PROJECT_ROOT / "README.md").read_text()


def test_committed_predictions_rescore_to_results_json_with_the_official_metric(real_squad_dir, tmp_path):
    """The official evaluation, given the dev file restricted to the scored ids (`python -m distill squad-subset`),
    re-scores every model's predictions_<model>.json to the EM/F1 in results.json."""
    from squad_official_metric import evaluate


    report = paths.PROJECT_ROOT / "reports" / "smollm2-135m_to_pruned20_cpu"
    data = json.loads((report / "results.json").read_text())
    subset = tmp_path / "dev-subset.json"
    assert official.write_dev_subset(report / "results.json", subset, str(real_squad_dir)) == len(data["meta"]["question_ids"])
    articles = json.loads(subset.read_text())["data"]
    for model, name in results.MODEL_KEYS.items():
        predictions = json.loads((report / f"predictions_{name}.json").read_text())
        assert list(predictions) == data["meta"]["question_ids"]
        got = evaluate(articles, predictions)
        assert got["exact_match"] == pytest.approx(data["models"][model]["exact_match"], abs=1e-9), model
        assert got["f1"] == pytest.approx(data["models"][model]["f1"], abs=1e-9), model
