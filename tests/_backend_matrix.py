"""One spec built every way it runs: the reference interpreter, generated torch code at -O0 and -O2, and the Triton
target where Triton can run (a GPU, or its CPU interpreter as the tests set it up). Tests of an op's semantics run
the same inputs through each and compare every result with a reference written in the test."""

from __future__ import annotations

import os

import torch

import nnspec
from nnspec.backends.torch import Interpreter


def triton_available() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def modules(text: str) -> dict[str, torch.nn.Module]:
    """The interpreter, generated torch code at -O0 and -O2, and the Triton target, all holding one set of weights."""
    interp = Interpreter(nnspec.check(text).model)
    out: dict[str, torch.nn.Module] = {"interpreter": interp}
    for opt in (0, 2):
        out[f"torch -O{opt}"] = nnspec.build(text, opt=opt)
    if triton_available():
        out["triton -O2"] = nnspec.build(text, target="triton", opt=2)
    return out
