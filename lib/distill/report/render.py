"""Executed notebooks as reports a reader understands in a minute: the answer first, code out of the way.

The page opens with the notebook's title and its `summary`-tagged cell (the finding, generated from the
results, and the main chart), then the run's values of the notebook's parameters as one compact table, then
the narrative and outputs in order; code cells, the notebook's default `parameters` cell and papermill's
injected cell never show, and stderr (progress lines, library warnings: the terminal got them) is left out.
Pages are self-contained: charts are embedded, no script or stylesheet is fetched, and paths are shown
relative to the project. Rendering reads only the executed notebook, so it sits outside the pipeline's cache:
a change here re-renders reports without re-running any stage.
"""
from __future__ import annotations

import copy
import functools
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from distill.core import paths
from distill.report import results, summaries, sweeps

SUMMARY_TAG = "summary"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")
HIDDEN_TAGS = {"parameters", "injected-parameters"}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:15px;line-height:1.45;color:#222;
 max-width:1100px;margin:0 auto;padding:12px 24px}
nav{font-size:13px;color:#555;border-bottom:1px solid #ddd;padding-bottom:6px;margin-bottom:8px}
nav a{margin-right:14px}
h1{font-size:1.6em;margin:.3em 0}
h2{font-size:1.25em;margin-top:1.4em;border-bottom:1px solid #eee}
#summary{background:#f4f8fc;border-left:4px solid #4c72b0;padding:4px 16px 8px;margin:8px 0 16px}
#summary p{margin:.5em 0}
img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0;max-width:100%}
.output_html{overflow-x:auto}
th,td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top;overflow-wrap:break-word}
th{background:#f6f6f6}
td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:12.5px;max-width:100%}
details{margin:10px 0}
summary{cursor:pointer;color:#333}
a.anchor-link{display:none}
.output_stderr{display:none}
.status.ok b{color:#070}.status.failed b{color:#b00}.status.running b{color:#a60}.status.failed,.status.running{font-size:1.1em}.stale{color:#555}
"""


def declared_parameters(nb) -> list[str]:
    """The names a notebook's `parameters` cell declares (`name: type = value  # comment`)."""
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return re.findall(r"^([A-Za-z_]\w*)\s*[:=]", cell.source, re.M)
    return []


def parameters_table(nb) -> str:
    """The run's values of the notebook's declared parameters (what papermill injected), as a compact table."""
    injected = nb.metadata.get("papermill", {}).get("parameters", {}) or {}
    names = [n for n in declared_parameters(nb) if n in injected]
    if not names:
        return ""
    cells = [f"<td><code>{html.escape(n)}</code></td><td>{html.escape(_value(injected[n]))}</td>" for n in names]
    per_row = 3
    rows = "".join("<tr>" + "".join(cells[i:i + per_row]) + "</tr>" for i in range(0, len(cells), per_row))
    return (f"<details><summary>This run's parameters ({len(names)} of {len(injected)}; every key: the run's "
            f"<code>manifest.json</code>)</summary><table class='params'>{rows}</table></details>")


def _value(v: Any) -> str:
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _reader_cells(nb) -> tuple[list, list]:
    """(title and summary cells, the rest): hidden cells dropped, stderr outputs removed."""
    head, body = [], []
    for i, cell in enumerate(nb.cells):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & HIDDEN_TAGS:
            continue
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not (o.output_type == "stream" and o.name == "stderr")]
            if not cell.outputs:
                continue
        if SUMMARY_TAG in tags or (i == 0 and cell.cell_type == "markdown"):
            head.append(cell)
        else:
            body.append(cell)
    return head, body


@functools.cache
def _exporter():
    """One exporter per process: building one compiles its templates (half a second a page otherwise)."""
    from nbconvert import HTMLExporter  # notebook tooling: only rendering needs it

    return HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                        exclude_output_prompt=True)


def _fragment(nb, cells: list) -> str:
    part = copy.copy(nb)
    part.cells = cells
    return _exporter().from_notebook_node(part)[0] if cells else ""


def page(nb, title: str, links: list[tuple[str, str]]) -> str:
    """The whole HTML page of an executed notebook (see the module docstring for its order)."""
    nb = copy.deepcopy(nb)
    params = parameters_table(nb)
    head, body = _reader_cells(nb)
    title_cells = [c for c in head if SUMMARY_TAG not in c.get("metadata", {}).get("tags", [])]
    summary_cells = [c for c in head if SUMMARY_TAG in c.get("metadata", {}).get("tags", [])]
    nav = " ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in links)
    failed = any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    banner = ("<p style='color:#b00;font-weight:bold'>This notebook FAILED: its error is shown below; the summary "
              "is missing or incomplete.</p>" if failed else "")
    summary = _fragment(nb, summary_cells) or (
        "<p>No summary: the notebook stopped before writing it.</p>" if failed else
        "<p>No summary: this notebook was executed by a version of the study whose reports carried none; re-run "
        "its stage to add one.</p>")
    text = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><nav>{nav}</nav>{_fragment(nb, title_cells)}{banner}"
            f"<section id='summary'>{summary}</section>{params}<main>{_fragment(nb, body)}</main></body></html>")
    return relative_paths(text)


def relative_paths(text: str) -> str:
    """The project's absolute location never reaches a page: paths inside it read relative to it."""
    root = str(paths.PROJECT_ROOT)
    return text.replace(root + "/", "").replace(root, ".")


def redact(text: str) -> str:
    """Hub tokens never reach a report, even if a cell printed one."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, "***redacted***")
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "***redacted***", text)


def render(executed: Path, out_html: Path, notebook: str, run_name: str) -> None:
    """Write `out_html` from the executed notebook (atomically), with links to the index and the source."""
    import nbformat  # notebook tooling: only rendering needs it

    nb = nbformat.read(executed, as_version=4)
    here = Path(out_html).parent

    def link(target: Path) -> str:
        return Path(os.path.relpath(target, here)).as_posix()

    links = [("← run index", "index.html"),
             (f"source: notebooks/{notebook}.py", link(paths.NOTEBOOKS_DIR / f"{notebook}.py")),
             (f"executed notebook: {paths.shown(executed)}", link(executed))]
    title = f"{run_name}: {notebook}"
    paths.write_text_atomic(out_html, redact(page(nb, title, links)))


def markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune  # notebook tooling: only rendering needs it

    return markdown2html_mistune(text)


def _headline(p, report_dir: Path) -> tuple[str, list[str]]:
    """The run's finding (HTML) and its charts: the benchmark's when the run has one, else its grid's (the capacity
    curve, the signal grid or the 4-bit teachers)."""
    found = report_dir / "results.json"
    if found.exists():
        data = json.loads(found.read_text(encoding="utf-8"))
        try:
            df = results.table(data["models"])
        except KeyError as missing:
            return (f"<p>{paths.shown(found)} lacks {missing}: it was written by an older version; the benchmark "
                    "stage (03) re-writes it.</p>", [])
        pair, missing = sweeps.paired_gain(p)
        text = summaries.benchmark(df, pair, missing, data["meta"])
        frame = results.comparison_frame(df).to_html(classes="results", index_names=False)
        return markdown(text) + frame, ["f1_vs_latency.png", "f1_by_model.png", "latency_batch1_ms_median_by_model.png"]
    for name, charts in (("capacity.json", ["capacity_f1_vs_params.png", "capacity_distillation_gain.png"]),
                         ("signal.json", ["signal_gains.png"]), ("fourbit.json", ["fourbit_fidelity.png"])):
        found = report_dir / name
        if found.exists():
            lines = "\n".join(f"- {line}" for line in json.loads(found.read_text(encoding="utf-8"))["headline"])
            return markdown(lines), charts
    return "<p>No results yet: the run has not reached its benchmark.</p>", []


def profile_about(run_name: str) -> str:
    """What the profile of the run's name (params/<run_name>.yaml) says it is, shows and does not show: its leading
    comment, without the lines that say how to run it and where its results go. Empty when there is no such profile
    (a run renamed with --set run_name=...)."""
    f = paths.PARAMS_DIR / f"{run_name}.yaml"
    if not f.exists():
        return ""
    lines = []
    for line in f.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    kept = [x for x in lines if not x.startswith(("Run:", "Results:", "Report:"))]
    return " ".join(x for x in kept if x)


def index_page(p, manifest: dict[str, Any]) -> str:
    """The run's front page: its finding, headline table and charts first; every report, sweep and capacity study
    one click away; the manifest folded."""

    report_dir = p.report_dir
    status = manifest["status"]
    head = (f"<p class='status {status}'>Status: <b>{status}</b>"
            + (f": {html.escape(manifest.get('failure', ''))}" if status != "ok" else "")
            + (f". Ended {manifest['end']}, {manifest['wall_s']:.0f} s" if manifest.get("end") else "")
            + f"; commit <code>{manifest['git']['commit'][:12]}</code>"
            + (" (uncommitted changes)" if manifest["git"]["dirty"] else "") + ".</p>")
    finding, charts = _headline(p, report_dir)
    about = profile_about(p.run_name)
    images = "".join(f'<img src="{c}" alt="{c}" style="max-width:49%">' for c in charts if (report_dir / c).exists())
    rows = []
    for s in manifest["steps"]:
        name = html.escape(s["name"])
        link = f'<a href="{name}.html">{name}</a>' if (report_dir / f"{s['name']}.html").exists() else name
        wall = f'{s["wall_s"]:.0f}' if s.get("wall_s") is not None else ""
        rows.append(f"<tr><td>{link}</td><td style='text-align:left'>{html.escape(s['title'])}</td>"
                    f"<td>{s['status']}</td><td>{wall}</td></tr>")
    files = [f for f in ("results.txt", "results.csv", "results.json", "capacity.json", "capacity_table.csv",
                         "signal.json", "fourbit.json") if (report_dir / f).exists()]
    files += sorted(f.name for f in report_dir.glob("predictions_*.json"))
    more = [f'<li><a href="{f}">{f}</a></li>' for f in files]
    if (report_dir / "sweeps" / "summary.txt").exists():
        more.append('<li>seed sweeps: <a href="sweeps/summary.txt">sweeps/summary.txt</a> '
                    '(<a href="sweeps/paired_differences.png">paired differences</a>, '
                    '<a href="sweeps/seed_scores.png">every seed</a>)</li>')
    for other in sorted(report_dir.parent.glob("*/capacity.json")):
        if other.parent != report_dir and (other.parent / "04_capacity.html").exists():
            more.append(f'<li>capacity study <a href="../{other.parent.name}/04_capacity.html">{other.parent.name}</a>: '
                        'how small the student can get</li>')
    text = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>distill-study: "
            f"{html.escape(p.run_name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>distill-study run <code>{html.escape(p.run_name)}</code></h1>"
            # a run under way or failed says so before any number: those may be an earlier run's
            + (f"{head}<p class='stale'>The numbers below are from the last completed stages; they may predate "
               "this run.</p>" if status != "ok" else "")
            + f"<section id='summary'>{finding}</section><div>{images}</div>"
            + (f"<section id='about'><h2>What this run is, and what it can and cannot show</h2>"
               f"<p>{html.escape(about)}</p></section>" if about else "")
            + (head if status == "ok" else "")
            + f"<h2>Reports</h2><table><tr><th>report</th><th>what it does</th><th>status</th><th>wall s</th></tr>"
            f"{''.join(rows)}</table>"
            + (f"<h2>Results and other studies</h2><ul>{''.join(more)}</ul>" if more else "")
            + f"<details><summary>Manifest: parameters, packages, device, git ({len(manifest.get('params', {}))} params)"
            f"</summary><pre>{html.escape(json.dumps(manifest, indent=1, default=str))}</pre></details></body></html>")
    return relative_paths(text)
