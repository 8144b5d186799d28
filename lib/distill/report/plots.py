"""Charts of the study; each is saved under the run's report folder with a name that says what it shows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from distill.report import stats
from distill.report.results import DIGITS, versus_teacher

COMPONENTS = ("total", "ce", "kd", "hidden")
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def save(fig, folder: Path, name: str, show: bool = True) -> None:
    """Write `<folder>/<name>.png`; in a notebook the inline backend also shows the figure unless `show` is off
    (a summary shows its chart from the file, once)."""
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
    if not show:
        plt.close(fig)


def loss_components(log_history: list[dict[str, Any]], title: str):
    """Each loss term over optimizer steps, train (solid) and eval (dashed), on its own panel."""
    present = [c for c in COMPONENTS if any(f"train_{c}" in e or f"eval_{c}" in e for e in log_history)]
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3.2), squeeze=False)
    for ax, comp in zip(axes[0], present):
        for split, style in (("train", "-o"), ("eval", "--s")):
            pts = [(e["step"], e[f"{split}_{comp}"]) for e in log_history if f"{split}_{comp}" in e]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_title(COMPONENT_TITLES.get(comp, comp), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats)" if comp != "hidden" else "normalised MSE")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


COMPONENT_TITLES = {"total": "total (weighted sum)", "ce": "CE on the gold answer", "kd": "teacher divergence (x T²)",
                    "hidden": "hidden-state MSE"}


def token_lengths(lengths: list[int], max_length: int, title: str):
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(lengths, bins=30, color="#4c72b0")
    ax.axvline(max_length, color="red", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example (prompt + answer)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def layer_importance(importance: list[float], kept: list[int], title: str, full_attention: list[int] = ()):
    """Each teacher layer's measured importance; blue: kept in the student; hatched: a full-attention layer of a
    mixed-attention model (Gemma 3), kept ahead of its importance rank."""
    fig, ax = plt.subplots(figsize=(8, 3))
    colors = ["#4c72b0" if i in kept else "#c0c0c0" for i in range(len(importance))]
    bars = ax.bar(range(len(importance)), importance, color=colors)
    for i in full_attention:
        bars[i].set_hatch("//")
        bars[i].set_edgecolor("#222222")
    ax.set_xlabel("teacher layer (blue: kept in the student" + ("; hatched: full attention)" if full_attention else ")"))
    ax.set_ylabel("1 - cos(in, out)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def metric_bars(table, metric: str, reference: str, title: str, ylabel: str):
    """One bar per model, annotated with its value and how it compares with `reference` (the teacher), in the
    same words as the results table ("1.35x faster", "76% of the teacher")."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    names = list(table.index)
    values = [float(table.loc[n, metric]) for n in names]
    ref = float(table.loc[reference, metric])
    bars = ax.bar(names, values, color=["#dd8452" if n == reference else "#4c72b0" for n in names])
    for bar, name, v in zip(bars, names, values):
        note = "" if name == reference else "\n" + versus_teacher(metric, v, ref).replace(" of the teacher", "")
        ax.annotate(f"{v:,.{DIGITS.get(metric, 2)}f}{note}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if max(values) >= 100 else "{x:,.4g}"))
    ax.set_title(title)
    ax.margins(y=0.3)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    return fig


def f1_vs_latency(table, title: str, latency: str = "latency_batch1_ms_median"):
    """Each model's F1 against its per-request latency; the legend names each model's size (no marker sizes to
    decode)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    markers = "*osD^v"
    for (name, row), marker in zip(table.iterrows(), markers):
        ax.scatter(row[latency], row["f1"], s=110 if marker == "*" else 45, marker=marker, alpha=0.85,
                   label=f"{name} ({row['params_m']:.3g} M parameters)")
    # a legend, not labels at the points: students of one size and speed sit on top of each other
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("latency per question, batch 1, median (ms; left is faster)")
    ax.set_ylabel("SQuAD F1 (%)")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scores_bars(named_scores: dict[str, dict[str, float]], title: str):
    """EM and F1 side by side for a few named evaluations (e.g. teacher before/after fine-tuning)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(named_scores)
    width = 0.38
    for j, metric in enumerate(("exact_match", "f1")):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        vals = [named_scores[n][metric] for n in names]
        ax.bar(xs, vals, width, label=metric)
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("percent")
    ax.set_title(title)
    ax.legend()
    ax.margins(y=0.2)
    fig.tight_layout()
    return fig


def merge_check(merges: list[dict[str, Any]], title: str):
    """Largest logit change against the adapter model, for the merged model in memory and for the saved folder
    loaded alone, per variant, as a share of the tolerance (the red line at 100%: a bar under it passes)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    names = [m["variant"] for m in merges]
    width = 0.38
    for j, (key, label) in enumerate((("max_abs_logit_diff", "merged in memory"),
                                      ("reloaded_max_abs_logit_diff", "saved folder, loaded alone"))):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        shares = [100 * m.get(key, 0.0) / m["tolerance"] for m in merges]
        ax.bar(xs, shares, width, label=label)
        for x, m, v in zip(xs, merges, shares):
            ax.annotate(f"{m.get(key, 0.0):.1e}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.axhline(100, color="red", linestyle="--", label=f"tolerance {merges[0]['tolerance']:.0e} (100%)")
    ax.set_ylim(0, 115)
    ax.set_ylabel("max |logit change| (% of tolerance)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def line(xs, ys, xlabel: str, ylabel: str, title: str):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(xs, ys, "-o")
    if all(float(x).is_integer() for x in xs):  # steps and layer counts: no 2.5 ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def seed_scores(records: list[dict[str, Any]], title: str):
    """Every seed's score per (sweep, variant) as dots, the mean as a bar: the spread is visible at a glance."""
    panels = (("answer_loss", "answer loss (nats, lower is better)"), ("top1_accuracy", "answer top-1 accuracy"),
              ("exact_match", "SQuAD EM (%)"), ("f1", "SQuAD F1 (%)"))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{r['sweep']}/{r['variant']}", []).append(r)
    names = list(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for x, name in enumerate(names):
            values = [r[key] for r in groups[name]]
            ax.bar(x, sum(values) / len(values), color="#c6d4ea", width=0.6)
            ax.scatter([x] * len(values), values, color="#4c72b0", s=18, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_differences(diffs, reference: str, title: str):
    """Per setting, each seed's difference to the reference trained on the same seed (dots) and their mean (bar):
    a setting helps only where its dots sit on the better side of zero."""
    panels = (("answer_loss", "answer loss (nats)", "lower"), ("top1_accuracy", "answer top-1 accuracy", "higher"),
              ("exact_match", "SQuAD EM (points)", "higher"), ("f1", "SQuAD F1 (points)", "higher"))
    label = [f"{s}/{v}" + ("" if vs == reference else f" - {vs}")
             for s, v, vs in zip(diffs["sweep"], diffs["variant"], diffs["vs"])]
    names = list(dict.fromkeys(label))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 1.2 + 0.45 * len(names)), squeeze=False)
    for ax, (key, text, better) in zip(axes[0], panels):
        for y, name in enumerate(names):
            values = [float(d) for d, lbl in zip(diffs[key], label) if lbl == name]
            mean = sum(values) / len(values)
            good = mean < 0 if better == "lower" else mean > 0
            ax.barh(y, mean, color="#8fbf8f" if good else "#e0a0a0", height=0.6)
            ax.scatter(values, [y] * len(values), color="#333333", s=14, zorder=3)
            low, high = stats.ci95(values)
            if low == low:
                ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="none", ecolor="#555555", capsize=3,
                            linewidth=1, zorder=2)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{text}, {better} is better", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}\nrows name what they are compared with unless it is {reference}\n"
                 "(bars: mean, green where the row wins; whiskers: 95% t interval; dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig


