"""Process liveness: a stage, a kernel or a rank ends as soon as the process that started it is gone.

A killed `make study` takes its run along (`die_with_parent`); a stage started through DVC watches its run
(`die_with_run`); a launched rank watches the kernel or stage that launched it (`follow_launcher`). Nothing is
left holding outputs, locks or the CPU. A long loop of large, short-lived tensors hands the memory it freed back to
the system (`release_freed_memory`), so the process's memory does not grow with the loop's length.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

RUN_PID_ENV = "DISTILL_RUN_PID"


def die_with_parent(only_if_parent_is: str | None = None) -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed `make study` takes its run along).

    `only_if_parent_is` limits that to a parent of that name: a run started from `make` is make's job and dies
    with it, while one started from a shell with nohup must outlive the shell.
    """
    if only_if_parent_is is not None:
        try:
            if Path(f"/proc/{os.getppid()}/comm").read_text().strip() != only_if_parent_is:
                return
        except OSError:
            return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def die_with_run() -> None:
    """A stage started by a run (through DVC and its shell) ends as soon as that run process is gone, so a killed
    run leaves nothing behind that holds its outputs or the CPU; its kernel follows (ipykernel polls its parent)."""
    die_with(int(os.environ.get(RUN_PID_ENV, "0") or 0))


def die_with(pid: int) -> None:
    """End this process (exit 137) as soon as process `pid` is gone; 0 watches nothing."""
    if not pid:
        return

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(137)
            except PermissionError:
                pass
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True, name="die-with-run").start()


LAUNCHER_PID_ENV = "DISTILL_LAUNCHER_PID"  # a rank ends when the process that launched it is gone


def follow_launcher() -> None:
    """In a rank: exit when the launching kernel or stage dies (it was started in its own session)."""
    die_with(int(os.environ.get(LAUNCHER_PID_ENV, "0") or 0))


def alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def release_freed_memory() -> None:
    """glibc: return the heap's free pages to the system (`malloc_trim(0)`); elsewhere nothing.

    Tensors of a few MB to 32 MB (one example's [positions, vocabulary] logits) come from glibc's heap, not from
    their own mappings; freed, they stay in the process between smaller long-lived allocations. A loop over
    examples then grows by about their size each step: the teacher-cache stage of the default profile (1,150
    examples) reached 24 GB and was killed, and stays near 1.5 GB when the freed pages are returned.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass
