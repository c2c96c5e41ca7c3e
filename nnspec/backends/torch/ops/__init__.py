"""The torch backend's op rules, one file per op family as in `nnspec/compiler/ops/`: in each, an op's reference
lowering (`LOWERINGS`, run by the interpreter) beside its code emitter (`EMITTERS`, run by the code generator).
Importing this package fills both tables."""

from nnspec.backends.torch.ops import (  # noqa: F401  (each registers its rules)
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
from nnspec.backends.torch.rules import EMITTERS, LOWERINGS

__all__ = ["EMITTERS", "LOWERINGS"]
