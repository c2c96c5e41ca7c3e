"""Every graph op, registered in `OPS`; importing this package registers them all."""

from nnspec.compiler.ops import (  # noqa: F401
    attention,
    contract,
    conv,
    elementwise,
    index,
    moe,
    nn,
    reduce,
    shape,
    structure,
)
from nnspec.compiler.ops.registry import OPS, OpDef

__all__ = ["OPS", "OpDef"]
