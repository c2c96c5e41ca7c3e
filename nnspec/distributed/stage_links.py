"""Stage-to-stage forwarding of the values a traced pipeline split hands past a stage.

PyTorch's tracing frontend (`torch.distributed.pipelining.pipeline`) sends a value from the stage that makes it to
every stage that reads it. A generated module computes some tensors once, before its repeat, for every layer (the
llama spec's rotary positions and attention mask): the split sends those from stage 0 straight to stages 2, 3, ...
GPipe and 1F1B accept such skip sends; the multi-stage schedules (`ScheduleInterleaved1F1B`, looped BFS) accept only
adjacent-stage communication. `forward_through_stages` rewrites the split so that every stage in between takes the
value as an extra input and returns it as an extra output: each value then crosses one boundary at a time.

This is sound because a pass-through stage returns its extra input unchanged (a copy: the received buffer is reused
by the next microbatch's receive) and the later stage reads the same tensor it read before; only the route changes.
A float value forwarded this way would carry its gradient back through the same copies.
"""

from __future__ import annotations

import operator

from torch import fx
from torch.distributed.pipelining import Pipe

from nnspec.compiler.tp_plan import PlanError


def forward_through_stages(pipe: Pipe) -> int:
    """Route every value that skips a stage through the stages in between. Returns the number of links added."""
    graph = pipe.split_gm.graph
    calls = [n for n in graph.nodes if n.op == "call_module"]
    index = {c.name: i for i, c in enumerate(calls)}
    # (producing outer node, stage index k) -> the outer node holding that value as stage k outputs it
    routed: dict[tuple[fx.Node, int], fx.Node] = {}
    added = 0
    for j, call in enumerate(calls):
        for a in range(len(call.args)):
            arg = call.args[a]   # read afresh: routing through an earlier stage may have rewritten this call's args
            if not isinstance(arg, fx.Node):
                continue
            src = _producer(arg, index)
            if src is None:
                if j > 0:
                    raise PlanError(f"pipeline stage {j} reads the model input {arg.name} directly; only the first "
                                    "stage receives the model's inputs")
                continue
            if src >= j - 1:
                continue
            meta = _placeholders(pipe, j)[a].meta
            value = arg
            for k in range(src + 1, j):
                key = (arg, k)
                if key not in routed:
                    routed[key] = _pass_through(pipe, calls[k], k, value, meta)
                    added += 1
                value = routed[key]
            call.update_arg(a, value)
    if added:
        graph.lint()
        pipe.split_gm.recompile()
    return added


def _producer(node: fx.Node, index: dict[str, int]) -> int | None:
    """The stage whose output `node` is (through getitem), or None for a model input."""
    while node.op == "call_function" and node.target is operator.getitem:
        node = node.args[0]  # type: ignore[assignment]
    if node.op == "call_module":
        return index[node.name]
    return None


def _placeholders(pipe: Pipe, stage: int) -> list[fx.Node]:
    return [n for n in _stage_graph(pipe, stage).nodes if n.op == "placeholder"]


def _stage_graph(pipe: Pipe, stage: int) -> fx.Graph:
    gm = pipe.get_stage_module(stage)
    assert isinstance(gm, fx.GraphModule), f"the pipeline frontend made a {type(gm).__name__}"
    return gm.graph


def _pass_through(pipe: Pipe, call: fx.Node, stage: int, value: fx.Node, meta: dict) -> fx.Node:
    """Stage `stage` returns a copy of `value` as a new last output (taking it as a new last input unless it reads it
    already); the outer node for that output."""
    gm = pipe.get_stage_module(stage)
    assert isinstance(gm, fx.GraphModule)
    inner = gm.graph
    placeholders = _placeholders(pipe, stage)
    reads = [i for i, a in enumerate(call.args) if a is value]
    if reads:                  # the stage reads the value itself: return what it received, no second input
        new_in = placeholders[reads[0]]
    else:
        with inner.inserting_after(placeholders[-1]):
            new_in = inner.placeholder(f"forwarded_{value.name}")
        new_in.meta.update({k: v for k, v in meta.items() if k in ("val", "tensor_meta")})
        call.args = (*call.args, value)
    output = next(n for n in inner.nodes if n.op == "output")
    with inner.inserting_before(output):
        copy = inner.call_method("clone", (new_in,))
    copy.meta.update(new_in.meta)
    outer = call.graph
    (result,) = output.args
    if not isinstance(result, (tuple, list)):
        # one output so far: make it a tuple, and have the outer graph read its first element
        users = list(call.users)
        with outer.inserting_after(call):
            first = outer.call_function(operator.getitem, (call, 0))
        for user in users:
            user.replace_input_with(call, first)
        result = (result,)
    output.args = ((*result, copy),)
    gm.recompile()
    getters = [u for u in call.users if u.op == "call_function" and u.target is operator.getitem]
    after = max(getters, key=lambda n: _position(outer, n), default=call)
    with outer.inserting_after(after):
        return outer.call_function(operator.getitem, (call, len(result)))


def _position(graph: fx.Graph, node: fx.Node) -> int:
    return next(i for i, n in enumerate(graph.nodes) if n is node)
