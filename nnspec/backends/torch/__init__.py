"""The PyTorch backend: the reference interpreter (`lowering.py`), code generation (`codegen.py` with the op
table in `emit.py`) and checkpoint mapping (`weights.py`)."""

from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError, interpret

__all__ = ["Interpreter", "RuntimeShapeError", "interpret"]
