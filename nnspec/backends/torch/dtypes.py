"""The torch dtype of each IR dtype."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from nnspec.backends.torch.lazy import torch
from nnspec.compiler.ir import DType

_NAMES = {DType.float32: "float32", DType.float16: "float16", DType.bfloat16: "bfloat16", DType.int64: "int64",
          DType.int32: "int32", DType.bool: "bool"}


class _TorchDtypes(Mapping[DType, Any]):
    """`{DType.float32: torch.float32, ...}`, reading torch only on a lookup: the lowerings and the runtime look
    dtypes up; code generation imports the modules that hold them without needing torch."""

    def __getitem__(self, dtype: DType) -> Any:
        return getattr(torch, _NAMES[dtype])

    def __iter__(self) -> Iterator[DType]:
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)


TORCH_DTYPES: Mapping[DType, Any] = _TorchDtypes()
