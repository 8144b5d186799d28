"""The 4-bit grid's predictions in the official SQuAD v1.1 format, beside fourbit.json: writes
reports/fourbit_cpu/fourbit_predictions/*.json from the grid's score files and checks that the official metric
re-scores each to its recorded F1. Run after make fourbit: python benchmarks/fourbit_predictions.py (the report stage
does not write them yet)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the official script
from squad_official_metric import evaluate  # noqa: E402

from distill.core import params, paths  # noqa: E402
from distill.parts import data, official  # noqa: E402
from distill.report.capacity_report import load_scores  # noqa: E402
from distill.report.signal_report import prediction_name  # noqa: E402
from distill.study import capacity  # noqa: E402

base = params.load("pipelines/fourbit_cpu/params.yaml")
out = base.report_dir / "fourbit_predictions"
fb = json.loads((base.report_dir / "fourbit.json").read_text())
scores = load_scores(base)
files = {"teacher-float32.json": scores[0]}
for precision in base.fidelity_precisions:
    files[f"teacher-{precision}.json"] = json.loads(
        capacity.score_file(capacity.teacher_held(base, precision), "teacher").read_text())
for s in scores[1:]:
    files[prediction_name(s["layers"], s["variant"], s["seed"])] = s
ids = fb["question_ids"]
dataset = official.dev_subset(data.load_squad("validation", base.squad_dir, 0), ids)["data"]
worst = 0.0
for name, s in files.items():
    assert s["question_ids"] == ids, name
    paths.write_text_atomic(out / name, json.dumps(s["predictions"], indent=0, sort_keys=True))
    official = evaluate(dataset, s["predictions"])["f1"]
    worst = max(worst, abs(official - s["f1"]))
print(f"{len(files)} prediction files in {out}; official F1 minus recorded F1: largest {worst:.2e}")
