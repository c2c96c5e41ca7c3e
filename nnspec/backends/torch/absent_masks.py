"""Attention masks that are all True when the caller leaves optional inputs out: passed to the blocks as `None`.

GPT-2 and Llama write `visible[B, T, S] = keep[B, S] or not keep` from `keep = attention_mask == 1`, BERT passes
`keep` itself; `attention_mask` defaults to 1, so without it every key is visible and the mask says nothing.
Computing it anyway makes SDPA take its masked kernel in every layer (and GPT-2's causal mask cannot use
`is_causal`, whose kernel skips the hidden half of the scores). So, with the `sdpa` option, the generated model
records which optional inputs were given (`attention_mask_given = attention_mask is not None`, before the default
fills it) and passes a block argument as `visible if attention_mask_given else None` where

- the value is all True whenever those inputs are absent: worked out by evaluating the graph on uniform tensors
  (an absent input is its default everywhere; a pointwise op of uniform operands is uniform, folded as the
  constant folder does; a view of a uniform tensor is uniform), and
- the block uses that input only as an attention's boolean mask (directly, or by passing it to blocks that do), so
  every reader knows None: the attention emitters then write `attn_mask=None` and `is_causal`
  (ops/attention.py).

A mask with the causal triangle folded in (`causal-into-mask`: `visible & causal_mask(T, S)`, built once and handed
to every layer) is the triangle alone when those inputs are absent: it is passed as None too, where every reader is
a causal attention whose mask holds the triangle (`mask_causal`) over the same two axes (by position: a call hands
its arguments to the block's inputs one for one, and a relabel keeps the axes' order), which then runs SDPA's
causal kernel, masking exactly what the triangle did.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.context import ModuleContext, blocks_run
from nnspec.backends.torch.pysrc import Expr
from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.fold_constants import constant_of, evaluate

Triangle = tuple[int, int] | None   # None: all True; (i, j): the causal triangle over axes i (query), j (key)


@dataclass
class AbsentPlan:
    """`given`: node of the model graph -> the optional inputs it is all True without (any one given: unknown), or
    the causal triangle alone (`triangle`: node -> the positions of its query and key axes).
    `none_ok`: (template, input, triangle) for each block input that may receive as None a value of that kind."""

    given: dict[str, frozenset[str]] = field(default_factory=dict)
    triangle: dict[str, tuple[int, int]] = field(default_factory=dict)
    none_ok: set[tuple[str, str, Triangle]] = field(default_factory=set)


class Function(Protocol):
    """What this module reads of the function being generated (`function.FunctionGen`, which imports this)."""

    mg: ModuleContext
    model: Model | None
    graph: Graph
    params: dict[str, str]
    given_flags: dict[str, str]

    def fresh(self, hint: str) -> str: ...

    def reads_none_masks(self) -> bool: ...


_PLANS: weakref.WeakKeyDictionary[ModuleContext, AbsentPlan] = weakref.WeakKeyDictionary()
_EMPTY = AbsentPlan()


def plan_of(fn: Function) -> AbsentPlan:
    """The file's plan; empty without the `sdpa` option, and for a function whose generator picks its own
    attention emitter (Triton's template, which expects a tensor; the Triton generator's every function does)."""
    mg = fn.mg
    if not (mg.options.sdpa and fn.reads_none_masks()):
        return _EMPTY
    if mg not in _PLANS:
        _PLANS[mg] = _plan(mg.model)
    return _PLANS[mg]


def _plan(model: Model) -> AbsentPlan:
    out = AbsentPlan()
    memo: dict[tuple[str, int, Triangle], bool] = {}
    uniform = _uniform(model.graph)
    for name, (value, deps) in uniform.items():
        if value is True and deps and model.graph[name].tensor_type.dtype == DType.bool:
            out.given[name] = deps
    for node in model.graph:
        found = _triangle_only(model.graph, node, out.given)
        if found is not None:
            out.given[node.name], out.triangle[node.name] = found
    # the block inputs some call passes None: from the model's calls, on through the blocks' own calls
    todo = [(block, j, out.triangle.get(x)) for node in model.graph for j, x in enumerate(node.inputs)
            if x in out.given and _hands_on(node) and j >= _carried(node)
            and all(_none_ok(model, b, j, memo, out.triangle.get(x)) for b in blocks_run(node))
            for block in blocks_run(node)]
    while todo:
        block, i, kind = todo.pop()
        graph = model.templates[block]
        if (block, graph.inputs[i], kind) in out.none_ok:
            continue
        out.none_ok.add((block, graph.inputs[i], kind))
        todo += [(b, j, kind) for user in _readers(model, graph, graph.inputs[i]) for j, x in enumerate(user.inputs)
                 if x in _aliases(model, graph, graph.inputs[i]) for b in blocks_run(user)]
    return out


def _triangle_only(graph: Graph, node: Node, all_true: dict[str, frozenset[str]]) \
        -> tuple[frozenset[str], tuple[int, int]] | None:
    """(the optional inputs, the positions of the query and key axes) where `node` is `m & causal_mask(Q, K)` with
    `m` all True without those inputs: then it is the triangle alone."""
    if node.op != "logical_and" or len(node.inputs) != 2 or not isinstance(node.type, TensorType):
        return None
    for m, c in (node.inputs, node.inputs[::-1]):
        tri = graph[c]
        if m in all_true and tri.op == "causal_mask":
            names = node.type.names
            return all_true[m], (names.index(tri.attrs["q"].name), names.index(tri.attrs["k"].name))
    return None


def _aliases(model: Model, graph: Graph, name: str) -> set[str]:
    """`name` and the relabelling views of it (transitively)."""
    out, todo = {name}, [name]
    while todo:
        for user in graph.users(todo.pop()):
            if _relabel(model, graph, user) and user.name not in out:
                out.add(user.name)
                todo.append(user.name)
    return out


def _readers(model: Model, graph: Graph, name: str) -> list[Node]:
    """The nodes reading `name` or a relabelling view of it, views left out."""
    names = _aliases(model, graph, name)
    return [u for n in names for u in graph.users(n) if u.name not in names]


def _uniform(graph: Graph) -> dict[str, tuple[Any, frozenset[str]]]:
    """Nodes whose value is one constant everywhere when the optional inputs it depends on are absent."""
    known: dict[str, tuple[Any, frozenset[str]]] = {}
    for node in graph:
        if node.op == "input":
            if "default" in node.attrs:
                known[node.name] = (node.attrs["default"], frozenset([node.name]))
            continue
        const = constant_of(node)
        if const is not None:
            known[node.name] = (const[0], frozenset())
            continue
        if not node.inputs or any(i not in known for i in node.inputs) or not isinstance(node.type, TensorType):
            continue
        deps = frozenset().union(*(known[i][1] for i in node.inputs))
        if OPS[node.op].has("view") and len(node.inputs) == 1:
            known[node.name] = (known[node.inputs[0]][0], deps)
            continue
        dtypes = [graph[i].tensor_type.dtype for i in node.inputs]
        # the constant folder's evaluation: elementwise ops only (None for any other op, or an inexact fold)
        value = evaluate(node.op, node.attrs, [known[i][0] for i in node.inputs], dtypes, node.type.dtype)
        if value is not None:
            known[node.name] = (value, deps)
    return known


def _hands_on(node: Node) -> bool:
    """Does the node pass its arguments to its blocks' inputs one for one (a call, a repeat)? A scan does not: its
    block sees one step of each sequence."""
    return bool(blocks_run(node)) and node.op != "scan"


def _carried(node: Node) -> int:
    """How many leading arguments a repeat carries from one iteration to the next (replaced, so never None)."""
    if node.op != "repeat":
        return 0
    result = node.attrs["result"]
    return len(result) if isinstance(result, tuple) else 1


def _none_ok(model: Model, block: str, i: int, memo: dict[tuple[str, int, Triangle], bool], kind: Triangle) -> bool:
    """May input `i` of `block` be None in place of a value of this kind: every use an attention's mask (one that
    holds the same triangle, for the triangle alone), or an argument of blocks that allow it."""
    key = (block, i, kind)
    if key not in memo:
        memo[key] = False   # a recursive block (none today) is refused
        graph = model.templates[block]
        memo[key] = _uses_ok(model, graph, graph.inputs[i], memo, kind)
    return memo[key]


def _uses_ok(model: Model, graph: Graph, name: str, memo: dict[tuple[str, int, Triangle], bool],
             kind: Triangle) -> bool:
    if name in graph.outputs:
        return False
    for user in graph.users(name):
        slots = [j for j, x in enumerate(user.inputs) if x == name]
        if user.op == "attention":
            ok = user.attrs["has_mask"] and slots == [3] and (kind is None or _holds(graph, user, kind))
        elif _hands_on(user):
            ok = all(j >= _carried(user) and all(_none_ok(model, b, j, memo, kind) for b in blocks_run(user))
                     for j in slots)
        else:
            ok = _relabel(model, graph, user) and _uses_ok(model, graph, user.name, memo, kind)
        if not ok:
            return False
    return True


def _holds(graph: Graph, attention: Node, kind: tuple[int, int]) -> bool:
    """Is the attention causal, with a mask that holds its triangle, over the mask's axes at positions `kind`?"""
    a = attention.attrs
    names = graph[attention.inputs[3]].tensor_type.names
    return bool(a["causal"] and a.get("mask_causal")) and max(kind) < len(names) and \
        (names[kind[0]], names[kind[1]]) == (a["query"], a["key"])


