"""Memory a method will need, estimated before it starts, against what the machine has.

1. `available()`: free memory on the weights' device (CUDA: free device memory; CPU:
   `psutil`'s available memory).
2. `fit_chunk`: the largest number of prompts per chunk whose working set fits a budget: a
   method's own working set is kept under `WORKING_FRACTION` of the model's weight bytes (at
   least `MIN_WORKING`) and under the available memory, so that a run's peak stays near
   weights + cached runs + that fraction (issue 12: <= 2.5x the weight bytes).
3. `require`: refuse, in one line naming the option that fixes it, when even the smallest
   step does not fit.
4. `trim()`: hand freed heap pages back to the OS (glibc keeps large freed blocks otherwise,
   so resident memory would stay at the high-water mark of the last method).

Invariant: estimates are upper bounds in bytes computed from shapes only (tested against
measured peaks in bench/memory.py); nothing here allocates.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

from workbench.errors import WorkbenchError

WORKING_FRACTION = 0.5  # of the weight bytes, for one method's chunked working set
MIN_WORKING = 64 * 2**20  # (smaller chunks cost little: EAP on GPT-2 small ran as fast in 11s)


def available(device: torch.device) -> int:
    """Bytes that can still be allocated on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def budget(weight_bytes: int, device: torch.device) -> int:
    """Bytes one method may use for its working set (see the module docstring)."""
    return int(min(max(MIN_WORKING, WORKING_FRACTION * weight_bytes),
                   0.8 * available(device)))


def fit_chunk(per_prompt: int, fixed: int, wanted: int, weight_bytes: int,
              device: torch.device, what: str, fix: str) -> int:
    """Prompts per chunk (<= `wanted`) so that fixed + chunk * per_prompt fits the budget;
    refuses when one prompt does not fit in the available memory."""
    room = budget(weight_bytes, device) - fixed
    chunk = min(wanted, room // max(per_prompt, 1))
    if chunk >= 1:
        return int(chunk)
    require(fixed + per_prompt, what, fix, device)
    return 1  # over the budget but within what is free: run one prompt at a time


def balanced(n: int, chunk: int) -> int:
    """The chunk size that splits `n` items into as few chunks as `chunk` allows, all about
    equal (32 prompts at a limit of 14: 11, 11, 10 rather than 14, 14, 4)."""
    n, chunk = max(n, 1), max(chunk, 1)
    pieces = -(-n // chunk)
    return -(-n // pieces)


def require(need: int, what: str, fix: str, device: torch.device) -> None:
    """Refuse when `need` bytes exceed what `device` has free."""
    free = available(device)
    if need > free:
        raise WorkbenchError(f"{what} needs about {need / 2**30:.1f} GB and "
                             f"{free / 2**30:.1f} GB is free: {fix}")


def trim() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`; a no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass
