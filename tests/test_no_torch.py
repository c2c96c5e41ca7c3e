"""The pieces that let code generation run without torch (`nnspec.backends.torch.lazy`), each checked against torch
itself: the result dtypes the emitters work out (`promotion.py`) are those torch computes, for every operand kind
an emitter can meet; the written-out `nn.Module` attribute names cover the installed torch's; the runtime helpers
read from runtime.py's text are the module's own."""

from __future__ import annotations

import inspect
import itertools
import json
import subprocess
import sys

import pytest
import torch

from nnspec.backends.torch import helpers, runtime
from nnspec.backends.torch.nn_module_attrs import NN_MODULE_ATTRS
from nnspec.backends.torch.promotion import (
    NUMBER,
    TENSOR,
    ZERO_DIM,
    Operand,
    pointwise_result,
    promote_types,
    result_type,
)
from nnspec.compiler.ir import DType
from nnspec.compiler.ops.elementwise import BINARY, POINTWISE

TORCH = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
         DType.int64: torch.int64, DType.int32: torch.int32, DType.bool: torch.bool}
NUMBERS = {DType.bool: True, DType.int64: 3, DType.float32: 1.5}
KINDS = [Operand(d, p) for d in TORCH for p in (TENSOR, ZERO_DIM)] + [Operand(d, NUMBER) for d in NUMBERS]
# a pointwise op on two Python numbers is folded by the compiler, never emitted
PAIRS = [(a, b) for a, b in itertools.product(KINDS, KINDS) if (a.priority, b.priority) != (NUMBER, NUMBER)]


def _value(o: Operand) -> object:
    if o.priority == NUMBER:
        return NUMBERS[o.dtype]
    return torch.ones((2,) if o.priority == TENSOR else (), dtype=TORCH[o.dtype])


def _torch_function(op: str) -> object:
    row = POINTWISE[op]
    module, _, name = row.torch.rpartition(".")
    fn = getattr({"torch": torch, "F": torch.nn.functional}[module], name)
    return lambda a, b: fn(a, b, **dict(row.torch_kwargs))


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_result_dtype_is_torchs(op: str) -> None:
    checked = 0
    for a, b in PAIRS:
        try:
            want = _torch_function(op)(_value(a), _value(b)).dtype
        except (RuntimeError, TypeError):   # torch has no kernel for it (bool - bool); the checker refuses it too
            continue
        assert TORCH[pointwise_result(POINTWISE[op], a, b)] == want, (op, a, b)
        checked += 1
    assert checked >= 100


def test_where_and_promote_types_are_torchs() -> None:
    cond = torch.ones((), dtype=torch.bool)
    for a, b in PAIRS:
        assert TORCH[result_type(a, b)] == torch.where(cond, _value(a), _value(b)).dtype, (a, b)
    for a, b in itertools.product(TORCH, TORCH):
        assert TORCH[promote_types(a, b)] == torch.promote_types(TORCH[a], TORCH[b]), (a, b)


def test_written_out_module_attributes_cover_torchs() -> None:
    # read in a fresh interpreter: libraries imported by other tests in this process (transformers) add their own
    # attributes to nn.Module, which are no names of torch's
    code = "import json, torch.nn as nn; print(json.dumps(sorted(set(dir(nn.Module)) | set(vars(nn.Module())))))"
    names = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    missing = set(names) - NN_MODULE_ATTRS
    assert not missing, f"regenerate nnspec/backends/torch/nn_module_attrs.py for this torch: {sorted(missing)}"


def test_helpers_read_from_runtime_text_are_the_modules_own() -> None:
    assert frozenset(runtime.LINEAR_ACTIVATIONS) - {"none"} == helpers.LINEAR_ACTIVATIONS
    for name in ("linear", "Linear", "rms_norm", "moe_swiglu"):
        assert helpers.source(name) in inspect.getsource(runtime)
        assert f"def {name}(" in helpers.source(name) or f"class {name}(" in helpers.source(name)
