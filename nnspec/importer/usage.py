"""Which sizes a captured model uses: every dim of every value it computes or holds, and how often it applies a
module list or a block. A config key whose value is one of them is a size the spec's dims may need, whatever its
spelling (`d`, `k`, `depth`, `conv_kernel`), which `naming.Dims.from_config` reads beside the key's name."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn


def used_sizes(cap: Any) -> set[int]:
    """The sizes (>= 2) of the captured values' dims, module lists' lengths and a block's number of calls."""
    sizes: set[int] = set()
    for v in cap.values.values():
        for t in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(t, torch.Tensor):
                sizes.update(int(s) for s in t.shape)
    for mod in cap.model.modules():
        if isinstance(mod, nn.ModuleList):
            sizes.add(len(mod))
    calls: dict[str, int] = {}
    for n in cap.program.graph.nodes:
        for key, (path, _cls) in (n.meta.get("nn_module_stack") or {}).items():
            k = re.fullmatch(r".*@(\d+)", key)
            if k:
                calls[path] = max(calls.get(path, 1), int(k.group(1)) + 1)
    sizes.update(calls.values())
    return {s for s in sizes if s >= 2}
