"""Could two runs be bit-identical, and are they? The machine a run ran on, and two runs' reports side by side.

`machine_info()` records what decides whether two runs can give the same bits: the CPU and the instruction-set
extensions torch's kernels pick between (an AVX-512 matmul sums in another order than an AVX2 one), the kernel
capability torch chose, its thread counts (a reduction split over 2 threads rounds differently from one over 16),
oneDNN/MKL, the OS, and the GPU and cuDNN where there is one. The runner stores it in manifest.json as "machine".

`compare_runs(a, b)` reads two report folders (reports/<run>/: results.json, manifest.json, and
sweeps/summary.json when the run has a seed sweep; a capacity grid's folder holds capacity.json instead, whose
records are compared as models named "<variant> <layers> layers seed <seed>") and judges every number both runs
scored:

- identical: the same float, bit for bit;
- float noise: within a relative 1e-9 (summation order, a library's last bit);
- within seed spread: no further apart than changing the seed moves it: |B - A| <= 2 sqrt(2) sd, where sd is the
  sample standard deviation over seeds that a sweep summary of either run records for that student and score
  (the difference of two seeds' scores has sd sqrt(2) sd; two of those is a ~95% band). Sweeps record the spread
  of the four scores (answer loss, top-1, EM, F1) of the trained students only; summary.json holds mean and sd per
  setting, not the per-seed values;
- differs: anything else.

Timing and memory measurements (latency, throughput, wall time, RSS, peak memory) are compared and shown but
never enter the verdict: no two runs measure the same milliseconds. Per-question answers are compared too: a
run whose scores agree but whose answers do not is not a reproduction.

The verdict is the worst of the scored numbers: "identical", "within float tolerance", "within seed spread" or
"differ". Beside it, what differs between the two manifests that could explain a difference: params (but the
run's name and folders), package versions, machine and device fields, the git commit, and the results' setup.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core import paths

# --- the machine ---------------------------------------------------------------------------------------------------

# /proc/cpuinfo flags that change which float kernels torch (ATen, oneDNN, MKL) runs, hence the rounding
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
             # aarch64 spells them "Features"
             "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")
# environment variables that change torch's threads, kernels or determinism, recorded when set
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA",
              "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", []) where there is none."""
    model, flags = "", []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not model and key in ("model name", "hardware", "cpu model", "processor") and not value.strip().isdigit():
            model = value.strip()
        elif not flags and key in ("flags", "features"):
            flags = value.split()
        if model and flags:
            break
    return model, flags


