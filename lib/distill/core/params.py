"""The one typed schema for everything the notebooks take, and its validation.

A params YAML (or the values papermill injects into a notebook) becomes a `StudyParams`; any
unknown key, wrong type or out-of-range value raises `ParamsError` with one line that names the
key, the value given and what is allowed. Validation runs before any model loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.core import paths


class ParamsError(ValueError):
    """A params problem a user can fix; the message is one line naming the key and the fix."""


def _f(default: Any, help: str, **check: Any) -> Any:
    """A schema field: default, help text and range checks (min, max, gt, choices)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **check})
    return field(default=default, metadata={"help": help, **check})


@dataclass
class StudyParams:
    # --- the run -------------------------------------------------------------------------
    run_name: str = _f("smoke", "names the report folder reports/<run_name> and artifacts/<run_name>")
    seed: int = _f(0, "seed for data subsets, windows, init and training", min=0, max=2**32 - 1)  # NumPy seeds are 32-bit
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "where models run; auto = cuda if available")
    torch_threads: int = _f(0, "CPU threads for torch; 0 = one per free core (never oversubscribe)", min=0)
    output_dir: str = _f("", "artifacts folder of the run; empty = artifacts/<run_name>")
    deploy_dir: str = _f("", "where the merged distilled student is saved; empty = <output_dir>/deploy")
    base_run_dir: str = _f("", "folder of the run whose tuned teacher and pruned student this run trains from (set by "
                               "seed sweeps); empty = this run's own")
    variant: Literal["distilled", "ce_baseline"] = _f(
        "distilled", "which student 01_distill trains; the runner trains both (ce_baseline: gamma_kl = beta_mse = 0)")

    # --- models --------------------------------------------------------------------------
    teacher: str = _f("tiny:teacher", "hub id, local folder, gguf:<wheel>==<ver>/<file>.gguf, or tiny:<name>")
    student: str = _f("tiny:student", "hub id, local folder, tiny:<name>, or prune (built from the teacher)")
    prune_layers: list[int] = _f([], "prune: explicit teacher layers to keep (overrides prune_keep)")
    prune_keep: int = _f(0, "prune: how many teacher layers to keep, ranked by prune_method", min=0)
    prune_method: Literal["importance", "stride"] = _f(
        "importance", "prune: rank layers by measured importance or keep an even stride")
    prune_keep_full_attention: bool = _f(
        True, "prune by importance: a mixed-attention model's full-attention layers (Gemma 3: every sixth) rank right "
              "after the first and last, before the measured importance; no effect where every layer attends alike")
    model_dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "dtype of the student and unquantised teacher; float32 on CPU")
    teacher_load_in_4bit: bool = _f(False, "load the teacher NF4 4-bit with bitsandbytes")
    bnb_compute_dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "compute dtype of the 4-bit teacher's matmuls")
    bnb_double_quant: bool = _f(False, "4-bit teacher: quantise its quantisation constants too "
                                "(bnb_4bit_use_double_quant; about 0.4 bits per weight less)")

    # --- teacher preparation (notebook 00) -----------------------------------------------
    teacher_finetune: bool = _f(False, "fine-tune the teacher on SQuAD before distilling")
    teacher_finetune_use_lora: bool = _f(True, "teacher fine-tune with LoRA (merged after) or full")
    teacher_finetune_train_size: int = _f(64, "SQuAD train examples for the teacher fine-tune", min=1)
    teacher_finetune_steps: int = _f(4, "optimizer steps of the teacher fine-tune", min=1)
    teacher_finetune_lr: float = _f(1.0e-3, "peak learning rate of the teacher fine-tune", gt=0)

    # --- data ----------------------------------------------------------------------------
    squad_dir: str = _f("", "local SQuAD v1.1 folder; empty = $SQUAD_DIR, then ../shared/data/squad, then the hub")
    data_pool_rows: int = _f(0, "read only the first N rows of each split (0 = all); keeps smoke fast", min=0)
    train_size: int = _f(32, "SQuAD train examples the student trains on", min=1)
    eval_size: int = _f(8, "held-out train examples for the eval loss during training", min=1)
    bench_size: int = _f(8, "validation questions scored in the benchmark (EM/F1)", min=1)
    max_length: int = _f(128, "tokens per example; long contexts are windowed around the answer", min=16)
    recovery_size: int = _f(0, "contexts for the LM recovery phase (teacher-distilled LM on contexts); 0 = off", min=0)
    recovery_steps: int = _f(0, "optimizer steps of the recovery phase before answer distillation", min=0)
    teacher_answered_size: int = _f(
        0, "extra SQuAD train questions the teacher answers (greedy, in the teacher-cache stage; their gold answers are "
           "never read), added to the student's training examples with the teacher's answer as the target: CE on them "
           "is sequence-level KD, gamma_kl > 0 adds the divergence on them; the CE-only student never sees them; 0 = off",
        min=0)
    teacher_seed: int = _f(-1, "seed of the shuffle that drew the teacher's tuning examples and the teacher-answered "
                               "questions (just before them); -1 = seed (seed sweeps and the capacity grid set their "
                               "base run's)", min=-1, max=2**32 - 1)

    # --- LoRA ----------------------------------------------------------------------------
    use_lora: bool = _f(True, "train a LoRA adapter; false trains the full student")
    lora_r: int = _f(8, "LoRA rank; higher adapts more and costs more memory", min=1)
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r)", min=1)
    lora_dropout: float = _f(0.0, "dropout on the LoRA path", min=0.0, max=1.0)
    lora_target_modules: list[str] = _f([], "module names to adapt; empty = every attention and MLP linear")

    # --- training ------------------------------------------------------------------------
    learning_rate: float = _f(2.0e-4, "peak learning rate (linear decay after warmup)", gt=0)
    max_steps: int = _f(4, "optimizer steps", min=1)
    batch_size: int = _f(4, "examples per forward pass of each process (global batch: batch_size x "
                                 "num_processes x grad_accum_steps)", min=1)
    grad_accum_steps: int = _f(1, "forward passes per optimizer step", min=1)
    warmup_ratio: float = _f(0.1, "fraction of steps of linear warmup", min=0.0, max=1.0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0)
    eval_steps: int = _f(2, "evaluate (and checkpoint) every N steps", min=1)
    logging_steps: int = _f(1, "log the loss components every N steps", min=1)
    resume: bool = _f(True, "after a kill, continue training from the last complete checkpoint made with the same "
                            "settings and input models (false: always start over)")
    gradient_checkpointing: bool = _f(False, "trade compute for activation memory")

    # --- processes (accelerate) ----------------------------------------------------------
    num_processes: int = _f(1, "training and teacher-cache processes; > 1 launches them with `accelerate launch` "
                               "(DDP on CPUs over gloo, on GPUs over NCCL, or what accelerate_config says); "
                               "each takes batch_size examples per forward pass", min=1)
    accelerate_config: str = _f("", "accelerate config file for num_processes > 1 (e.g. configs/accelerate/"
                                    "gemma_fsdp_8gpu.yaml); empty = configs/accelerate/ddp_cpu.yaml on a CPU, "
                                    "ddp_gpu.yaml on GPUs")
    teacher_placement: Literal["replicated", "sharded"] = _f(
        "replicated", "a live teacher under num_processes > 1: a whole copy on every process (replicated), or "
                      "sharded with the student (needs an FSDP accelerate_config and an unquantised teacher)")

    # --- the loss ------------------------------------------------------------------------
    alpha_ce: float = _f(1.0, "weight of cross-entropy on the gold answer", min=0.0)
    gamma_kl: float = _f(1.0, "weight of the teacher-student divergence (x T^2)", min=0.0)
    beta_mse: float = _f(0.1, "weight of the hidden-state matching loss", min=0.0)
    temperature: float = _f(2.0, "softening temperature of the divergence", gt=0)
    kd_kind: Literal["forward_kl", "reverse_kl", "jsd"] = _f("forward_kl", "the divergence")
    jsd_beta: float = _f(0.5, "generalized JSD mixture weight (only for kd_kind: jsd)", gt=0.0, lt=1.0)
    kd_chunk_size: int = _f(0, "positions per chunk of the divergence (bounds its float32 memory at a large "
                               "vocabulary, e.g. 64 for Gemma's 256k); 0 = all at once", min=0)
    distill_positions: Literal["answer", "all"] = _f(
        "all", "teacher terms on answer tokens only, or every non-padding token")
    teacher_cache: Literal["none", "topk", "sampled"] = _f(
        "none", "where the divergence's teacher targets come from: none = the live dense teacher in every step; topk = "
                "its k most likely tokens, cached once per example; sampled = k tokens drawn from it, cached")
    teacher_cache_k: int = _f(16, "teacher_cache: tokens kept (topk) or drawn (sampled) per position; more is closer "
                                  "to the dense divergence and costs 6 bytes per token each", min=1)
    kd_sparse_tail: Literal["bucket", "renormalize"] = _f(
        "bucket", "teacher_cache topk: the mass outside the kept tokens is one more outcome (bucket) or dropped and "
                  "both sides renormalised")
    lmbda: float = _f(0.0, "on-policy distillation (GKD; TRL GKDConfig.lmbda): the fraction of training batches "
                           "whose answers the student samples itself, scored by the live teacher with kd_kind "
                           "(TRL's beta: 0 = forward_kl, 1 = reverse_kl, between = jsd with jsd_beta); 0 = off",
                      min=0.0, max=1.0)
    onpolicy_temperature: float = _f(1.0, "on-policy: the student's sampling temperature, top_k 0 and top_p 1 "
                                          "(TRL GKDConfig.temperature)", gt=0)
    onpolicy_max_new_tokens: int = _f(16, "on-policy: longest sampled answer (TRL GKDConfig.max_new_tokens)", min=1)
    layer_map: list[int] = _f([], "teacher layer for each student layer; empty = uniform spread")
    hidden_loss: Literal["mse", "cosine"] = _f("mse", "hidden-state loss; mse is normalised by the teacher's mean square")

    # --- evaluation and benchmark --------------------------------------------------------
    max_new_tokens: int = _f(16, "greedy decoding budget per answer", min=1)
    bench_batch_size: int = _f(4, "prompts per generation batch (left padded)", min=1)
    bench_warmup: int = _f(1, "generation batches run before timing", min=0)
    qualitative_examples: int = _f(4, "validation examples shown side by side in the merge report", min=0)

    # --- capacity grid (notebook 04) -----------------------------------------------------
    capacity_keep: list[int] = _f([], "capacity grid: students of these many teacher layers, cut from the tuned teacher "
                                      "by prune_method, each trained CE-only and distilled per capacity_seeds; empty = "
                                      "no grid")
    capacity_seeds: list[int] = _f([0, 1, 2], "capacity grid: training seeds; every size sees the same examples per seed")
    capacity_arms: dict = _f({}, "capacity grid: the trainings of every size and seed, {arm name: {params key: value}} "
                                 "applied to the run's params (`variant: ce_baseline` marks the CE-only baseline, "
                                 "exactly one arm); empty = ce_baseline and distilled")
    capacity_questions: int = _f(300, "capacity grid and 4-bit fidelity: validation questions every model is "
                                      "scored on", min=1)
    latency_prompts: int = _f(24, "questions answered one at a time (batch 1) to time each model's per-request "
                                  "latency: the first N of the scored ones (speed stages: at most bench_size)", min=1)
    fidelity_precisions: list[str] = _f([], "4-bit fidelity (with or without a capacity grid): teacher "
                                            "precisions measured against the float32 teacher on the scored questions (KL, top-1 agreement, sampled-cache distance, "
                                            "EM/F1, load time, memory, latency), e.g. [nf4-float32, nf4dq-float32]: "
                                            "nf4 or nf4dq (double quantisation), then the compute dtype")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _check_type(f.name, value, _hints()[f.name]))
            _check_range(f.name, getattr(self, f.name), f.metadata)
        try:
            paths.check_name("run_name", self.run_name)
            for key in ("output_dir", "deploy_dir"):
                if getattr(self, key):
                    paths.check_output_folder(key, getattr(self, key))
                    paths.check_run_folder(key, getattr(self, key), self.run_name, self.base_run_dir)
        except ValueError as err:
            raise ParamsError(str(err)) from None
        if self.alpha_ce == 0 and self.gamma_kl == 0 and self.beta_mse == 0:
            raise ParamsError("alpha_ce, gamma_kl and beta_mse are all 0: nothing to train; set at least one > 0")
        if self.student == "prune" and not self.prune_layers and self.prune_keep < 1:
            raise ParamsError("student: prune needs prune_layers (a list) or prune_keep >= 1")
        if self.variant == "ce_baseline" and self.uses_teacher:
            raise ParamsError("variant: ce_baseline is the CE-only student; it needs gamma_kl: 0 and beta_mse: 0")
        if self.variant == "ce_baseline" and self.teacher_answered_size:
            raise ParamsError("variant: ce_baseline is trained on the gold answers only; it needs teacher_answered_size: 0")
        if self.teacher_cache == "sampled" and self.kd_kind != "forward_kl":
            raise ParamsError(f"teacher_cache: sampled estimates the forward KL only; got kd_kind: {self.kd_kind} "
                              "(use teacher_cache: topk, or kd_kind: forward_kl)")
        if self.lmbda > 0 and self.gamma_kl == 0:
            raise ParamsError(f"lmbda: {self.lmbda} has the teacher score the student's own answers through the "
                              "divergence; it needs gamma_kl > 0 (or set lmbda: 0)")
        if self.capacity_keep:
            if self.student != "prune":
                raise ParamsError(f"capacity_keep: {self.capacity_keep} cuts students from the teacher; it needs "
                                  f"student: prune (got student: {self.student})")
            if min(self.capacity_keep) < 1 or len(set(self.capacity_keep)) != len(self.capacity_keep):
                raise ParamsError(f"capacity_keep: {self.capacity_keep}; give distinct layer counts >= 1, e.g. [24, 18, 14]")
            if not self.capacity_seeds or len(set(self.capacity_seeds)) != len(self.capacity_seeds) or \
                    min(self.capacity_seeds) < 0:
                raise ParamsError(f"capacity_seeds: {self.capacity_seeds}; give distinct seeds >= 0, e.g. [0, 1, 2]")
            self._check_arms()
        if self.capacity_keep or self.fidelity_precisions:
            if self.latency_prompts > self.capacity_questions:
                raise ParamsError(f"latency_prompts: {self.latency_prompts} exceeds capacity_questions "
                                  f"({self.capacity_questions}); the timed prompts are a subset of the scored ones")
        if self.fidelity_precisions:
            self._check_fidelity()
        if self.teacher_placement == "sharded" and self.teacher_load_in_4bit:
            raise ParamsError("teacher_placement: sharded needs an unquantised teacher (FSDP cannot shard 4-bit "
                              "weights); set teacher_load_in_4bit: false or teacher_placement: replicated")
        if self.recovery_steps and not self.recovery_size:
            raise ParamsError(f"recovery_steps: {self.recovery_steps} needs recovery_size >= 1 (contexts to train on)")

    def _check_fidelity(self) -> None:
        """4-bit teachers are measured against the run's float32 teacher on its capacity_questions (a grid's, when it
        has one)."""
        for name in self.fidelity_precisions:
            precision_settings(name)
        if len(set(self.fidelity_precisions)) != len(self.fidelity_precisions):
            raise ParamsError(f"fidelity_precisions: {self.fidelity_precisions} names a precision twice; list each once")
        if self.teacher_load_in_4bit or self.model_dtype != "float32":
            raise ParamsError("fidelity_precisions measures 4-bit teachers against the run's float32 teacher; set "
                              "teacher_load_in_4bit: false and model_dtype: float32 (an arm may set "
                              "teacher_load_in_4bit: true)")

    def _check_arms(self) -> None:
        """Each arm's settings must make valid params of their own; exactly one arm is the CE-only baseline. (Checked
        on the run's params; its CE-only variant's, which zero the teacher terms, carry the same arms.)"""
        if not self.capacity_arms or self.variant != "distilled":
            return
        baselines = [a for a, s in self.capacity_arms.items() if s.get("variant") == "ce_baseline"]
        if len(baselines) != 1:
            raise ParamsError(f"capacity_arms: {len(baselines)} arms set variant: ce_baseline ({baselines}); exactly "
                              "one arm is the CE-only baseline the others are compared with, e.g. "
                              "ce_only: {variant: ce_baseline}")
        grid = {"capacity_keep", "capacity_arms", "capacity_seeds", "capacity_questions", "run_name", "output_dir",
                "seed", "student", "fidelity_precisions"}
        for arm, settings in self.capacity_arms.items():
            try:
                paths.check_name("capacity_arms", arm)
            except ValueError as err:
                raise ParamsError(str(err)) from None
            bad = sorted(grid & set(settings))
            if bad:
                raise ParamsError(f"capacity_arms.{arm}: sets {bad}, which the grid sets per cell; an arm changes how "
                                  "a student trains (e.g. gamma_kl, teacher_answered_size, lmbda)")
            base = {k: v for k, v in self.to_dict().items()
                    if k not in ("capacity_keep", "capacity_arms", "fidelity_precisions")}
            base["variant"] = "distilled"  # an arm is distilled unless it says otherwise (study.capacity.arm_params)
            if settings.get("variant") == "ce_baseline":
                base.update(gamma_kl=0.0, beta_mse=0.0, lmbda=0.0, teacher_answered_size=0)
            try:
                from_mapping({**base, **settings})
            except ParamsError as err:
                raise ParamsError(f"capacity_arms.{arm}: {err}") from None

    # --- derived values ------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return paths.resolve(self.output_dir) if self.output_dir else paths.ARTIFACTS_DIR / self.run_name

    @property
    def report_dir(self) -> Path:
        return paths.REPORTS_DIR / self.run_name

    @property
    def deploy_path(self) -> Path:
        return paths.resolve(self.deploy_dir) if self.deploy_dir else self.run_dir / "deploy"

    @property
    def teacher_precision(self) -> str:
        """How the teacher's weights are held: the model dtype, or `nf4[dq]-<compute dtype>` for a 4-bit teacher
        (what its cached targets and answers depend on besides its weights); `precision_settings` reads it back."""
        if not self.teacher_load_in_4bit:
            return self.model_dtype
        return f"nf4{'dq' if self.bnb_double_quant else ''}-{self.bnb_compute_dtype}"

    @property
    def uses_teacher(self) -> bool:
        return self.gamma_kl > 0 or self.beta_mse > 0

    @property
    def uses_teacher_cache(self) -> bool:
        """The divergence reads cached sparse targets (the teacher itself runs only for hidden states)."""
        return self.teacher_cache != "none" and self.gamma_kl > 0

    @property
    def needs_live_teacher(self) -> bool:
        """The teacher itself runs during training: hidden states, a dense divergence, or on-policy batches (a
        cache holds targets for the gold answers only, not for the student's samples)."""
        return self.beta_mse > 0 or (self.gamma_kl > 0 and not self.uses_teacher_cache) or self.lmbda > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "StudyParams":
        return from_mapping({**self.to_dict(), **changes})


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(StudyParams))
    return _HINTS


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(StudyParams)]


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    if tp is dict:
        return "a mapping of {arm name: {params key: value}}"
    return f"a {tp.__name__}"


