"""N processes through accelerate: the launch (from a notebook or a stage) and what a rank asks of the group.

`num_processes: 1` runs in the caller's process, as always. Above that, the caller starts
`accelerate launch --config_file <accelerate_config> --num_processes N -m distill <command>` and streams its
lines; every rank then runs the same lib code, and only rank 0 writes what the caller reads back.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

import torch
import yaml

from distill.core import paths, procs
from distill.core.params import StudyParams
from distill.kd import group
from distill.parts import models
from distill.parts.models import free_cores

CONFIG_DIR = paths.PROJECT_ROOT / "configs" / "accelerate"
DEFAULT_CONFIGS = {"cpu": CONFIG_DIR / "ddp_cpu.yaml", "cuda": CONFIG_DIR / "ddp_gpu.yaml"}


RANK_ERROR = re.compile(r"^\[rank(\d+)\]: ((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$")


class LaunchFailed(RuntimeError):
    """The launched processes ended with an error; the message holds their last lines."""


# --------------------------------------------------------------------------------------------
# Inside a rank
# --------------------------------------------------------------------------------------------
def uses_cpu(p: StudyParams) -> bool:
    """What TrainingArguments.use_cpu says for `p`; a rank's process group must be made with the same answer."""
    return p.device == "cpu" or not torch.cuda.is_available()


def rank_device(p: StudyParams) -> torch.device:
    """This rank's device: cuda:<local rank> on GPUs, the CPU otherwise (joins the process group on first use)."""
    from accelerate import PartialState  # heavy: only a launch or its checks need it


    if group.world()[1] == 1:
        return models.resolve_device(p.device)
    return PartialState(cpu=uses_cpu(p)).device


def threads_per_process(p: StudyParams) -> int:
    """CPU threads per rank: torch_threads when set, else the free cores split between the ranks."""
    return p.torch_threads or max(1, free_cores() // p.num_processes)


# --------------------------------------------------------------------------------------------
# The launch
# --------------------------------------------------------------------------------------------
def config_file(p: StudyParams) -> Path:
    if p.accelerate_config:
        return paths.resolve(p.accelerate_config)
    return DEFAULT_CONFIGS["cpu" if uses_cpu(p) else "cuda"]


def check_config(path: Path):
    """The accelerate config as accelerate itself reads it; a clear error when it cannot."""
    from accelerate.commands.config.config_args import (
        load_config_from_file,  # heavy: only a launch or its checks need it
    )

    path = Path(path)
    if not path.is_file():
        shipped = ", ".join(sorted(f.name for f in CONFIG_DIR.glob("*.yaml")))
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"accelerate_config: {path} {what}; use one of configs/accelerate/ "
                                f"({shipped}) or write one with `accelerate config --config_file <path>`")
    try:
        return load_config_from_file(str(path))
    except (TypeError, ValueError, KeyError, AttributeError, yaml.YAMLError) as err:  # empty, malformed, other keys
        raise ValueError(f"accelerate_config: {path} is not an accelerate config "
                         f"({' '.join(str(err).split())[:200] or 'empty'}); start from "
                         "configs/accelerate/ddp_cpu.yaml") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(p: StudyParams, args: list[str]) -> list[str]:
    """`accelerate launch` for `python -m distill <args>` on p.num_processes processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(p)),
            "--num_processes", str(p.num_processes), "--num_machines", "1",
            "--main_process_port", str(_free_port()), "-m", "distill", *args]


def launch(p: StudyParams, args: list[str], stream=None) -> None:
    """Run `python -m distill <args>` on p.num_processes ranks; their output streams line by line to `stream`
    (stderr: the terminal, not the report). A kill of the caller ends the ranks too."""
    stream = stream or sys.stderr
    check_config(config_file(p))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(p)), "PYTHONUNBUFFERED": "1",
           "ACCELERATE_LOG_LEVEL": "error", "TOKENIZERS_PARALLELISM": "false",
           procs.LAUNCHER_PID_ENV: str(os.getpid())}
    cmd = launch_command(p, args)
    print(f"launching {p.num_processes} processes: accelerate launch --config_file "
          f"{paths.shown(config_file(p))} -m distill {' '.join(args)}", file=stream, flush=True)
    last: deque[str] = deque(maxlen=30)
    errors: list[str] = []  # a rank's exception line, e.g. "[rank0]: ValueError: ..."
    proc = subprocess.Popen(cmd, cwd=paths.PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    try:
        for line in proc.stdout:
            last.append(line.rstrip())
            found = RANK_ERROR.match(line)
            if found and not found.group(2).startswith("torch.distributed.elastic"):
                errors.append(f"rank {found.group(1)}: {found.group(2).strip()}")
            print(line.rstrip(), file=stream, flush=True)
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    if code != 0:
        _kill_group(proc)  # a rank left waiting on a dead peer
        if errors:
            raise LaunchFailed(f"the {p.num_processes} launched processes failed: {errors[0]} (the full output is above)")
        tail = "\n".join(last)
        raise LaunchFailed(f"the {p.num_processes} launched processes failed (exit {code}); their last lines:\n{tail}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
