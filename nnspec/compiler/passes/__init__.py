"""Graph passes and the optimisation pipeline: `optimize(model, level=2)` -> an optimised copy of the model.

- `-O0`: no pass; the spec's graph.
- `-O1`: canonicalize, fold-constants, cse, dce. Every number is bit for bit the same.
- `-O2`: `-O1`, then moe (before fuse-linear, which would fuse the router into other linears), fuse-linear,
  attention, rotary-tables, causal-into-mask (the causal triangle and-ed into a given mask, so the combined mask
  is hoisted), canonicalize, reassociate-products, cse, hoist-invariant (work every iteration of a repeat does
  alike, once per forward), cse, dce, and the fusion groups fuse-add-norm, fuse-epilogue, fuse-elementwise.
  The same numbers up to rounding.

`passes=["cse", "dce"]` (or `"cse,dce"`) runs exactly those instead. Every pass runs over the model body and
every block template (a template is shared by all its calls and every iteration of a repeat). The state
dict is the same at every level: passes never add, remove, rename or reorder parameters. By default optimised
graphs are for inference: recognising attention drops dropout on attention probabilities (the identity in
eval mode); with `training=True` (what `nnspec compile` and `nnspec.build` use) the fused attention does that
dropout itself, drawing the same random numbers.

The graph is verified after every pass that changed it when `verify=True` or the environment has
`NNSPEC_VERIFY=1` (tests do this); a pass that raises, or leaves a graph that fails verification, is reported
as an InternalError naming it and the passes run before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from nnspec.compiler.elaborate import UsageError
from nnspec.compiler.graph_edits import copy_model
from nnspec.compiler.ir import Graph, Model
from nnspec.compiler.passes.attention import RecognizeAttention
from nnspec.compiler.passes.base import Context, Explain, Pass
from nnspec.compiler.passes.canonicalize import Canonicalize
from nnspec.compiler.passes.causal_into_mask import CausalIntoMask
from nnspec.compiler.passes.cse import CommonSubexpressions
from nnspec.compiler.passes.dce import DeadCodeElimination
from nnspec.compiler.passes.fold_constants import FoldConstants
from nnspec.compiler.passes.fuse_add_norm import FuseAddNorm
from nnspec.compiler.passes.fuse_elementwise import FuseElementwise
from nnspec.compiler.passes.fuse_epilogue import FuseEpilogue
from nnspec.compiler.passes.fuse_linear import FuseLinear
from nnspec.compiler.passes.groups import refresh
from nnspec.compiler.passes.hoist_invariant import HoistInvariant
from nnspec.compiler.passes.moe import RecognizeMoE
from nnspec.compiler.passes.reassociate_products import ReassociateProducts
from nnspec.compiler.passes.rotary_tables import RotaryTables
from nnspec.compiler.verify import verify
from nnspec.errors import InternalError

PASSES: dict[str, Pass] = {p.name: p for p in (
    Canonicalize(), FoldConstants(), CommonSubexpressions(), DeadCodeElimination(), FuseLinear(),
    RecognizeAttention(), RecognizeMoE(), ReassociateProducts(), FuseAddNorm(), FuseEpilogue(),
    FuseElementwise(), RotaryTables(), HoistInvariant(), CausalIntoMask())}

_CLEANUP = ["canonicalize", "fold-constants", "cse", "dce"]
PIPELINES: dict[int, list[str]] = {
    0: [],
    1: _CLEANUP,
    2: [*_CLEANUP, "moe", "fuse-linear", "attention", "rotary-tables", "causal-into-mask", "canonicalize",
        "reassociate-products", "cse", "hoist-invariant", "cse", "dce",
        "fuse-add-norm", "fuse-epilogue", "fuse-elementwise"],
}

ExplainSink = list[str] | Callable[[str], None] | None


def pipeline(level: int = 0, passes: str | Sequence[str] | None = None) -> list[Pass]:
    """The passes `level` (or the explicit `passes` list, `"a,b,c"` or a sequence of names) runs, in order."""
    if passes is not None:
        names = [n.strip() for n in passes.split(",")] if isinstance(passes, str) else list(passes)
        names = [n for n in names if n]
        unknown = [n for n in names if n not in PASSES]
        if unknown:
            raise UsageError(f"unknown pass {unknown[0]!r}; passes are {', '.join(PASSES)}")
        return [PASSES[n] for n in names]
    if level not in PIPELINES:
        raise UsageError(f"optimisation level must be 0, 1 or 2, got {level!r}")
    return [PASSES[n] for n in PIPELINES[level]]


def level_label(model: Model, level: int) -> str:
    """How a generated file's header names the optimisation of `model`: `-O2`, plus `, passes cse,dce` when the
    passes that ran (`optimize` records them in the graph's meta) are not the level's own pipeline."""
    ran = model.graph.meta.get("passes")
    note = "" if ran is None or ran == PIPELINES.get(level) else f", passes {','.join(ran) or 'none'}"
    return f"-O{level}{note}"


def optimize(model: Model, level: int = 0, passes: str | Sequence[str] | None = None, explain: ExplainSink = None,
             *, training: bool = False, verify: bool | None = None) -> Model:
    """An optimised copy of `model` (the argument is not modified).

    `explain`: a list to append human-readable lines to, or a callable taking each line: every rewrite,
    fusion group formed and fusion refused (with its reason), each with the spec location `file:line:col`.
    """
    return run(model, pipeline(level, passes), explain, training=training, verify=verify)[0]


def run(model: Model, passes: list[Pass], explain: ExplainSink = None, *, training: bool = False,
        verify: bool | None = None) -> tuple[Model, list[tuple[str, str, bool]]]:
    """Run `passes` over a copy of the model: (the copy, [(pass, graph, changed) for every application])."""
    sink = explain.append if isinstance(explain, list) else explain
    out = copy_model(model)
    ctx = Context(out, Explain(sink), training)
    check = verify if verify is not None else os.environ.get("NNSPEC_VERIFY", "") not in ("", "0")
    done: list[str] = []
    log: list[tuple[str, str, bool]] = []
    for p in passes:
        for graph in out.graphs():
            try:
                new, changed = p.apply(ctx, graph)
                refresh(new)
            except Exception as err:
                raise InternalError(f"pass {p.name} failed on {graph.name} "
                                    f"({_after(done)}): {type(err).__name__}: {err}") from err
            _put(out, graph, new)
            log.append((p.name, new.name, changed))
            if check and (changed or not done):
                try:
                    verify_model(out, new)
                except InternalError as err:
                    raise InternalError(f"pass {p.name} left an invalid graph ({_after(done)}): {err}") from err
        done.append(p.name)
    _sync_outputs(model, out)
    out.graph.meta["passes"] = [*out.graph.meta.get("passes", []), *done]
    return out, log


def verify_model(model: Model, graph: Graph | None = None) -> None:
    """Verify one graph of the model (or all of them); raises InternalError."""
    for g in [graph] if graph is not None else model.graphs():
        verify(g, model.dims, model.templates)


def _after(done: list[str]) -> str:
    return f"after {', '.join(done)}" if done else "the first pass"


def _put(model: Model, old: Graph, new: Graph) -> None:
    if new is old:
        return
    if old is model.graph:
        model.graph = new
    else:
        model.templates = {k: (new if g is old else g) for k, g in model.templates.items()}


def _sync_outputs(before: Model, after: Model) -> None:
    """Spec output names follow the graph outputs by position (a pass may have replaced an output node)."""
    names = list(before.outputs)
    if len(names) == len(after.graph.outputs):
        after.outputs = dict(zip(names, after.graph.outputs, strict=True))


__all__ = ["PASSES", "PIPELINES", "Context", "Explain", "Pass", "level_label", "optimize", "pipeline", "run",
           "verify_model"]