def _check_type(name: str, value: Any, tp: Any) -> Any:
    bad = ParamsError(f"{name}: got {reprlib.repr(value)} ({type(value).__name__}); expected {_describe(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise bad
        return {str(k): dict(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # PyYAML reads 2e-5 (no dot) as a string: say so, it is the usual cause.
        if isinstance(value, str):
            raise ParamsError(f"{name}: got the string {value!r}; write a number such as 2.0e-5 (YAML needs the dot)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ParamsError(f"{name}: got {value!r}; expected a finite number such as 2.0e-4")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"schema type {tp} of {name} is not handled")  # a bug in this module, not in the params


def _check_range(name: str, value: Any, meta: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    allowed = []
    ok = True
    if "min" in meta:
        ok &= value >= meta["min"]
        allowed.append(f">= {meta['min']}")
    if "gt" in meta:
        ok &= value > meta["gt"]
        allowed.append(f"> {meta['gt']}")
    if "max" in meta:
        ok &= value <= meta["max"]
        allowed.append(f"<= {meta['max']}")
    if "lt" in meta:
        ok &= value < meta["lt"]
        allowed.append(f"< {meta['lt']}")
    if not ok:
        raise ParamsError(f"{name}: got {value!r}; allowed: {' and '.join(allowed)}")


def from_mapping(values: dict[str, Any]) -> StudyParams:
    """Validate a flat mapping of params (unknown keys are an error, with a suggestion)."""
    known = field_names()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ParamsError(f"{key}: unknown params key{hint}")
    return StudyParams(**values)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's rule is "the last duplicate wins" silently; a params file with a key twice is a mistake to name."""
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges a mapping: not a key of its own
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamsError(f"{key}: given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_YAML_NODES = 100_000  # a params file is tens of values; aliases of aliases can expand to billions


def _count_nodes(value: Any, limit: int) -> int:
    """Values in `value`, counted until `limit` (aliases counted every time they appear, as the loaded value
    repeats them); stops early, so an exponential expansion costs nothing."""
    count, stack = 0, [value]
    while stack and count < limit:
        v = stack.pop()
        count += 1
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return count


def _read_yaml(text: str, where: str) -> Any:
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        if _count_nodes(value, MAX_YAML_NODES) >= MAX_YAML_NODES:
            raise ParamsError(f"expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?); a params file "
                              "holds tens: write the values out")
        return value
    except ParamsError as err:
        raise ParamsError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{where}: not valid YAML ({err.__class__.__name__}: {str(err).splitlines()[0]}"
                          f"{_yaml_line(err)}); fix the syntax") from None


def _yaml_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def params_path(path: str | Path) -> Path:
    """The params file a command names: a path as given, or a bare profile name (`smoke`) from params/."""
    p = Path(path)
    profiles = ", ".join(sorted(x.stem for x in paths.PARAMS_DIR.glob("*.yaml")))
    if not p.exists() and not p.is_absolute() and paths.resolve(p).exists():
        p = paths.resolve(p)  # params/smoke.yaml from any folder: relative to the project, as stages read it
    if not p.exists():
        # only a bare name means "the profile of that name"; a path that is missing is an error, never another file
        bare = str(path) == p.stem or str(path) == p.name and p.suffix in (".yaml", ".yml")
        candidate = paths.PARAMS_DIR / f"{p.stem}.yaml"
        if bare and candidate.exists():
            return candidate
        raise ParamsError(f"{path}: params file not found; give an existing file or a profile name ({profiles})")
    if p.is_dir():
        raise ParamsError(f"{path}: is a folder, not a params file; give a YAML file such as params/smoke.yaml")
    return p


def load(path: str | Path, overrides: list[str] | None = None) -> StudyParams:
    """Read and validate a params YAML file; `overrides` are `key=value` strings (values read as YAML)."""
    p = params_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{p}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except OSError as err:
        raise ParamsError(f"{p}: cannot read the params file ({err.strerror}); check its permissions") from None
    values = _read_yaml(text, str(p))
    if values is None:
        raise ParamsError(f"{p}: the params file is empty; give at least run_name (see params/smoke.yaml)")
    if not isinstance(values, dict):
        raise ParamsError(f"{p}: expected a mapping of key: value at the top level, got {type(values).__name__}")
    values.update(parse_overrides(overrides or []))
    if "run_name" not in values:
        values["run_name"] = p.stem
        try:
            paths.check_name("run_name", p.stem)
        except ValueError as err:
            raise ParamsError(f"{err} (taken from the file name: set run_name: in the file)") from None
    return from_mapping(values)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (values read as YAML) as a mapping; the keys are checked where it is applied."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item}: expected KEY=VALUE, e.g. --set seed=1")
        out[key.strip()] = _read_yaml(raw, f"--set {item}") if raw.strip() else ""
    return out


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
PRECISION_KEYS = ("teacher_load_in_4bit", "bnb_compute_dtype", "bnb_double_quant")  # how the teacher's weights are held


def precision_settings(name: str) -> dict[str, Any]:
    """The params keys of a 4-bit teacher precision named as `StudyParams.teacher_precision` names it, e.g.
    "nf4dq-bfloat16" -> teacher_load_in_4bit, bnb_double_quant, bnb_compute_dtype."""
    kind, _, dtype = name.partition("-")
    if kind not in ("nf4", "nf4dq") or dtype not in COMPUTE_DTYPES:
        raise ParamsError(f"fidelity_precisions: got {name!r}; name a 4-bit teacher as nf4-<dtype> or nf4dq-<dtype> "
                          f"(double quantisation), <dtype> one of {', '.join(COMPUTE_DTYPES)}, e.g. nf4-float32")
    return {"teacher_load_in_4bit": True, "bnb_double_quant": kind == "nf4dq", "bnb_compute_dtype": dtype}


def from_notebook(namespace: dict[str, Any]) -> StudyParams:
    """Collect the schema's keys from a notebook's globals (its defaults plus what papermill injected)."""
    return from_mapping({k: namespace[k] for k in field_names() if k in namespace})


def help_table() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) per key, for docs and `python -m distill params`."""
    rows = []
    for f in dataclasses.fields(StudyParams):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, _describe(_hints()[f.name]), default, f.metadata["help"]))
    return rows