def machine_info() -> dict[str, Any]:
    """What decides whether two runs can be bit-identical, as a flat dict of plain values. Never raises: a probe that
    fails leaves its field None (torch missing, no /proc, no GPU)."""
    info: dict[str, Any] = {}

    def probe(key: str, fn) -> None:
        try:
            info[key] = fn()
        except Exception:  # noqa: BLE001 - a missing probe must never stop a run
            info[key] = None

    model, flags = _cpuinfo()
    info["cpu_model"] = model or (platform.processor() or platform.machine() or None)
    probe("arch", platform.machine)
    probe("logical_cores", os.cpu_count)
    probe("usable_cores", lambda: len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    present = set(flags)
    info["cpu_flags"] = [f for f in CPU_FLAGS if f in present]
    probe("platform", platform.platform)
    try:
        import torch  # heavy: only the machine record needs it
    except Exception:  # noqa: BLE001
        torch = None
    if torch is None:
        for key in ("torch_cpu_capability", "torch_threads", "torch_interop_threads", "mkldnn", "mkl",
                    "deterministic_algorithms", "cuda"):
            info[key] = None
    else:
        probe("torch_cpu_capability", lambda: torch.backends.cpu.get_cpu_capability())
        probe("torch_threads", torch.get_num_threads)
        probe("torch_interop_threads", torch.get_num_interop_threads)
        probe("mkldnn", lambda: bool(torch.backends.mkldnn.is_available()))
        probe("mkl", lambda: bool(torch.backends.mkl.is_available()))
        probe("deterministic_algorithms", lambda: bool(torch.are_deterministic_algorithms_enabled()))
        probe("cuda", lambda: bool(torch.cuda.is_available()))
        if info.get("cuda"):
            probe("gpu", lambda: torch.cuda.get_device_name(0))
            probe("gpu_capability", lambda: ".".join(map(str, torch.cuda.get_device_capability(0))))
            probe("gpu_count", torch.cuda.device_count)
            probe("cuda_version", lambda: torch.version.cuda)
            probe("cudnn", lambda: torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
            probe("tf32_matmul", lambda: bool(torch.backends.cuda.matmul.allow_tf32))
            probe("tf32_cudnn", lambda: bool(torch.backends.cudnn.allow_tf32))
    info["thread_env"] = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    return info


# --- two runs ------------------------------------------------------------------------------------------------------

REL_TOL, ABS_TOL = 1e-9, 1e-12
SPREAD_K = 2 * math.sqrt(2)  # |B - A| <= SPREAD_K * sd: two sds of the difference between two seeds' scores
IDENTICAL, TOLERANCE, SPREAD, DIFFER = "identical", "within float tolerance", "within seed spread", "differ"
VERDICTS = (IDENTICAL, TOLERANCE, SPREAD, DIFFER)  # best to worst
# a row's status, in the same order
ROW_STATUS = {IDENTICAL: "identical", TOLERANCE: "float noise", SPREAD: "within seed spread", DIFFER: "differs"}
MAX_ROWS = 30  # the text's table; the Comparison keeps every row
EXIT_CODES = {IDENTICAL: 0, TOLERANCE: 0, SPREAD: 1, DIFFER: 3}  # 2 is the CLI's "bad input", as elsewhere

# timed or measured per process: compared and shown, never in the verdict
MEASURED = {"latency_ms_per_example", "throughput_examples_per_s", "generation_seconds", "latency_batch1_ms_median",
            "latency_batch1_ms_p90", "latency_batch1_fixed_ms_median", "latency_batch1_fixed_ms_p90",
            "runtime_rss_mb", "peak_memory_mb", "wall_s"}
_MEASURED_RE = re.compile(r"(_ms(_|$)|throughput|seconds$|(^|_)wall_s$|rss_mb$|^peak_memory)")
# manifest params that name the run or its folders: they differ between any two runs and explain nothing
PARAMS_IGNORED = {"run_name", "output_dir", "deploy_dir", "base_run_dir"}
# results.json meta fields that are not the scoring setup
META_IGNORED = {"run_name", "runtime_rss_mb", "question_ids"}
# per-model fields that are not numbers to compare (the answers are compared by question id)
MODEL_LISTS = {"raw_generations", "predictions", "question_ids", "references",
               "f1_per_question", "em_per_question"}  # per question: they follow from the answers, compared below
# results.json model name -> sweep variant, for the names results.py writes (a model's own "model" key wins)
SWEEP_VARIANTS = {"teacher": "teacher", "student (before training)": "student_before", "CE-only student": "ce_baseline",
                  "distilled student": "distilled"}


def is_measured(metric: str) -> bool:
    return metric in MEASURED or bool(_MEASURED_RE.search(metric)) and not metric.endswith("_prompts")


@dataclass
class MetricRow:
    """One number both runs recorded for one model."""
    model: str
    metric: str
    a: float
    b: float
    status: str  # one of VERDICTS
    sd: float | None = None  # the seed spread it was judged against, where a sweep records one
    in_verdict: bool = True  # False for timing and memory measurements

    @property
    def diff(self) -> float:
        return self.b - self.a

    @property
    def rel(self) -> float:
        scale = max(abs(self.a), abs(self.b))
        return abs(self.diff) / scale if scale else 0.0


@dataclass
class AnswerDiff:
    """How many of a model's answers differ between the runs, over the question ids both scored."""
    model: str
    differ: int
    compared: int
    only_one: int = 0  # question ids one run scored and the other did not
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (question id, A's answer, B's answer)


@dataclass
class EnvDifference:
    """One recorded fact about how the runs were made that differs: section.key: a -> b."""
    section: str
    key: str
    a: Any
    b: Any

    def __str__(self) -> str:
        return f"{self.section}.{self.key}: {_show(self.a)} -> {_show(self.b)}" if self.key else \
            f"{self.section}: {_show(self.a)} -> {_show(self.b)}"


@dataclass
class Comparison:
    a: Path
    b: Path
    verdict: str
    rows: list[MetricRow]
    answers: list[AnswerDiff]
    environment: list[EnvDifference]
    spread: str = ""  # where the seed spread came from ("" without a sweep)
    # what could not be compared: a model or number one run lacks, a non-number, an unreadable or partial file;
    # each one is a difference (the runs are never said to agree past one)
    gaps: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # what the records cannot rule out (uncommitted changes)

    @property
    def scored(self) -> list[MetricRow]:
        return [r for r in self.rows if r.in_verdict]

    @property
    def measured(self) -> list[MetricRow]:
        return [r for r in self.rows if not r.in_verdict]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.scored)


def _show(v: Any) -> str:
    if v is None:
        return "(not recorded)"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, sort_keys=True, default=str)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(v)


