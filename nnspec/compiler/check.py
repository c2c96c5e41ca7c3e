"""`nnspec.check`: load, elaborate and analyse a spec; the report `nnspec check` prints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import sympy

import nnspec.compiler.builtins  # noqa: F401  (registers the spec language's functions)
from nnspec.compiler.analysis import Analysis
from nnspec.compiler.elaborate import Elaborator
from nnspec.compiler.hf_config import load_config, map_config
from nnspec.compiler.ir import Model, TensorType
from nnspec.errors import Warning_
from nnspec.spec.load import Spec, load


@dataclass
class Row:
    name: str
    kind: str
    shape: str
    concrete: str
    params: int
    flops: sympy.Expr


@dataclass
class CheckResult:
    model: Model
    spec: Spec
    rows: list[Row]
    params: int
    flops: sympy.Expr
    warnings: list[Warning_] = field(default_factory=list)

    @property
    def free_dims(self) -> list[str]:
        return sorted(n for n, s in self.model.dims.free.items() if s not in self.model.dims.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "params": self.params,
            "flops": str(self.flops),
            "free_dims": self.free_dims,
            "guards": [g.text for g in self.model.guards],
            "inputs": {k: str(self.model.graph[v].type) for k, v in self.model.inputs.items()},
            "outputs": {k: str(self.model.graph[v].type) for k, v in self.model.outputs.items()},
            "rows": [{"name": r.name, "kind": r.kind, "shape": r.shape, "concrete": r.concrete,
                      "params": r.params, "flops": str(r.flops)} for r in self.rows],
        }


def check(path_or_text: str | os.PathLike[str], *, config: str | os.PathLike[str] | None = None,
          **overrides: Any) -> CheckResult:
    """Check a spec (a path, or YAML text) with dims/options overridden or free dims bound by keyword.

    Raises `nnspec.SpecError` for a mistake in the spec, `UsageError` for a bad override.
    """
    spec = load(path_or_text)
    warnings: list[Warning_] = []
    if config is not None:
        data, source = load_config(config)
        mapped, warnings = map_config(spec, data, source)
        overrides = {**mapped, **overrides}
    model = Elaborator(spec, overrides).elaborate()
    return _report(model, spec, warnings)


def _report(model: Model, spec: Spec, warnings: list[Warning_]) -> CheckResult:
    an = Analysis(model)
    sizes = model.dims
    rows: list[Row] = []
    counted: set[str] = set()
    for node in model.graph:
        own = [i for i in node.inputs if model.graph[i].op == "param"]
        tied = [model.graph[i].attrs["path"] for i in own if i in counted]
        params = an.node_params(node) + sum(an.node_params(model.graph[i]) for i in own if i not in counted)
        counted.update(own)
        if node.op in ("input", "param", "const") or (params == 0 and not tied and
                                                      node.op not in ("call", "repeat", "einsum")):
            continue
        if node.op == "call":
            kind = f"{model.templates[node.attrs['block']].meta['block']}"
            name = node.attrs["scope"]
        elif node.op == "repeat":
            kind = f"{model.templates[node.attrs['block']].meta['block']} x{node.attrs['count']}"
            kind += " (shared)" if node.attrs["shared"] else ""
            name = node.attrs["scope"]
        else:
            kind, name = node.op, node.name
        if tied:
            kind += f" (tied to {', '.join(tied)})"
        t = node.type
        shape = t.shape_str() if isinstance(t, TensorType) else "tuple"
        concrete = " x ".join(str(sizes.concrete(s)) for s in t.sizes) if isinstance(t, TensorType) else ""
        rows.append(Row(name, kind, shape, concrete, params, an.node_flops(node, model.graph)))
    return CheckResult(model, spec, rows, an.total_params(), an.total_flops(), warnings)
