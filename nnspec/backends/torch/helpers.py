"""Which runtime helpers a generated file may define, what each needs, and their source text.

The helpers themselves are real code in `runtime.py` (linted, unit-tested, called by the interpreter); a generated
file gets a verbatim copy of each one it uses, read from that module's source, so it imports nothing but torch.
"""

from __future__ import annotations

import ast
import inspect
from functools import cache

from nnspec.backends.torch import runtime

# helper -> the helpers it calls, in the order a generated file defines them (a helper after its dependencies)
HELPERS: dict[str, tuple[str, ...]] = {
    "LINEAR_ACTIVATIONS": (),
    "runs_onednn": (),
    "linear": ("LINEAR_ACTIVATIONS", "runs_onednn"),
    "Linear": ("linear",),
    "cat_weights": (),
    "plain_linears": ("Linear",),
    "linear_act": ("plain_linears",),
    "linear_group": ("plain_linears", "cat_weights"),
    "rms_norm": (),
    "RMSNorm": ("rms_norm",),
    "rotary_tables": (),
    "apply_rotary": (),
    "apply_rotary_interleaved": (),
    "sinusoidal_table": (),
    "drop_path": (),
    "moe_route": (),
    "moe_swiglu": ("moe_route",),
    "linear_scan": (),
    "affine_scan": ("linear_scan",),
}

# activations the `linear` helper applies itself (oneDNN post-ops; its LINEAR_ACTIVATIONS table says how, in oneDNN
# and in torch), by op name. Not relu: oneDNN's relu post-op turns NaN into 0 where torch.relu keeps it.
LINEAR_ACTIVATIONS = frozenset(runtime.LINEAR_ACTIVATIONS) - {"none"}


@cache
def source(name: str) -> str:
    """The definition of `name` in `runtime.py`, with the comment lines right above it, as written there."""
    text = inspect.getsource(runtime)
    lines = text.split("\n")
    for node in ast.parse(text).body:
        targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        if name in targets:
            start = node.lineno - 1
            while start > 0 and lines[start - 1].startswith("#"):
                start -= 1
            return "\n".join(lines[start:node.end_lineno])
    raise KeyError(f"no runtime helper {name!r}")