def _raw(v: Any) -> str:
    """A value as the JSON file holds it (null, "high", {...}), cut short."""
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _report_folder(path: Path | str, label: str) -> Path:
    """The report folder `path` names (a folder, its results.json, or a run name under reports/); ValueError else."""
    p = Path(path)
    if not p.exists() and len(p.parts) == 1 and (paths.REPORTS_DIR / p).is_dir():
        p = paths.REPORTS_DIR / p
    if p.is_file() and p.name == "results.json":
        p = p.parent
    if not p.exists():
        raise ValueError(f"run {label}: {p} does not exist; give reports/<run> folders (e.g. reports/smoke)")
    if not p.is_dir():
        raise ValueError(f"run {label}: {p} is a file, not a report folder; give reports/<run> folders")
    if not (p / "results.json").is_file() and not (p / CAPACITY_FILE).is_file():
        raise ValueError(f"run {label}: {p / 'results.json'} not found (nor a capacity grid's {CAPACITY_FILE}): run "
                         "`make study` first (or give reports/<run> folders of finished runs)")
    return p


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))  # json reads the NaN a summary writes for one seed


CAPACITY_FILE = "capacity.json"  # what a capacity grid's report folder holds in place of results.json


def _load_results(folder: Path, label: str) -> dict[str, Any]:
    """results.json, or a capacity grid's capacity.json as results: one model per record, its scoring setup the
    questions every record was scored on."""
    if not (folder / "results.json").is_file():
        return _load_capacity(folder / CAPACITY_FILE, label)
    f = folder / "results.json"
    try:
        data = _load_json(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"run {label}: {f} is not readable JSON ({err}); run `make study` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ValueError(f"run {label}: {f} has no 'models'; it is not a study's results.json: give reports/<run> "
                         "folders")
    return data


def _load_capacity(f: Path, label: str) -> dict[str, Any]:
    try:
        data = _load_json(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"run {label}: {f} is not readable JSON ({err}); run `make capacity` again") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"run {label}: {f} has no 'records'; it is not a capacity grid's capacity.json")
    models = {f"{r.get('variant')} {r.get('layers')} layers seed {r.get('seed')}": r for r in records}
    meta = {k: data[k] for k in ("n_questions", "question_ids") if k in data} or None
    return {"models": models, "meta": meta}