CAPACITY_STYLE = {"ce_baseline": ("CE-only", "#dd8452", "s"), "distilled": ("distilled", "#4c72b0", "o")}


def capacity_curve(result: dict[str, Any], x: str, xlabel: str, title: str):
    """F1 of each student size (mean over seeds, 95% interval over questions; faint dots: seeds), CE-only and
    distilled, against `x` (params_m or a latency key); the teacher (a star) and 90% of it as lines."""
    teacher = result["teacher"]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for variant, (label, color, marker) in CAPACITY_STYLE.items():
        rows = sorted((r for r in result["curve"] if r["variant"] == variant), key=lambda r: r[x])
        xs = [r[x] for r in rows]
        ys = [r["f1"] for r in rows]
        err = [[r["f1"] - r["f1_ci95_low"] for r in rows], [r["f1_ci95_high"] - r["f1"] for r in rows]]
        ax.errorbar(xs, ys, yerr=err, color=color, marker=marker, capsize=3, label=label)
        for r in rows:
            ax.annotate(f"{r['layers']}L", (r[x], r["f1"]), textcoords="offset points", xytext=(6, -12 if
                        variant == "ce_baseline" else 6), fontsize=8, color=color)
    ax.axhline(teacher["f1"], color="black", linewidth=1, label=f"teacher ({teacher['layers']} layers): {teacher['f1']:.1f}")
    ax.axhline(result["kept_goal"] * teacher["f1"], color="black", linewidth=1, linestyle="--",
               label=f"{100 * result['kept_goal']:.0f}% of the teacher")
    ax.scatter([teacher[x]], [teacher["f1"]], color="black", marker="*", s=90, zorder=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"SQuAD F1 on {result['n_questions']} questions")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _gain_bar(ax, x: float, mean: float, low: float, high: float, per_seed: list[float]) -> None:
    """One paired gain: a bar coloured by its 95% interval (green above 0, red below, blue across), the interval as
    an error bar, and each seed's gain as a dot."""
    color = "#8fbf8f" if low > 0 else "#e0a0a0" if high < 0 else "#c6d4ea"
    ax.bar(x, mean, color=color, width=0.6)
    ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], fmt="none", ecolor="#333333", capsize=4)
    ax.scatter([x] * len(per_seed), per_seed, color="#333333", s=13, zorder=3)


