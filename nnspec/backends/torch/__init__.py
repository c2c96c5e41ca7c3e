"""The PyTorch backend.

- `ops/`: per op family (as `nnspec/compiler/ops/`), each op's reference lowering beside its code emitter, in
  the two tables of `rules.py`;
- the reference interpreter (`interpreter.py`, with `frame.py`), SliceGPT calibration on it (`calibrate.py`);
- code generation: `codegen.py` prints the file, `members.py` plans each class's members, `function.py` builds each
  `forward`, `context.py` holds what they share, `source.py`/`pysrc.py` the Python it is made of, `layout.py` named
  axes as positions; `options.py` the backend's explicit options; `promotion.py` torch's result dtypes worked out
  without torch, `nn_module_attrs.py` the names a member must not take. Code generation needs no torch: the op
  family files take torch from `lazy.py` (imported when a lowering first runs), and nothing else it imports
  imports torch (`tests/test_cli_no_torch.py`);
- `runtime.py`: the helpers generated files define (copied verbatim, `helpers.py`) and the interpreter calls;
- `backend.py`: the backend contract (`BACKEND`); `weights.py`: checkpoint mapping; `transform_params.py`: parameter
  tensors through the compiler's transforms (convert, load, merge adapters, slice).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Interpreter", "RuntimeShapeError", "interpret"]


def __getattr__(name: str) -> Any:
    """The interpreter's names, imported on first use: code generation imports this package's modules without
    torch (`lazy.py`), the interpreter needs it."""
    if name in __all__:
        from nnspec.backends.torch import interpreter

        return getattr(interpreter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
