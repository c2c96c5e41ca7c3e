"""Which runtime helpers a generated file may define, what each needs, and their source text.

The helpers themselves are real code in `runtime.py` (linted, unit-tested, called by the interpreter); a generated
file gets a verbatim copy of each one it uses, read from that module's source, so it imports nothing but torch.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

# read as text, not imported: generating a file needs no torch (runtime.py imports it)
RUNTIME = Path(__file__).with_name("runtime.py")

# helper -> the helpers it calls, in the order a generated file defines them (a helper after its dependencies)
HELPERS: dict[str, tuple[str, ...]] = {
    "LINEAR_ACTIVATIONS": (),
    "runs_onednn": (),
    "eager_cpu_inference": (),
    "aligns_rows": ("eager_cpu_inference",),
    "aligned_linear": (),
    "widens": ("eager_cpu_inference",),
    "linear": ("LINEAR_ACTIVATIONS", "runs_onednn", "aligns_rows", "aligned_linear", "widens"),
    "Linear": ("linear",),
    "weight_stamp": (),
    "kept_weight": ("weight_stamp",),
    "cat_weights": ("kept_weight",),
    "cast_weight": ("kept_weight",),
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


@cache
def _runtime() -> tuple[str, ast.Module]:
    text = RUNTIME.read_text(encoding="utf-8")
    return text, ast.parse(text)


def _dict_keys(name: str) -> frozenset[str]:
    """The keys of the module-level dict `name = {...}` in runtime.py."""
    for node in _runtime()[1].body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            return frozenset(ast.literal_eval(k) for k in node.value.keys if k is not None)
    raise KeyError(f"no runtime table {name!r}")


# activations the `linear` helper applies itself (oneDNN post-ops; its LINEAR_ACTIVATIONS table says how, in oneDNN
# and in torch), by op name. Not relu: oneDNN's relu post-op turns NaN into 0 where torch.relu keeps it.
LINEAR_ACTIVATIONS = _dict_keys("LINEAR_ACTIVATIONS") - {"none"}


@cache
def source(name: str) -> str:
    """The definition of `name` in `runtime.py`, with the comment lines right above it, as written there."""
    text, tree = _runtime()
    lines = text.split("\n")
    for node in tree.body:
        targets = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        if name in targets:
            start = node.lineno - 1
            while start > 0 and lines[start - 1].startswith("#"):
                start -= 1
            return "\n".join(lines[start:node.end_lineno])
    raise KeyError(f"no runtime helper {name!r}")
