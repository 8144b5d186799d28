"""What a rank asks of the process group: who it is, whether it is the main one, a barrier, a sum.

Outside a launch (one process) every call answers for a world of one, so the same training code runs in a
notebook kernel and on each rank of `accelerate launch`.
"""
from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launch (torchrun sets RANK and WORLD_SIZE)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return world()[0] == 0


def fsdp_launched() -> bool:
    """This rank was launched with an FSDP accelerate config (accelerate's launcher says so in the environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Element-wise sum over the ranks (the values themselves with one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()
