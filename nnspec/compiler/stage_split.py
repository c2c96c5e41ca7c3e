"""Pipeline stages from a checked model (torch-free): the repeat split into contiguous runs of iterations.

What runs before the repeat (embeddings) goes on the first stage, what runs after it (final norm, LM head) on the
last. The split minimises the largest stage's cost, where a stage's cost is the cost model's FLOPs (or parameter
count) of its iterations plus, on the ends, the body's prologue or epilogue; it is found exactly by dynamic
programming over the contiguous splits. Stages are named by the first iteration's module path (`layers.6`), the
split points `torch.distributed.pipelining` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy

from nnspec.compiler.analysis import Analysis
from nnspec.compiler.ir import Model, Node, repeat_counts
from nnspec.compiler.tp_plan import PlanError


@dataclass(frozen=True)
class Stage:
    index: int
    first: int          # first iteration of the repeat on this stage
    stop: int           # one past the last
    cost: int           # FLOPs (or parameters) of the stage, ends included
    has_prologue: bool
    has_epilogue: bool


@dataclass(frozen=True)
class StagePlan:
    scope: str          # the repeat's module path (`layers`)
    count: int          # iterations of the repeat
    by: str             # "flops" or "params"
    layer_cost: int
    prologue_cost: int
    epilogue_cost: int
    stages: tuple[Stage, ...]

    def split_points(self) -> list[str]:
        """The module paths that begin each stage after the first (`layers.6`)."""
        return [f"{self.scope}.{s.first}" for s in self.stages[1:]]

    def explain(self) -> list[str]:
        lines = [f"pipeline: {len(self.stages)} stages over {self.scope} x{self.count}, balanced by {self.by} "
                 f"(one iteration {self.layer_cost:,}, prologue {self.prologue_cost:,}, "
                 f"epilogue {self.epilogue_cost:,})"]
        for s in self.stages:
            ends = " + prologue" * s.has_prologue + " + epilogue" * s.has_epilogue
            n = s.stop - s.first
            lines.append(f"  stage {s.index}: {self.scope}.{s.first}..{s.stop - 1} ({n} iteration{'s' * (n != 1)}"
                         f"{ends}), {self.by} {s.cost:,}")
        return lines


def split_stages(model: Model, stages: int, *, by: str = "flops", batch: int = 1, seq: int = 1) -> StagePlan:
    """Split `model`'s repeat into `stages` pipeline stages (FLOPs evaluated at `batch` x `seq` tokens)."""
    if by not in ("flops", "params"):
        raise PlanError(f"stages are balanced by 'flops' or 'params', got {by!r}")
    repeats = [n for n in model.graph if n.op == "repeat"]
    if len(repeats) != 1:
        raise PlanError(f"pipeline stages split one repeat of the model body; {model.name} has {len(repeats)}",
                        repeats[1].span if len(repeats) > 1 else None)
    rep = repeats[0]
    count, scope = int(rep.attrs["count"]), str(rep.attrs["scope"])
    if rep.attrs.get("shared") or rep.attrs.get("variants") or len(repeat_counts(rep.attrs, weights=False)) != 1:
        raise PlanError(f"repeat {scope} shares or varies its blocks across iterations; pipeline stages need one "
                        "weight set per iteration", rep.span)
    if stages < 1 or stages > count:
        raise PlanError(f"repeat {scope} runs {count} iterations; cannot make {stages} pipeline stages of at least "
                        "one iteration each", rep.span)
    _refuse_tied_ends(model, rep)
    analysis = Analysis(model)
    body = list(model.graph)
    at = body.index(rep)

    def cost_of(nodes: list[Node]) -> int:
        if by == "params":
            return sum(analysis.node_params(n) for n in nodes)
        return _number(sum((analysis.node_flops(n, model.graph) for n in nodes), sympy.Integer(0)), batch, seq)

    block = model.templates[rep.attrs["block"]]
    layer = analysis.graph_params(block.name) if by == "params" else _number(analysis.graph_flops(block.name),
                                                                              batch, seq)
    pro, epi = cost_of(body[:at]), cost_of(body[at + 1:])
    bounds = _balance(count, stages, layer, pro, epi)
    out = []
    for i, (first, stop) in enumerate(bounds):
        cost = (stop - first) * layer + (pro if i == 0 else 0) + (epi if i == stages - 1 else 0)
        out.append(Stage(i, first, stop, cost, i == 0, i == stages - 1))
    return StagePlan(scope, count, by, layer, pro, epi, tuple(out))


def _number(expr: sympy.Expr, batch: int, seq: int) -> int:
    """FLOPs at a concrete batch and sequence length (every free dim that is not B is a sequence length)."""
    expr = sympy.sympify(expr)
    values = {s: (batch if s.name == "B" else seq) for s in expr.free_symbols}
    return int(sympy.sympify(expr).xreplace(values))


def _balance(count: int, stages: int, layer: int, pro: int, epi: int) -> list[tuple[int, int]]:
    """Contiguous runs of iterations minimising the largest stage cost (ends included); ties keep earlier stages
    no larger than later ones."""
    def cost(i: int, a: int, b: int) -> int:
        return (b - a) * layer + (pro if i == 0 else 0) + (epi if i == stages - 1 else 0)

    @cache
    def best(i: int, a: int) -> tuple[int, tuple[int, ...]]:
        """Stages i.. over iterations a..count: (largest cost, stops)."""
        if i == stages - 1:
            return cost(i, a, count), (count,)
        options = []
        for b in range(a + 1, count - (stages - 1 - i) + 1):
            rest, stops = best(i + 1, b)
            options.append((max(cost(i, a, b), rest), -b, (b, *stops)))
        top, _, stops = min(options)
        return top, stops

    _, stops = best(0, 0)
    starts = (0, *stops[:-1])
    return list(zip(starts, stops, strict=True))


def _refuse_tied_ends(model: Model, rep: Node) -> None:
    """A parameter read both before and after the repeat (a head tied to the embedding) would sit on two stages."""
    body = list(model.graph)
    at = body.index(rep)
    before = {i for n in body[:at] for i in n.inputs}
    for node in body[at + 1:]:
        for name in node.inputs:
            src = model.graph[name]
            if src.op == "param" and name in before:
                raise PlanError(f"{src.attrs['path']} is read by the embedding on the first pipeline stage and by "
                                f"the head on the last (tied weights); untie them (e.g. --set "
                                "tie_word_embeddings=false) to pipeline this model", node.span)