def _load_optional(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object, "") or (None, why not)."""
    if not path.is_file():
        return None, "missing"
    try:
        data = _load_json(path)
    except (OSError, ValueError) as err:
        return None, f"unreadable ({err})"
    return (data, "") if isinstance(data, dict) else (None, "not a JSON object")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def seed_spread(summary: dict[str, Any] | None) -> dict[tuple[str, str], tuple[float, int, str]]:
    """{(variant, score): (sd, seeds, sweep)} from a sweep summary.json: the sweep named "default" where it has the
    variant, else the first setting without overrides; only finite sds over at least two seeds."""
    out: dict[tuple[str, str], tuple[float, int, str]] = {}
    rows = (summary or {}).get("summary") or []
    rows = [r for r in rows if isinstance(r, dict) and r.get("sweep") != "reference"
            and r.get("overrides", "{}") in ("{}", {}, None)]
    rows.sort(key=lambda r: r.get("sweep") != "default")  # "default" first, otherwise as written
    for r in rows:
        seeds = int(r.get("seeds") or 0)
        for key, sd in r.items():
            if not key.endswith("_sd") or not _is_number(sd) or math.isnan(sd) or seeds < 2:
                continue
            out.setdefault((str(r.get("variant")), key[:-3]), (float(sd), seeds, str(r.get("sweep"))))
    return out


def _judge(a: float, b: float, sd: float | None) -> str:
    if _same(a, b):
        return IDENTICAL
    if _is_number(a) and _is_number(b) and math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL):
        return TOLERANCE
    if sd is not None and abs(b - a) <= SPREAD_K * sd:
        return SPREAD
    return DIFFER


def _answers(model: str, ra: dict[str, Any], rb: dict[str, Any]) -> AnswerDiff | None:
    pa, pb = ra.get("predictions"), rb.get("predictions")
    ia, ib = ra.get("question_ids"), rb.get("question_ids")
    if isinstance(pa, dict) and isinstance(pb, dict):  # {question id: answer}, as a capacity cell's scores hold them
        da, db = pa, pb
    elif not isinstance(pa, list) or not isinstance(pb, list):
        return None
    elif isinstance(ia, list) and isinstance(ib, list) and len(ia) == len(pa) and len(ib) == len(pb):
        da, db = dict(zip(ia, pa)), dict(zip(ib, pb))
    else:  # no ids: by position
        da, db = dict(enumerate(pa)), dict(enumerate(pb))
    both = [q for q in da if q in db]
    differ = [q for q in both if da[q] != db[q]]
    return AnswerDiff(model, len(differ), len(both), len(set(da) ^ set(db)),
                      [(str(q), str(da[q]), str(db[q])) for q in differ[:3]])


def _dict_diff(section: str, a: dict[str, Any] | None, b: dict[str, Any] | None,
               ignore: set[str] = frozenset()) -> list[EnvDifference]:
    if a is None and b is None:
        return []
    if a is None or b is None:
        return [EnvDifference(section, "", "recorded" if a is not None else None,
                              "recorded" if b is not None else None)]
    return [EnvDifference(section, k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=str)
            if k not in ignore and a.get(k) != b.get(k)]


def environment_differences(ma: dict[str, Any] | None, mb: dict[str, Any] | None, meta_a: dict[str, Any],
                            meta_b: dict[str, Any]) -> list[EnvDifference]:
    """What the two manifests (and the results' setup) record differently that could explain a difference."""
    out: list[EnvDifference] = []
    if (ma is None) != (mb is None):  # (neither recorded: a caveat of compare_runs, not a difference)
        out.append(EnvDifference("manifest.json", "", "recorded" if ma is not None else None,
                                 "recorded" if mb is not None else None))
    ma, mb = ma or {}, mb or {}
    if ma and mb:
        out += _dict_diff("params", ma.get("params"), mb.get("params"), PARAMS_IGNORED)
        if not isinstance(ma.get("params"), dict) and ma.get("seed") != mb.get("seed"):
            out.append(EnvDifference("seed", "", ma.get("seed"), mb.get("seed")))
        out += _dict_diff("packages", ma.get("packages"), mb.get("packages"))
        out += _dict_diff("machine", ma.get("machine"), mb.get("machine"))
        if not (ma.get("machine") and mb.get("machine")):  # the older, coarser record; `machine` covers it
            out += _dict_diff("device", ma.get("device"), mb.get("device"))
        ga, gb = ma.get("git") or {}, mb.get("git") or {}
        out += [EnvDifference("git", k, ga.get(k), gb.get(k)) for k in ("commit", "dirty") if ga.get(k) != gb.get(k)]
    out += _dict_diff("results setup", meta_a, meta_b, META_IGNORED)
    qa, qb = meta_a.get("question_ids"), meta_b.get("question_ids")
    if isinstance(qa, list) and isinstance(qb, list) and qa != qb:
        shared = len(set(qa) & set(qb))
        out.append(EnvDifference("results setup", "question_ids", f"{len(qa)} questions",
                                 f"{len(qb)} questions, {shared} of them shared" if set(qa) != set(qb)
                                 else f"the same {len(qb)} in another order"))
    return out


def compare_runs(a: Path, b: Path) -> Comparison:
    """Every metric of every model both report folders' results.json record, judged identical, float noise, within
    the seed spread of a sweep either run has, or different; answers by question id; and the manifests' differences.

    `a` and `b` are reports/<run> folders (a folder's results.json, or a bare run name under reports/, also do).
    ValueError, one line naming the path and the fix, when a folder or its results.json is missing."""
    fa, fb = _report_folder(a, "A"), _report_folder(b, "B")
    ra, rb = _load_results(fa, "A"), _load_results(fb, "B")
    sweeps = {}
    for label, folder in (("A", fa), ("B", fb)):
        summary, _ = _load_optional(folder / "sweeps" / "summary.json")
        if summary:
            sweeps[label] = seed_spread(summary)
    rows: list[MetricRow] = []
    answers: list[AnswerDiff] = []
    gaps: list[str] = []
    used_spread: set[str] = set()
    for label, folder in (("A", fa), ("B", fb)):
        why = _load_optional(folder / "sweeps" / "summary.json")[1]
        if why and why != "missing":
            gaps.append(f"run {label}'s sweeps/summary.json is {why}")
    ma_models, mb_models = ra["models"], rb["models"]
    gaps += [f"run {label} records no models" for label, m in (("A", ma_models), ("B", mb_models)) if not m]
    for only, label in ((set(ma_models) - set(mb_models), "A"), (set(mb_models) - set(ma_models), "B")):
        gaps += [f"model {m!r} only in run {label}" for m in sorted(only, key=str)]
    for model in [m for m in ma_models if m in mb_models]:
        xa, xb = ma_models[model], mb_models[model]
        if not isinstance(xa, dict) or not isinstance(xb, dict):
            gaps += [f"{model}: {_raw(x)} in run {label}, not a model's record"
                     for label, x in (("A", xa), ("B", xb)) if not isinstance(x, dict)]
            continue
        variant = str(xa.get("model") or SWEEP_VARIANTS.get(model, model))
        for only, label in ((set(xa) - set(xb), "A"), (set(xb) - set(xa), "B")):
            gaps += [f"{model}: {m} only in run {label}" for m in sorted(only, key=str)]
        for metric in [m for m in xa if m in xb]:
            va, vb = xa[metric], xb[metric]
            if metric in MODEL_LISTS:
                gaps += [f"{model}: {metric} is {_raw(v)} in run {label}, not a list"
                         for label, v in (("A", va), ("B", vb)) if not isinstance(v, (list, dict))]
                continue
            if isinstance(va, str) and isinstance(vb, str):
                continue  # setup words (device, disk_kind): listed with the environment below
            if not (_is_number(va) and _is_number(vb)):
                gaps += [f"{model}: {metric} is {_raw(v)} in run {label}, not a number"
                         for label, v in (("A", va), ("B", vb)) if not _is_number(v)]
                continue
            measured = is_measured(metric)
            # where both runs have a sweep, the wider spread of the two
            spread = max(((*sweeps[s][(variant, metric)], s) for s in sweeps if (variant, metric) in sweeps[s]),
                         default=None)
            sd = spread[0] if spread and not measured else None
            status = _judge(va, vb, sd)
            if status == SPREAD:
                used_spread.add(f"{spread[1]}-seed sweep '{spread[2]}' of run {spread[3]}")
            rows.append(MetricRow(model, metric, va, vb, status, sd, not measured))
        ans = _answers(model, xa, xb)
        if ans is not None:
            answers.append(ans)
    for label, r in (("A", ra), ("B", rb)):
        if not isinstance(r.get("meta"), dict):
            gaps.append(f"run {label}'s results.json has no scoring setup ('meta'): a partial file")
    scored = [r for r in rows if r.in_verdict]
    worst = max((VERDICTS.index(r.status) for r in scored), default=0)
    verdict = VERDICTS[worst]
    if verdict in (IDENTICAL, TOLERANCE) and any(x.differ for x in answers):
        verdict = DIFFER  # the same scores from other answers is not a reproduction
    ma, why_a = _load_optional(fa / "manifest.json")
    mb, why_b = _load_optional(fb / "manifest.json")
    gaps += [f"run {label}'s manifest.json is {why}" for label, why in (("A", why_a), ("B", why_b))
             if why and why != "missing"]
    if gaps:
        verdict = DIFFER  # what was not compared cannot be vouched for
    env = environment_differences(ma, mb, ra.get("meta") or {}, rb.get("meta") or {})
    for model in [m for m in ma_models if m in mb_models]:  # per-model setup strings (device, disk kind)
        xa, xb = ma_models[model], mb_models[model]
        if isinstance(xa, dict) and isinstance(xb, dict):
            env += [EnvDifference(f"results[{model}]", k, xa[k], xb.get(k)) for k in xa
                    if isinstance(xa[k], str) and k in xb and xa[k] != xb[k]]
    caveats = []
    if ma is None and mb is None:
        caveats.append("neither run has a manifest.json: their params, packages and machines were not compared")
    ga, gb = (ma or {}).get("git") or {}, (mb or {}).get("git") or {}
    if ga.get("dirty") or gb.get("dirty"):
        which = "both runs were" if ga.get("dirty") and gb.get("dirty") else f"run {'A' if ga.get('dirty') else 'B'} was"
        caveats.append(f"{which} made with uncommitted changes, which no manifest records: the same commit need not "
                       "be the same code")
    for which, m in (("A", ma), ("B", mb)):
        if m and m.get("status") not in (None, "ok"):
            caveats.append(f"run {which}'s manifest says {m['status']!r}: its results.json may be an earlier run's")
    spread_text = "; ".join(sorted(used_spread)) if used_spread else \
        "; ".join(f"sweep summary of run {s}" for s in sweeps)
    return Comparison(fa, fb, verdict, rows, answers, env, spread_text, gaps, caveats)


def exit_code(c: Comparison) -> int:
    """The CLI's exit status for a comparison:

    0  identical, or within float tolerance: the run reproduces;
    1  within seed spread: not a reproduction, but no further apart than changing the seed moves the scores;
    3  differ: beyond float noise and beyond the seed spread (or no sweep to judge the spread by), or the same
       scores from other answers.
    (2 stays what the rest of the CLI means by it: bad input, e.g. a missing folder or results.json.)"""
    return EXIT_CODES[c.verdict]


def _names(c: Comparison) -> tuple[str, str]:
    na, nb = c.a.name, c.b.name
    return (na, nb) if na != nb else (str(c.a), str(c.b))


def _fmt(v: float) -> str:
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def format_comparison(c: Comparison) -> str:
    """A short text: the verdict in words on the first line, the differing scores as a table, the answers that
    differ, the timing summary, then what the manifests record differently."""
    na, nb = _names(c)
    scored, n = c.scored, len(c.scored)
    same, noise, spread, differ = (c.count(v) for v in VERDICTS)
    n_ans = sum(x.compared for x in c.answers)
    d_ans = sum(x.differ for x in c.answers)
    if n_ans:
        answers = f"{n_ans - d_ans} of {n_ans} answers the same"
    else:
        answers = "no question answered by both" if any(x.only_one for x in c.answers) else "no answers recorded"
    if c.gaps:
        shown = "; ".join(c.gaps[:2]) + (f"; and {len(c.gaps) - 2} more" if len(c.gaps) > 2 else "")
        head = (f"runs {na} and {nb} cannot be said to agree: {len(c.gaps)} thing(s) could not be compared "
                f"({shown}); of the {n} numbers compared, {same} identical")
    elif c.verdict == IDENTICAL:
        head = f"runs {na} and {nb} agree exactly: {same} of {n} numbers identical, {answers}"
    elif c.verdict == TOLERANCE:
        worst = max((r for r in scored if r.status == TOLERANCE), key=lambda r: r.rel)
        head = (f"runs {na} and {nb} agree within float tolerance: {same} of {n} numbers identical, {noise} within "
                f"rel {REL_TOL:g} (largest rel {worst.rel:.1e}, {worst.metric} of {worst.model}), {answers}")
    elif c.verdict == SPREAD:
        head = (f"runs {na} and {nb} differ, but within the seed spread: {same} of {n} numbers identical, "
                f"{noise} float noise, {spread} within {SPREAD_K:.2f} sd of the seeds ({c.spread}); {answers}")
    else:
        if differ:
            head = (f"runs {na} and {nb} differ: {differ} of {n} numbers differ beyond float noise and the seed spread"
                    f"{'' if c.spread else ' (no seed sweep on record to judge the spread)'}, {same} identical; "
                    f"{answers}")
        else:
            head = f"runs {na} and {nb} differ: the numbers agree, but {d_ans} of {n_ans} answers differ"
    lines = [head]
    bad = [r for r in scored if r.status != IDENTICAL]
    if bad:
        lines += ["", f"{'model':26} {'metric':30} {na[:16]:>16} {nb[:16]:>16} {'B - A':>12} {'seed sd':>9}  status"]
        bad.sort(key=lambda r: VERDICTS.index(r.status), reverse=True)
        for r in bad[:MAX_ROWS]:
            sd = f"{r.sd:.4g}" if r.sd is not None else "-"
            lines.append(f"{r.model[:26]:26} {r.metric[:30]:30} {_fmt(r.a):>16} {_fmt(r.b):>16} {r.diff:>+12.4g} "
                         f"{sd:>9}  {ROW_STATUS[r.status]}")
        if len(bad) > MAX_ROWS:
            lines.append(f"... and {len(bad) - MAX_ROWS} more (Comparison.rows has them all)")
    if d_ans:
        lines += ["", "answers that differ:"]
        for x in c.answers:
            if x.differ:
                ex = "; ".join(f"{q}: {a!r} -> {b!r}" for q, a, b in x.examples)
                lines.append(f"  {x.model}: {x.differ} of {x.compared} (e.g. {ex})")
    unmatched = [x for x in c.answers if x.only_one]
    lines += [f"  {x.model}: {x.only_one} question ids scored by one run only" for x in unmatched]
    m = c.measured
    if m:
        moved = [r for r in m if r.status != IDENTICAL]
        top = max(moved, key=lambda r: r.rel, default=None)
        lines += ["", f"timing and memory (measured, never bit-reproducible, not in the verdict): {len(moved)} of "
                  f"{len(m)} differ" + (f", largest {100 * top.diff / top.a if top.a else 0:+.1f}% ({top.metric} of "
                                        f"{top.model})" if top else "")]
    if c.gaps:
        lines += ["", "not compared (each one a difference):"] + [f"  {g}" for g in c.gaps]
    lines += [""]
    lines += [f"caveat: {x}" for x in c.caveats]
    if c.environment:
        lines += ["what the two runs record differently (could explain a difference):"]
        lines += [f"  {e}" for e in c.environment]
    elif any(x.startswith("neither run has a manifest.json") for x in c.caveats):
        lines += ["what the two runs record differently: nothing in their scoring setups (no manifests to say more)"]
    else:
        lines += ["what the two runs record differently: nothing (params, packages, machine, device, git commit, "
                  "scoring setup all the same)"]
    return "\n".join(lines) + "\n"
