"""The torch dtype of each IR dtype."""

from __future__ import annotations

import torch

from nnspec.compiler.ir import DType

TORCH_DTYPES = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
                DType.int64: torch.int64, DType.int32: torch.int32, DType.bool: torch.bool}
