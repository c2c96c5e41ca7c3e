"""What every Triton launcher shares: whether to run a kernel or the torch fallback, and the launch counter.

A launcher runs its Triton kernel when the tensors live on a GPU, or when `TRITON_INTERPRET=1` is set (Triton's
CPU interpreter, how CI tests kernels); otherwise it runs the torch code that defines the same numbers. The
interpreter reads `TRITON_INTERPRET` when a `@triton.jit` function is *defined*, so the variable must be set
before any kernel module is imported.

`LAUNCHES` counts kernel launches by kernel name (`reset()` clears it); `OPS` counts the graph ops those
launches computed, so a test can tell how much of a model ran inside Triton kernels.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

try:  # Triton is optional: without it every launcher runs its torch fallback
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is installed wherever the tests run
    HAVE_TRITON = False

LAUNCHES: Counter[str] = Counter()
OPS: Counter[str] = Counter()
FALLBACKS: Counter[str] = Counter()


def interpreting() -> bool:
    """Kernels run in Triton's CPU interpreter (set before kernels were defined)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def use_triton(*tensors: Any) -> bool:
    """Run the kernel for these tensors? On CUDA tensors, or on CPU tensors under the interpreter."""
    if not HAVE_TRITON:
        return False
    ts = [t for t in tensors if t is not None]
    if all(t.is_cuda for t in ts):
        return True
    return interpreting() and not any(t.is_cuda for t in ts)


def launched(kernel: str, ops: int = 1) -> None:
    """Record one launch of `kernel`, computing `ops` graph ops."""
    LAUNCHES[kernel] += 1
    OPS[kernel] += ops


def fell_back(what: str) -> None:
    """Record one call that ran torch code instead of a kernel."""
    FALLBACKS[what] += 1


def reset() -> None:
    LAUNCHES.clear()
    OPS.clear()
    FALLBACKS.clear()


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