def capacity_gain(result: dict[str, Any], title: str):
    """Distilled minus CE-only F1 per size: mean over questions and seeds with its 95% interval, and each seed."""
    gains = sorted(result["gains"], key=lambda g: g["params_m"])
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    xs = list(range(len(gains)))
    for i, g in zip(xs, gains):
        _gain_bar(ax, i, g["f1_gain"], g["f1_gain_ci95_low"], g["f1_gain_ci95_high"], g["f1_gain_per_seed"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(xs, [f"{g['layers']} layers\n{g['params_m']:.0f} M" for g in gains])
    ax.set_ylabel("F1 points, distilled minus CE-only")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def signal_gains(result: dict[str, Any], title: str):
    """Per size, each arm's F1 minus the CE-only arm's: mean over questions and seeds, 95% interval over questions,
    each seed as a dot; the bar's label is the arm's share of the teacher's F1."""
    sizes = sorted({r["layers"] for r in result["arms"]}, reverse=True)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False, sharey=True)
    for ax, layers in zip(axes[0], sizes):
        rows = [r for r in result["arms"] if r["layers"] == layers and "gain_f1" in r]
        for i, r in enumerate(rows):
            _gain_bar(ax, i, r["gain_f1"], r["gain_ci95_low"], r["gain_ci95_high"], r["gain_per_seed"])
            ax.annotate(f"keeps {100 * r['kept_f1']:.0f}%", (i, r["gain_ci95_high"]), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
        share = rows[0]["params_share"] if rows else float("nan")
        ax.set_title(f"{layers} layers ({100 * share:.0f}% of the parameters)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"F1 points minus {result['baseline_arm']}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def fourbit_fidelity(fourbit: dict[str, Any], students: list[dict[str, Any]], title: str,
                     teachers: list[dict[str, Any]] | None = None):
    """Left: each 4-bit teacher's KL from the float32 teacher per answer token (bars: mean, ticks: 90th
    percentile) at each temperature. Right: its students' F1 minus the float32 teacher's students', 95% interval
    over questions, each seed as a dot; in a run without students, each 4-bit teacher's own F1 minus float32's
    (`teachers`: fourbit_report.teacher_differences)."""
    fid = [r for r in fourbit["fidelity"] if r["teacher"] != "float32"]
    precisions = list(dict.fromkeys(r["teacher"] for r in fid))
    temps = sorted({r["temperature"] for r in fid})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    width = 0.8 / max(len(temps), 1)
    for j, t in enumerate(temps):
        rows = [next(r for r in fid if r["teacher"] == p and r["temperature"] == t) for p in precisions]
        xs = [i + (j - (len(temps) - 1) / 2) * width for i in range(len(precisions))]
        left.bar(xs, [r["kl_mean"] for r in rows], width=width * 0.9, label=f"T {t:g}", color=PALETTE[j % len(PALETTE)])
        left.scatter(xs, [r["kl_p90"] for r in rows], marker="_", s=200, color="#333333", zorder=3)
    left.set_xticks(range(len(precisions)), precisions, fontsize=8)
    left.set_ylabel("KL(float32 || 4-bit), nats per answer token")
    left.set_title("The teacher's distribution (bars: mean; ticks: p90)", fontsize=9)
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    if students:
        for i, s in enumerate(students):
            _gain_bar(right, i, s["f1_diff"], s["f1_diff_ci95_low"], s["f1_diff_ci95_high"], s["f1_diff_per_seed"])
        right.set_xticks(range(len(students)), [f"{s['teacher']}\n{s['layers']} layers" for s in students], fontsize=8)
        right.set_ylabel("student F1 minus float32-taught")
        right.set_title("What the student inherits", fontsize=9)
    else:
        for i, t in enumerate(teachers or []):
            _gain_bar(right, i, t["f1_diff"], t["f1_diff_ci95_low"], t["f1_diff_ci95_high"], [])
        right.set_xticks(range(len(teachers or [])), [t["teacher"] for t in teachers or []], fontsize=8)
        right.set_ylabel("teacher F1 minus float32 (95% CI)")
        right.set_title("The teacher's answers (no students in this run)", fontsize=9)
    right.axhline(0, color="black", linewidth=0.8)
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
