"""Reports for readers: the summary first, no code or default parameters, no stderr, no absolute paths."""
import base64

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from distill.core import paths
from distill.report import render, results, summaries

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def executed_notebook():
    """What papermill leaves: the notebook's defaults, the injected values, outputs of every kind."""
    params = new_code_cell('run_name: str = "smoke"  # report folder\nteacher: str = "tiny:teacher"  # the teacher spec\n',
                           metadata={"tags": ["parameters"]})
    injected = new_code_cell('# Parameters\nrun_name = "cpu_run"\nteacher = "gguf:real-teacher"\nseed = 3\n',
                             metadata={"tags": ["injected-parameters"]})
    work = new_code_cell("secret_code_marker = 1\nprint('scored')", outputs=[
        new_output("stream", name="stdout", text=f"saved to {paths.PROJECT_ROOT}/artifacts/cpu_run/deploy\n"),
        new_output("stream", name="stderr", text="Converting GGUF: 100%|#####| 12/12 [00:01<00:00]\nUserWarning: x\n"),
        new_output("display_data", data={"image/png": base64.b64encode(PNG).decode()})])
    summary = new_code_cell("summaries.show(...)", metadata={"tags": ["summary"]}, outputs=[
        new_output("display_data", data={"text/markdown": "**The student keeps 76% of the teacher's F1.**",
                                         "text/plain": "<Markdown>"})])
    nb = new_notebook(cells=[new_markdown_cell("# 03 · Teacher vs students"), params, injected,
                             new_markdown_cell("## How it was measured\nDetails."), work, summary])
    nb.metadata["papermill"] = {"parameters": {"run_name": "cpu_run", "teacher": "gguf:real-teacher", "seed": 3}}
    return nb


def test_the_page_opens_with_title_then_summary_and_hides_code():
    page = render.page(executed_notebook(), "cpu_run: 03", [("index", "index.html")])
    assert page.index("03 · Teacher vs students") < page.index("id='summary'") < page.index("keeps 76%") \
        < page.index("How it was measured")
    assert "secret_code_marker" not in page and "summaries.show" not in page  # no input cells
    assert "tiny:teacher" not in page  # the notebook's defaults never pose as the run's values
    assert page.count("gguf:real-teacher") == 1 and "<code>teacher</code>" in page  # the run's values, once
    table = page.split("This run's parameters")[1].split("</details>")[0]
    assert "<code>run_name</code>" in table and "<code>seed</code>" not in table  # the keys the notebook declares
    assert "Converting GGUF" not in page and "UserWarning" not in page  # stderr went to the terminal
    assert str(paths.PROJECT_ROOT) not in page and "saved to artifacts/cpu_run/deploy" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # opens offline
    assert 'src="data:image/png;base64,' in page


def test_a_failed_notebook_says_so_at_the_top():
    nb = executed_notebook()
    nb.cells[4].outputs.append(new_output("error", ename="NameError", evalue="x", traceback=["NameError: x"]))
    nb.cells = nb.cells[:5]  # it never reached the summary
    page = render.page(nb, "t", [])
    assert page.index("FAILED") < page.index("id='summary'") and "No summary" in page and "NameError" in page


def test_render_writes_the_page_with_relative_links(tmp_path):
    executed = tmp_path / "artifacts" / "executed" / "03_benchmark.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(executed_notebook(), executed)
    out = tmp_path / "reports" / "run" / "03_benchmark.html"
    out.parent.mkdir(parents=True)
    render.render(executed, out, "03_benchmark", "run")
    page = out.read_text()
    assert 'href="../../artifacts/executed/03_benchmark.ipynb"' in page and "notebooks/03_benchmark.py" in page


def test_intervals_that_span_zero_are_called_unresolved():
    assert summaries.interval(-3.3, -6.9, 0.3) == "-3.3 [-6.9, +0.3] (unresolved: the interval spans 0)"
    assert summaries.interval(6.0, 3.8, 8.2) == "+6.0 [+3.8, +8.2] (resolved)"
    assert "resolved" in summaries.interval(-0.093, -0.175, -0.011, 3, " nats")


def benchmark_table(teacher_f1=40.0):
    rows = {}
    for name, f1, ms, params_m in ((results.TEACHER, teacher_f1, 405.0, 135.0), (results.BEFORE, 1.0, 300.0, 113.0),
                                   (results.BASELINE, 28.0, 300.0, 113.0), (results.DISTILLED, 30.0, 300.0, 113.0)):
        rows[name] = {col: 1.0 for col, _, _ in results.METRICS}
        rows[name].update(f1=f1, exact_match=f1 / 2, latency_batch1_ms_median=ms, params_m=params_m,
                          throughput_examples_per_s=400.0 / ms)
    return results.table(rows)


def test_benchmark_summary_gives_ratios_one_way_and_the_sweeps_interval():
    meta = {"n_examples": 48, "batch_size": 8, "latency_prompts": 24}
    pair = {"paired_seeds": 3, "f1_diff_mean": -3.3, "f1_diff_ci95_low": -6.9, "f1_diff_ci95_high": 0.3,
            "exact_match_diff_mean": 2.1, "exact_match_diff_ci95_low": 0.5, "exact_match_diff_ci95_high": 3.7,
            "answer_loss_diff_mean": 0.002, "answer_loss_diff_ci95_low": -0.213, "answer_loss_diff_ci95_high": 0.217}
    text = summaries.benchmark(benchmark_table(), pair, "", meta)
    first = text.split("\n\n")[0]
    assert "1.19x smaller" in first and "1.35x faster" in first and "75% of its F1" in first
    assert "F1 -3.3 [-6.9, +0.3] (unresolved" in text and "EM +2.1 [+0.5, +3.7] (resolved)" in text
    assert "over 3 seeds" in text
    alone = summaries.benchmark(benchmark_table(), None, "no seed sweep of this run yet", meta)
    assert "F1 +2.0, **unresolved**" in alone and "no seed sweep of this run yet" in alone
    assert "no share of it can be kept" in summaries.benchmark(benchmark_table(teacher_f1=0.0), None, "", meta)
