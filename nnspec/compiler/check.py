"""`nnspec.check`: load, elaborate and analyse a spec; the report `nnspec check` prints.

The report (a row per parameterised op or block call, the parameter count and the FLOPs) is computed on first
use and once per result: a transformed model gets a fresh `CheckResult` (`with_model`) whose report is computed
only if someone reads it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import sympy

import nnspec.compiler.builtins  # noqa: F401  (registers the spec language's functions)
from nnspec.compiler.analysis import Analysis
from nnspec.compiler.elaborate import BUILTINS, Elaborator, UsageError
from nnspec.compiler.hf_config import load_config, map_config
from nnspec.compiler.ir import Model, Node, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.weight_map import resolve as resolve_weight_maps
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


@dataclass(frozen=True)
class Report:
    """What `nnspec check` prints for a model: its rows and totals."""

    rows: list[Row]
    params: int
    flops: sympy.Expr


@dataclass
class CheckResult:
    """A checked (possibly transformed) model, the spec it came from, and the report on it (computed lazily)."""

    model: Model
    spec: Spec
    warnings: list[Warning_] = field(default_factory=list)

    @cached_property
    def report(self) -> Report:
        return summarize(self.model)

    @property
    def rows(self) -> list[Row]:
        return self.report.rows

    @property
    def params(self) -> int:
        return self.report.params

    @property
    def flops(self) -> sympy.Expr:
        return self.report.flops

    def _repr_html_(self) -> str:
        """In a notebook: the table `nnspec check` prints and the block graph (nnspec.compiler.notebook)."""
        from nnspec.compiler.notebook import summary_html
        return summary_html(self)

    def _repr_svg_(self) -> str:
        from nnspec.compiler.notebook import graph_svg
        return graph_svg(self)

    def with_model(self, model: Model) -> CheckResult:
        """The result for `model` (this one transformed): the same spec and warnings, a report of its own."""
        return CheckResult(model, self.spec, self.warnings)

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
    return check_spec(load(path_or_text), config=config, **overrides)


def check_spec(spec: Spec, *, config: str | os.PathLike[str] | None = None, **overrides: Any) -> CheckResult:
    """`check` for a spec already loaded (the pipeline loads it as a stage of its own)."""
    warnings: list[Warning_] = []
    if config is not None:
        data, source = load_config(config)
        mapped, warnings = map_config(spec, data, source)
        overrides = {**mapped, **overrides}
    _refuse_unknown_overrides(spec, overrides)
    try:
        model = Elaborator(spec, overrides).elaborate()
        model.weight_maps = resolve_weight_maps(spec, [p.path for p in Analysis(model).parameters()])
    except SpecError as err:  # the config's unused keys are still worth saying (the CLI prints them first)
        err.warnings = warnings  # type: ignore[attr-defined]
        raise
    return CheckResult(model, spec, warnings)


def _refuse_unknown_overrides(spec: Spec, overrides: dict[str, Any]) -> None:
    """A name that is not a dim or option can only bind a free dim, and a free dim is a name the spec uses.

    Without this, `--set n_layers=2` (a typo) would bind an unused free dim and be silently ignored.
    """
    mentioned = _names_used(spec)
    for name in overrides:
        what = ("an input" if name in spec.inputs else "an output" if name in spec.outputs else
                "a block" if any(b == name for b in spec.blocks) else "a built-in function" if name in BUILTINS
                else None)
        if what is not None and name not in spec.dims and name not in spec.options:
            # a name the spec uses, but not a size: setting it would be silently ignored
            raise UsageError(f"cannot set {name!r}: it is {what}, not a dim, option or free dim of this spec")
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


def summarize(model: Model) -> Report:
    """The rows `nnspec check` prints (each op with parameters, each block call and repeat) and the totals."""
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
        block = _block_row(model, node)
        # sources (inputs, parameters, constants, tables) are not rows; an op is one when it has parameters of its
        # own or tied, or is a block applied, or a contraction (einsum: FLOPs worth a row without parameters)
        if OPS[node.op].has("source") or (params == 0 and not tied and block is None and node.op != "einsum"):
            continue
        if block is not None:
            kind, name = block
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
    return Report(rows, an.total_params(), an.total_flops())


def _block_row(model: Model, node: Node) -> tuple[str, str] | None:
    """(kind, name) of the row of a block call (`mlp`) or a repeat (`block x12 (shared)`); None for other ops."""
    if node.op == "call":
        return model.templates[node.attrs["block"]].meta["block"], node.attrs["scope"]
    if node.op == "repeat":
        kind = f"{model.templates[node.attrs['block']].meta['block']} x{node.attrs['count']}"
        return kind + (" (shared)" if node.attrs["shared"] else ""), node.attrs["scope"]
    return None
