"""Training on N processes through accelerate (gloo on the CPU): the same global batch trains the same student.

The slow test trains the smoke student (LoRA, recovery phase, live teacher replicated on each rank, KD and the
hidden-state term with its projection) on one global batch of 4 examples per step, made two ways: in this
process as 2 examples x 2 accumulated micro-batches, and on 2 launched processes as 2 examples each. It
compares the adapters, the projections and every logged loss. Set DISTILL_DDP_CHECK_DIR
to keep both runs' folders for a look of your own (`<dir>/{one,two}_processes/students/distilled/best`).
"""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.core import params
from distill.kd import group
from distill.parts import teacher_cache
from distill.study import cache, launch, layout, training

# float32 sums in another order (gloo's all-reduce, half batches): 4 Adam steps at lr 1e-3 move weights by ~4e-3
WEIGHT_TOL = 1e-5
LOSS_TOL = 1e-5


def smoke_params(folder: Path, **overrides) -> params.StudyParams:
    return params.load("smoke", overrides=[f"{k}={v}" for k, v in {
        "run_name": "ddp-check", "output_dir": str(folder), "teacher_finetune": "false", "teacher_load_in_4bit": "false",
        "torch_threads": 1, **overrides}.items()])


def adapter(outcome) -> dict[str, torch.Tensor]:
    best = Path(outcome.best_dir)
    found = load_file(str(best / "adapter_model.safetensors"))
    if (best / "hidden_projection.safetensors").exists():
        found.update({f"projection.{k}": v for k, v in load_file(str(best / "hidden_projection.safetensors")).items()})
    return found


def losses_by_step(history: list[dict], key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in history if key in e}


@pytest.fixture(scope="module")
def check_dir(tmp_path_factory) -> Path:
    keep = os.environ.get("DISTILL_DDP_CHECK_DIR")
    return Path(keep) if keep else tmp_path_factory.mktemp("ddp")


def test_every_shipped_accelerate_config_is_read_by_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    found = {f.name: load_config_from_file(str(f)) for f in sorted(launch.CONFIG_DIR.glob("*.yaml"))}
    assert {"ddp_cpu.yaml", "ddp_gpu.yaml", "gemma_fsdp_8gpu.yaml"} <= found.keys()
    assert found["gemma_fsdp_8gpu.yaml"].distributed_type == DistributedType.FSDP
    assert found["gemma_fsdp_8gpu.yaml"].num_processes == 8
    # the layer class FSDP wraps is Gemma's decoder layer, as transformers names it
    from transformers.models.gemma import modeling_gemma

    layer = found["gemma_fsdp_8gpu.yaml"].fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert hasattr(modeling_gemma, layer)
    assert found["ddp_cpu.yaml"].distributed_type == DistributedType.MULTI_GPU  # accelerate's torchrun launcher
    for name in ("ddp_cpu.yaml", "ddp_gpu.yaml"):
        assert launch.check_config(launch.CONFIG_DIR / name) is not None


def test_the_readme_commands_name_files_that_exist():
    import re

    readme = (launch.CONFIG_DIR.parents[1] / "README.md").read_text()
    named = set(re.findall(r"(configs/accelerate/[\w.-]+\.yaml|params/[\w.-]+\.yaml)", readme))
    assert any("gemma_fsdp_8gpu" in n for n in named) and any("ddp_gpu" in n for n in named)
    missing = [n for n in named if not (launch.CONFIG_DIR.parents[1] / n).exists()]
    assert not missing


