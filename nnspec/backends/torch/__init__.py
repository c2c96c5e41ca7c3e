"""The PyTorch backend: the reference interpreter and (later) generated modules."""

from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError, interpret

__all__ = ["Interpreter", "RuntimeShapeError", "interpret"]
