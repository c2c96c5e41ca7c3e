"""The PyTorch backend.

- `ops/`: per op family (as `nnspec/compiler/ops/`), each op's reference lowering beside its code emitter, in
  the two tables of `rules.py`;
- the reference interpreter (`interpreter.py`, with `frame.py`), SliceGPT calibration on it (`calibrate.py`);
- code generation: `codegen.py` prints the file, `members.py` plans each class's members, `function.py` builds each
  `forward`, `context.py` holds what they share, `source.py`/`pysrc.py` the Python it is made of, `layout.py` named
  axes as positions; `options.py` the backend's explicit options;
- `runtime.py`: the helpers generated files define (copied verbatim, `helpers.py`) and the interpreter calls;
- `backend.py`: the backend contract (`BACKEND`); `weights.py`: checkpoint mapping; `transform_params.py`: parameter
  tensors through the compiler's transforms (convert, load, merge adapters, slice).
"""

from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError, interpret

__all__ = ["Interpreter", "RuntimeShapeError", "interpret"]
