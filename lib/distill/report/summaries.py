"""The answer first: each report's opening summary, written from the numbers that report just produced.

Every notebook ends with a cell tagged `summary` that shows one of these (Markdown) and its main chart;
the HTML renderer moves that cell to the top of the page, so a reader gets the finding before any detail.
An interval that spans 0 is called unresolved, never a gain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.report.results import BASELINE, BEFORE, DISTILLED, TEACHER, versus_teacher


def show(markdown: str, chart: Path | None = None) -> None:
    """Display a summary (and its chart) in the notebook; the renderer moves this cell to the top."""
    from IPython.display import Image, Markdown, display  # notebook tooling: only a kernel has it

    display(Markdown(markdown))
    if chart is not None and Path(chart).exists():
        display(Image(filename=str(chart)))


def interval(mean: float, low: float, high: float, digits: int = 1, unit: str = "") -> str:
    """"+2.1 [-3.1, +7.3] (unresolved)": the verdict is part of the number."""
    verdict = ("no interval" if low != low or high != high else
               "unresolved: the interval spans 0" if low <= 0 <= high else "resolved")
    return f"{mean:+.{digits}f}{unit} [{low:+.{digits}f}, {high:+.{digits}f}] ({verdict})"


def teacher(scores: dict[str, dict[str, Any]], tuning: dict[str, Any] | None, student: dict[str, Any] | None) -> str:
    """00_teacher: how good the teacher is before and after its SQuAD fine-tune, and the student cut from it."""
    zero = scores["zero-shot"]
    tuned = scores.get("fine-tuned")
    n = zero["n_examples"]
    if tuned is None:
        lines = [f"**The teacher, as it comes, answers F1 {zero['f1']:.1f} / EM {zero['exact_match']:.1f}** on {n} "
                 f"SQuAD v1.1 validation questions (teacher-forced answer loss {zero['answer_loss']:.2f} nats); "
                 "the study distils from it unchanged."]
    else:
        lines = [f"**The tuned teacher answers F1 {tuned['f1']:.1f} / EM {tuned['exact_match']:.1f}** on {n} SQuAD v1.1 "
                 f"validation questions, against F1 {zero['f1']:.1f} / EM {zero['exact_match']:.1f} as it came."]
        if tuning:
            lines.append(f"Its fine-tune ({tuning['examples']} SQuAD train examples, {tuning['steps']} steps) taught it "
                         f"the span format: teacher-forced answer loss {zero['answer_loss']:.2f} -> "
                         f"{tuned['answer_loss']:.2f} nats.")
    if student:
        share = student["params_m"] / student["teacher_params_m"]
        lines.append(f"**The student keeps {student['layers']} of the teacher's {student['teacher_layers']} layers: "
                     f"{student['params_m']:.1f} M of {student['teacher_params_m']:.1f} M parameters "
                     f"({student['teacher_params_m'] / student['params_m']:.2f}x smaller, {100 * share:.0f}%).** Before "
                     f"any training its answer loss is {student['answer_loss']:.2f} nats: training has that gap to "
                     "close.")
    return "\n\n".join(lines)


def recipe(p) -> str:
    """The training loss in words, from the params."""
    terms = [f"{p.alpha_ce:g} x CE on the gold answer"]
    if p.gamma_kl:
        source = f"{p.teacher_cache} teacher cache, k {p.teacher_cache_k}" if p.uses_teacher_cache else "live teacher"
        terms.append(f"{p.gamma_kl:g} x {p.kd_kind} (T {p.temperature:g}, {source}) on {p.distill_positions} positions")
    if p.beta_mse:
        terms.append(f"{p.beta_mse:g} x hidden-state {p.hidden_loss}")
    adapter = f"LoRA r {p.lora_r}" if p.use_lora else "full student"
    return " + ".join(terms) + f"; {adapter}, learning rate {p.learning_rate:g}, batch {p.batch_size} x {p.grad_accum_steps}" + \
        (f" per process on {p.num_processes} processes ({p.batch_size * p.grad_accum_steps * p.num_processes} "
         "examples per step)" if p.num_processes > 1 else "")


def training(p, history: list[dict[str, Any]], best_step: int | None, best_loss: float | None, examples: int,
             steps: int) -> str:
    """01_distill: where the eval answer loss went and which checkpoint was kept."""
    run_name, variant = p.run_name, p.variant
    evals = [e for e in history if "eval_loss" in e and "eval_ce" in e]
    who = "distilled student" if variant == "distilled" else "CE-only student"
    lines = [f"**The {who} of `{run_name}` trained {steps} steps on {examples} examples; the kept checkpoint "
             f"(step {best_step}) has eval answer CE {best_loss:.3f} nats**" if best_loss is not None else
             f"**The {who} of `{run_name}` trained {steps} steps on {examples} examples** (no eval set: the last "
             "step is kept)"]
    if evals:
        first, last = evals[0], evals[-1]
        lines[0] += (f" (first eval, step {first['step']}: {first['eval_ce']:.3f}; last, step {last['step']}: "
                     f"{last['eval_ce']:.3f}).")
    else:
        lines[0] += "."
    lines.append(f"Loss: {recipe(p)}. Whether the teacher helped is the benchmark's question (03), over seeds.")
    return "\n\n".join(lines)


def merge(merges: list[dict[str, Any]], deploy: str) -> str:
    """02_merge: whether each merged student reproduces its adapter model, and where the deployable one lies."""
    ok = all(max(m["max_abs_logit_diff"], m["reloaded_max_abs_logit_diff"]) <= m["tolerance"] for m in merges)
    worst = max(max(m["max_abs_logit_diff"], m["reloaded_max_abs_logit_diff"]) for m in merges)
    verdict = "reproduce" if ok else "do NOT reproduce"
    lines = [f"**The merged students {verdict} their adapter models: the largest logit change is {worst:.1e}, "
             f"{'under' if ok else 'over'} the tolerance {merges[0]['tolerance']:.0e}**, for the merged model in "
             "memory and for the saved folder loaded alone."]
    sizes = {m["variant"]: m.get("size_mb") for m in merges}
    if sizes.get("distilled"):
        lines.append(f"The distilled student is a standalone model in `{deploy}` ({sizes['distilled']:,.0f} MB): "
                     "`AutoModelForCausalLM.from_pretrained` loads it without peft.")
    return "\n\n".join(lines)


def benchmark(df, sweep_pair: dict[str, Any] | None, sweep_note: str, meta: dict[str, Any]) -> str:
    """03_benchmark: size and speed, EM/F1 of every model, and what distillation adds with its interval."""
    def v(model: str, col: str) -> float:
        return float(df.loc[model, col])

    def vs(col: str) -> str:
        return versus_teacher(col, v(DISTILLED, col), v(TEACHER, col))

    kept = (f", and keeps {100 * v(DISTILLED, 'f1') / v(TEACHER, 'f1'):.0f}% of its F1" if v(TEACHER, "f1")
            else "; the teacher scores F1 0, so no share of it can be kept")
    lines = [f"**The distilled student is {vs('params_m')} than the teacher and {vs('latency_batch1_ms_median')} "
             f"per question (one at a time, median {v(DISTILLED, 'latency_batch1_ms_median'):,.0f} vs "
             f"{v(TEACHER, 'latency_batch1_ms_median'):,.0f} ms), {vs('throughput_examples_per_s')} in batches of "
             f"{meta['batch_size']}{kept}.**"]
    scores = "; ".join(f"{name} {v(name, 'f1'):.1f} / {v(name, 'exact_match'):.1f}"
                       for name in (TEACHER, DISTILLED, BASELINE, BEFORE) if name in df.index)
    lines.append(f"SQuAD F1 / EM on {meta['n_examples']} validation questions: {scores}.")
    if sweep_pair:
        lines.append(f"**Distilled minus CE-only over {sweep_pair['paired_seeds']} seeds** (sweep, same base models, "
                     f"95% t interval): F1 {interval(sweep_pair['f1_diff_mean'], sweep_pair['f1_diff_ci95_low'], sweep_pair['f1_diff_ci95_high'])}; "
                     f"EM {interval(sweep_pair['exact_match_diff_mean'], sweep_pair['exact_match_diff_ci95_low'], sweep_pair['exact_match_diff_ci95_high'])}; "
                     f"answer loss {interval(sweep_pair['answer_loss_diff_mean'], sweep_pair['answer_loss_diff_ci95_low'], sweep_pair['answer_loss_diff_ci95_high'], 3, ' nats')}.")
        if sweep_pair.get("f1_q_questions", 0) >= 2:
            lines.append(f"**Paired question by question** (each question's difference averaged over the seeds, 95% t "
                         f"interval over the {sweep_pair['f1_q_questions']} questions): F1 "
                         f"{interval(sweep_pair['f1_q_gain'], sweep_pair['f1_q_ci95_low'], sweep_pair['f1_q_ci95_high'])}.")
    else:
        gap = v(DISTILLED, "f1") - v(BASELINE, "f1")
        lines.append(f"Distilled minus CE-only in this one run: F1 {gap:+.1f}, **unresolved**: one seed's gap is not "
                     f"a finding ({sweep_note}).")
    lines.append(f"Latency is per request, one question at a time (batch 1), the median over "
                 f"{meta.get('latency_prompts', '?')} questions; the seed's table timed one example at a time, so its "
                 "latency compares with this row. Throughput is the batched setting.")
    return "\n\n".join(lines)
