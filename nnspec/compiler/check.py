"""`nnspec.check`: load, elaborate and analyse a spec; the report `nnspec check` prints."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import sympy

import nnspec.compiler.builtins  # noqa: F401  (registers the spec language's functions)
from nnspec.compiler.analysis import Analysis, ParamInfo
from nnspec.compiler.elaborate import Elaborator, UsageError
from nnspec.compiler.hf_config import load_config, map_config
from nnspec.compiler.ir import Model, TensorType
from nnspec.errors import SpecError, Warning_
from nnspec.spec import ast
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
    _refuse_unknown_overrides(spec, overrides)
    try:
        model = Elaborator(spec, overrides).elaborate()
        model.weight_maps = _weight_maps(spec, Analysis(model).parameters())
    except SpecError as err:  # the config's unused keys are still worth saying (the CLI prints them first)
        err.warnings = warnings  # type: ignore[attr-defined]
        raise
    return _report(model, spec, warnings)


def _pattern(rule: str) -> re.Pattern[str]:
    return re.compile("".join(rf"(?P<{part[1:-1]}>\d+)" if part.startswith("{") else re.escape(part)
                              for part in re.split(r"(\{\w+\})", rule)) + "$")


def _weight_maps(spec: Spec, params: list[ParamInfo]) -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
    """Every rule must match a parameter and every parameter must be matched by exactly one rule."""
    maps: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
    for source, rules in spec.weights.items():
        compiled = [(_pattern(r.ours), r) for r in rules]
        used: set[int] = set()
        for p in params:
            hits = [i for i, (pat, _) in enumerate(compiled) if pat.match(p.path)]
            if not hits:
                span = spec.weights_spans.get(source)
                raise SpecError("E027", f"parameter {p.path} has no mapping under weights.{source}", span)
            if len(hits) > 1:
                a, b = (compiled[i][1] for i in hits[:2])
                raise SpecError("E027", f"parameter {p.path} matches two rules: '{a.ours}' and '{b.ours}'",
                                b.span).with_note("the other rule", a.span)
            used.update(hits)
        for i, (_, r) in enumerate(compiled):
            if i not in used and "optional" not in r.transforms:
                raise SpecError("E027", f"weights.{source} rule '{r.ours}' matches no parameter", r.span)
        maps[source] = [(r.ours, r.theirs, tuple(t for t in r.transforms if t != "optional"))
                        for i, r in enumerate(rules) if i in used]
    return maps


def _refuse_unknown_overrides(spec: Spec, overrides: dict[str, Any]) -> None:
    """A name that is not a dim or option can only bind a free dim, and a free dim is a name the spec uses.

    Without this, `--set n_layers=2` (a typo) would bind an unused free dim and be silently ignored.
    """
    mentioned = _names_used(spec)
    for name in overrides:
        if name not in spec.dims and name not in spec.options and name not in mentioned:
            known = [*spec.dims, *spec.options]
            hint = difflib.get_close_matches(name, known, n=1)
            raise UsageError(f"cannot set {name!r}: not a dim, option or free dim of this spec"
                             + (f" (did you mean {hint[0]}?)" if hint else ""))


def _names_used(spec: Spec) -> set[str]:
    """Every name and axis name written anywhere in the spec's expressions, types and signatures."""
    out: set[str] = set()

    def walk(n: object) -> None:
        if isinstance(n, list):
            for v in n:
                walk(v)
        elif isinstance(n, ast.Node):
            if isinstance(n, ast.Name):
                out.add(n.id)
            elif isinstance(n, ast.AxisName):
                out.add(n.name)
            for value in vars(n).values():
                walk(value)

    walk([d.value for d in spec.dims.values()])
    walk([r.expr for r in spec.require])
    walk([t.type for t in (*spec.inputs.values(), *spec.outputs.values())])
    walk([[b.signature, b.body] for b in spec.blocks.values()])
    walk(spec.body)
    return out


def _report(model: Model, spec: Spec, warnings: list[Warning_]) -> CheckResult:
    an = Analysis(model)
    sizes = model.dims
    rows: list[Row] = []
    counted: set[str] = set()
    for node in model.graph:
        own = [i for i in node.inputs if model.graph[i].op == "param"]
        fresh = [i for i in own if i not in counted]
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
            # a parameterised op is known by its parameters' scope (ln_f), not the variable it was bound to
            scopes = [model.graph[i].attrs["path"].rpartition(".")[0] for i in fresh]
            kind, name = node.op, next((s for s in scopes if s), node.name)
        if tied:
            kind += f" (tied to {', '.join(tied)})"
        t = node.type
        shape = t.shape_str() if isinstance(t, TensorType) else "tuple"
        concrete = " x ".join(str(sizes.concrete(s)) for s in t.sizes) if isinstance(t, TensorType) else ""
        rows.append(Row(name, kind, shape, concrete, params, an.node_flops(node, model.graph)))
    return CheckResult(model, spec, rows, an.total_params(), an.total_flops(), warnings)
