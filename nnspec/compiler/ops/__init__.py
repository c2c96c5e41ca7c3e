"""Every graph op, registered in `OPS`; importing this package registers them all."""

from nnspec.compiler.ops import attention, contract, conv, elementwise, index, nn, reduce, shape, structure  # noqa: F401
from nnspec.compiler.ops.registry import OPS, OpDef

__all__ = ["OPS", "OpDef"]