def _relabel(model: Model, graph: Graph, node: Node) -> bool:
    """A view that only renames axes (`keep[B, S]` of `keep[B, T]`): the generated code writes its input as is."""
    if not OPS[node.op].has("view") or len(node.inputs) != 1 or not isinstance(node.type, TensorType):
        return False
    src = graph[node.inputs[0]].tensor_type
    out = node.tensor_type
    return tuple(node.attrs.get("perm", ())) == tuple(range(src.rank)) and out.rank == src.rank and \
        all(model.dims.equal(x.size, y.size) is True for x, y in zip(src.axes, out.axes, strict=True))


def block_args(fn: Function, node: Node, ins: list[Expr]) -> list[Expr]:
    """A call's or repeat's arguments, each that is all True without some optional inputs as
    `x if <one of them given> else None` where every block it reaches accepts None."""
    plan = plan_of(fn)
    if fn.model is None or not plan.given or not _hands_on(node):
        return ins
    out = list(ins)
    for j, x in enumerate(node.inputs):
        deps = plan.given.get(x)
        kind = plan.triangle.get(x)
        if deps is None or j < _carried(node) or \
                not all((b, fn.mg.model.templates[b].inputs[j], kind) in plan.none_ok for b in blocks_run(node)):
            continue
        flags = [P.Name(given_flag(fn, d)) for d in sorted(deps)]
        test = flags[0]
        for f in flags[1:]:
            test = P.binop("or", test, f)
        out[j] = P.IfExp(ins[j], test, P.Lit(None))
    return out


def given_flag(fn: Function, input_node: str) -> str:
    """The variable that says whether the caller gave the optional input (set before its default fills it)."""
    if input_node not in fn.given_flags:
        fn.given_flags[input_node] = fn.fresh(f"{fn.params[input_node]}_given")
    return fn.given_flags[input_node]


def may_be_none(fn: Function, name: str) -> bool:
    """Is `name` (an input of the block `fn` writes, or a relabelling view of one) possibly None at run time?"""
    graph = fn.graph
    while name in graph.nodes and name not in graph.inputs and _relabel(fn.mg.model, graph, graph[name]):
        name = graph[name].inputs[0]
    return fn.model is None and name in graph.inputs and \
        any((graph.name, name, kind) in plan_of(fn).none_ok for kind in _kinds(plan_of(fn)))


def _kinds(plan: AbsentPlan) -> set[Triangle]:
    return {None, *plan.triangle.values()}
