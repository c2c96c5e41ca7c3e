"""What a generated file's decoding step needs besides the model's own code: the static cache of one causal
attention call (`KVCache`) and the mask over the whole cache (`decode_mask`).

Real code, imported by the node-by-node reference step (`decode.DecodeStep`) and copied verbatim into a generated
file that has a `decode_step` (`decode_codegen`), so the file still imports nothing but torch.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """The keys and values one causal attention call has seen, preallocated for the whole sequence: the step writes
    the new tokens' keys and values at their positions (`index_copy_`, in place, so `torch.export` keeps the
    buffers as mutated state and `torch.compile` one graph for every step) and attends over all of it."""

    def __init__(
        self, k_shape: tuple[int, ...], v_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None
    ) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(k_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(v_shape, dtype=dtype, device=device), persistent=False)


def decode_mask(key_mask: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """[B, t, length] bool: cache slot j is visible to the new token at position p when j <= p and slot j holds a
    token (`key_mask` [B, length]: 1 = token, 0 = padding or not written yet). A padding query still sees its own
    slot, so no row is empty (as the spec's padding mask does in the full forward)."""
    slots = torch.arange(key_mask.shape[-1], device=key_mask.device)
    causal = slots <= cache_position[:, None]
    own = slots == cache_position[:, None]
    return causal & ((key_mask[:, None, :] != 0) | own)
