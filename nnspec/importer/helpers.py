"""nnspec's own generated runtime helpers captured as single calls, so that a generated module can be imported.

A module nnspec generated computes its sparse mixture of experts with `moe_swiglu` (a copy of the runtime helper
in `nnspec/backends/torch/runtime.py`, defined in the generated file): its dispatch reads the per-expert token
counts on the host (`bincount(...).tolist()`), which `torch.export` cannot capture. While capturing, each such
helper in the modules that define the model's classes is replaced by a call of a custom op
(`nnspec_import::moe_swiglu`) whose implementation is the helper itself, so the exported graph holds one node with
the helper's arguments and the recorded values are the helper's own outputs. `moe.lift_moe_call` turns the node
into `moe(...)`, checked against the dense gated sum on those values: a look-alike helper that computes something
else is refused, never mis-lifted.

A helper is recognised by its name and signature (the parameters the generated call passes); the value check is
what makes the lift sound. The originals are restored when capture ends, also on failure.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# helper name -> the parameters a generated call passes, in order
_SIGNATURES = {"moe_swiglu": ("x", "router", "gate_proj", "up_proj", "down_proj", "k", "norm_topk_prob")}
OP_NAMES = {"moe_swiglu": "nnspec_import.moe_swiglu.default"}      # str(node.target) of the captured call

_active: list[Callable[..., torch.Tensor]] = []   # the helper being captured (innermost last): the op's body
_op: Any = None


def _moe_op() -> Any:
    """The custom op, registered once per process."""
    global _op
    if _op is None:
        @torch.library.custom_op("nnspec_import::moe_swiglu", mutates_args=())
        def moe_swiglu(x: torch.Tensor, router: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
                       down_proj: torch.Tensor, k: int, norm_topk_prob: bool) -> torch.Tensor:
            if not _active:
                raise RuntimeError("nnspec_import::moe_swiglu runs only while nnspec import captures a model")
            return _active[-1](x, router, gate_proj, up_proj, down_proj, k=k, norm_topk_prob=norm_topk_prob).clone()

        @moe_swiglu.register_fake
        def _(x: torch.Tensor, router: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
              down_proj: torch.Tensor, k: int, norm_topk_prob: bool) -> torch.Tensor:
            return torch.empty_like(x)          # one output per token and feature, like its input

        _op = moe_swiglu
    return _op


def _is_helper(fn: Any, name: str) -> bool:
    if not inspect.isfunction(fn) or fn.__name__ != name:
        return False
    try:
        return tuple(inspect.signature(fn).parameters) == _SIGNATURES[name]
    except (TypeError, ValueError):
        return False


@contextmanager
def helpers_as_calls(model: nn.Module) -> Iterator[int]:
    """Within the block, nnspec's generated helpers called by `model`'s classes are custom-op calls; yields how
    many were replaced."""
    patched: list[tuple[dict[str, Any], str, Any]] = []
    seen: set[int] = set()
    for mod in model.modules():
        namespace = getattr(sys.modules.get(type(mod).__module__), "__dict__", None)
        if namespace is None or id(namespace) in seen:
            continue
        seen.add(id(namespace))
        for name in _SIGNATURES:
            fn = namespace.get(name)
            if _is_helper(fn, name):
                patched.append((namespace, name, fn))
    if not patched:
        yield 0
        return
    op = _moe_op()
    originals = []
    for namespace, name, fn in patched:
        namespace[name] = _calling(op)
        originals.append(fn)
    _active.append(originals[-1])
    try:
        yield len(patched)
    finally:
        _active.pop()
        for namespace, name, fn in patched:
            namespace[name] = fn


def _calling(op: Any) -> Callable[..., torch.Tensor]:
    def call(x: torch.Tensor, router: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
             down_proj: torch.Tensor, k: int, norm_topk_prob: bool) -> torch.Tensor:
        return op(x, router, gate_proj, up_proj, down_proj, int(k), bool(norm_topk_prob))
    return call