def test_the_launch_command_runs_our_module_on_the_configured_processes(tmp_path):
    p = smoke_params(tmp_path, num_processes=3, device="cpu")
    cmd = launch.launch_command(p, ["train-student", "x.json"])
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(launch.CONFIG_DIR / "ddp_cpu.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "3"
    assert cmd[-4:] == ["-m", "distill", "train-student", "x.json"]
    assert group.world() == (0, 1) and group.is_main()


def test_a_missing_accelerate_config_is_refused_before_any_process_starts(tmp_path):
    p = smoke_params(tmp_path, num_processes=2, accelerate_config="configs/accelerate/missing.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml.*ddp_cpu.yaml"):
        launch.launch(p, ["train-student", "x.json"])


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(check_dir):
    # global batch = batch_size x num_processes x grad_accum_steps = 4 both ways
    one = training.train_student(smoke_params(check_dir / "one_process", batch_size=2, grad_accum_steps=2))
    two = training.train_student(smoke_params(check_dir / "two_processes", batch_size=2, num_processes=2))
    assert (one.processes, two.processes) == (1, 2)
    assert one.teacher_loaded and two.teacher_loaded  # the live, replicated teacher path
    assert two.global_step == one.global_step == 4
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys() and any(k.startswith("projection.") for k in a)
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    moved = max((a[k] - load_file(str(Path(one.best_dir).parent / "recovery" / "best" / "adapter_model.safetensors"))
                 .get(k, a[k])).abs().max().item() for k in a if not k.startswith("projection."))
    print(f"max |adapter(1 process) - adapter(2 processes)| = {max(diffs.values()):.2e} "
          f"(training moved the weights by up to {moved:.2e}); folders under {check_dir}")
    assert moved > 100 * WEIGHT_TOL  # the comparison is not of untrained weights
    assert max(diffs.values()) < WEIGHT_TOL, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    for key in ("eval_loss", "eval_ce", "eval_kd", "eval_hidden", "loss", "train_ce", "train_kd", "train_hidden"):
        la, lb = losses_by_step(one.history, key), losses_by_step(two.history, key)
        assert la and la.keys() == lb.keys(), key
        for step in la:
            assert lb[step] == pytest.approx(la[step], abs=LOSS_TOL), (key, step, la[step], lb[step])
    assert two.best_step == one.best_step
    assert json.loads((Path(two.best_dir) / "training_info.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_a_failed_launch_says_what_the_ranks_said(check_dir):
    # a model that cannot be had stops the launcher before any process starts (it resolves the models once)
    p = smoke_params(check_dir / "broken", num_processes=2, student="tiny:no-such-student")
    with pytest.raises(ValueError, match="no-such-student"):
        training.train_student(p)
    assert not (layout.variant_dir(p, p.variant) / training.LAUNCH_PARAMS_FILE).exists()
    # what fails in the ranks comes back as their own line
    p = smoke_params(check_dir / "broken", num_processes=2, data_pool_rows=20)
    with pytest.raises(launch.LaunchFailed, match=r"rank \d: ValueError: asked for .* only 20 rows were read"):
        training.train_student(p)


@pytest.mark.slow
def test_the_teacher_cache_on_two_processes_and_training_ranks_without_a_teacher(check_dir):
    import yaml


    cached = dict(teacher_cache="sampled", teacher_cache_k=4, beta_mse=0, batch_size=2)
    runs = {}
    for name, procs in (("cache_one", 1), ("cache_two", 2)):
        p = smoke_params(check_dir / name, num_processes=procs, **cached)
        params_file = p.run_dir / "params.yaml"
        params_file.parent.mkdir(parents=True, exist_ok=True)
        params_file.write_text(yaml.safe_dump(p.to_dict()))
        assert cache.fill_teacher_cache(p, params_file) == 0
        runs[name] = (p, teacher_cache.CachedTargets(teacher_cache.view_file(layout.base_run_dir(p), p)))
    (p1, one), (p2, two) = runs["cache_one"], runs["cache_two"]
    assert one.entries.keys() == two.entries.keys() and one.entries
    assert len(two.files) == 2 and len(one.files) == 1  # each rank wrote its own shard
    for key in one.entries:
        a, b = one.lookup_key(key), two.lookup_key(key)
        for name in ("ids", "logprobs", "counts"):
            assert torch.equal(a[name], b[name]), (key, name)
    # training from the cache: no process loads the teacher, and 2 processes still equal 1
    solo = training.train_student(p1.replace(num_processes=1, grad_accum_steps=2))
    pair = training.train_student(p2)
    assert not solo.teacher_loaded and not pair.teacher_loaded
    assert "teacher cache" in pair.teacher_targets
    a, b = adapter(solo), adapter(pair)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_TOL
    assert losses_by_step(pair.history, "eval_loss") == pytest.approx(losses_by_step(solo.history, "eval_loss"),
                                                                       abs=LOSS_TOL)
