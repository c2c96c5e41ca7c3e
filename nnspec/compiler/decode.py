"""Incremental decoding, derived from the spec: which ops run on the new tokens only, where keys and values are
cached, where positions enter, and what cannot be decoded one step at a time.

The sequence axis is the query axis of the model's causal attention; every axis of the same size (a symbol, the
free dim `T`) is a view of it: the query side keeps its name, the key side is relabelled (`k[B, S, ...]`).
Over the graph the attention pass has run on (spelled-out attention becomes one `attention` node), each node
is one of:

- a **cache site**: `attention` causal over the sequence (query axis `T`, key axis `S`). Its keys and values, computed
  from the new tokens (after rotary), are written into a static cache at their absolute positions, and the queries
  attend over the whole cache. Where the attention reads them through a widening cast (a bf16 model's attention computes
  in float32: `keeps_float32`), the cache holds the value before the cast, in the model's dtype, and the step widens it
  on read: the cast is exact, so the numbers are the same at half the bytes. Sound because causal attention at position
  t reads keys and values at positions <= t only, each a function of that position's input alone (everything before it
  is position-wise). Its bool mask must come from the model's `attention_mask` input (the padding mask, which the step
  keeps for the whole cache); an additive bias over the keys (ALiBi) is refused.
- a **position source**: `arange` over the sequence (absolute positions: learned tables index them), `rotary`
  over it (rotated at the absolute positions unless the spec passes its own `positions`), `sinusoidal` over it.
  In a step they take the new tokens' absolute positions instead of 0, 1, ...
- **position-wise**: everything else that leaves the sequence alone - pointwise ops, relabels, linears, norms
  over features, attention over another axis: run on the new tokens only, exactly as in the full forward.
- a **recurrent state**: a `scan` over the sequence (retention, an SSM) runs over the new tokens from the state
  the previous step left (the spec's initial state at position 0) and leaves its final state in the cache. Sound
  because a scan's output at t depends on positions before t only through its state.
- a **window state**: a causal convolution written as `conv(concat(prefix, x, over=...), kernel K, stride 1, no
  padding)` with a prefix K-1 positions long (Mamba's depthwise conv: zeros before the sequence). In a step the
  prefix is the last K-1 inputs the previous step saw (the spec's prefix at position 0), and the last K-1 positions
  of the concatenation are kept for the next step. Sound because output t reads inputs t-K+1..t only.
- **refused**, with the op's place: an op that reduces, reorders, shifts or mixes positions (a softmax, sum,
  cumsum, pooling, a convolution other than a window's, slice, split or `take` over the sequence), non-causal
  attention over it, a causal mask outside a recognised attention.

`derive(model)` returns the `DecodePlan` (the site executions in run order, with each cache's type, so the
cache is allocated once, statically, in the model's dtype) or raises a located `SpecError` E015.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from nnspec.compiler.analysis import DTYPE_BYTES
from nnspec.compiler.ir import Axis, Graph, Model, Node, TensorType, repeat_plan
from nnspec.compiler.ops import OPS
from nnspec.errors import SpecError

# `repeat`/`call` run a block per layer; the cache holds one entry per execution of a site
_STRUCTURE = "structure"
# attributes that hold names other than axes (an input's, a parameter's path, a block's) or types
_NOT_AXES = frozenset({"type", "params", "result", "name", "path", "block", "scope", "init"})


@dataclass(frozen=True)
class Site:
    """One execution of a causal attention node: its graph (block template), node, and the types of the keys and
    values its cache stores (`cached_values`; the key axis `key` becomes the cache length)."""

    graph: str
    node: str
    key: str
    k_type: TensorType
    v_type: TensorType


@dataclass(frozen=True)
class State:
    """One execution of a scan over the sequence (`kind` "scan": the node is the scan, the type its state's) or of
    a causal convolution's window (`kind` "window": the node is the concat before the conv, the type its prefix's:
    the last K-1 inputs)."""

    graph: str
    node: str
    type: TensorType
    kind: str = "scan"


@dataclass
class DecodePlan:
    """What a decoding step runs: see the module's docstring."""

    seq: sympy.Symbol                      # the sequence dim (T)
    batch: sympy.Symbol | None             # the batch dim of the inputs, if any (B)
    sites: list[Site]                      # one per execution, in run order (layers unrolled)
    states: list[State]                    # one per execution of a scan over the sequence, in run order
    positions: dict[tuple[str, str], str]  # (graph, node) -> "positions" | "rotary" | "table"
    sequence_axes: dict[str, frozenset[str]]  # graph -> names of its axes sized by the sequence
    mask_input: str | None                 # the model input holding the padding mask (HF `attention_mask`)
    position_input: str | None             # the model input holding per-row positions (HF `position_ids`)
    values: dict[sympy.Symbol, int] = field(default_factory=dict)  # the bound dims (sizes of the cache's axes)
    order: list[Site | State] = field(default_factory=list)  # sites and states together, in run order

    def cache_bytes(self, batch: int, length: int, itemsize: int | None = None) -> int:
        """Bytes of the static cache for `batch` rows and `length` positions (each site's keys and values)."""
        total = 0
        for s in self.sites:
            for t in (s.k_type, s.v_type):
                total += cache_numel(self, t, s.key, batch, length, self.values) * (itemsize or _itemsize(t))
        return total


def _itemsize(t: TensorType) -> int:
    return DTYPE_BYTES[t.dtype]


def cached_values(graph: Graph, attention: Node) -> tuple[str, str]:
    """The nodes whose values a causal attention's cache stores for its keys and values: the attention's inputs, or,
    where both are widening casts of floats of one dtype (a bf16 model's attention reads float32: the dtype
    transform's `keeps_float32` islands), the values before the casts. Widening a float is exact, so storing the
    narrow value and widening it on read gives the same numbers as caching the wide one, in the model's dtype
    (the bytes of Hugging Face's cache). The cost model's KV bytes count these values too."""
    k, v = attention.inputs[1], attention.inputs[2]
    narrow = [_widened(graph, name) for name in (k, v)]
    if narrow[0] is None or narrow[1] is None or \
            graph[narrow[0]].tensor_type.dtype != graph[narrow[1]].tensor_type.dtype:
        return k, v
    return narrow[0], narrow[1]


def _widened(graph: Graph, name: str) -> str | None:
    """The input of `name` when it is a cast of a float to a wider float (same axes), else None."""
    node = graph[name]
    if node.op != "cast" or not isinstance(node.type, TensorType):
        return None
    src = graph[node.inputs[0]]
    if not isinstance(src.type, TensorType) or not src.type.dtype.is_float or not node.type.dtype.is_float or \
            _itemsize(src.type) >= _itemsize(node.type) or src.type.names != node.type.names:
        return None
    return src.name


def cache_shape(plan: DecodePlan, t: TensorType, key: str, values: dict[sympy.Symbol, int], batch: int,
                length: int) -> list[int]:
    """The cache's shape for a key/value type: the key axis holds `length` positions, the batch axis `batch`."""
    subs: dict[Any, int] = dict(values)
    subs[plan.seq] = length
    if plan.batch is not None:
        subs[plan.batch] = batch
    out = []
    for a in t.axes:
        size = length if a.name == key else sympy.sympify(a.size).xreplace(subs)
        out.append(int(size))
    return out


def cache_numel(plan: DecodePlan, t: TensorType, key: str, batch: int, length: int,
                values: dict[sympy.Symbol, int] | None = None) -> int:
    n = 1
    for s in cache_shape(plan, t, key, values or {}, batch, length):
        n *= s
    return n


def _refuse(node: Node, why: str) -> SpecError:
    return SpecError("E015", f"cannot decode incrementally: {why}", node.span)


def _seq_symbol(model: Model) -> sympy.Symbol:
    """The size of the query axis of the first causal attention (or the axis of the first scan); refused when
    there is none."""
    for g in model.graphs():
        for node in g:
            if node.op == "scan":
                size = _size(node.attrs["axis"], _bound(model))
                if isinstance(size, sympy.Symbol) and size.name in model.dims.free:
                    return size
            if node.op == "attention" and node.attrs["causal"]:
                q = g[node.inputs[0]].tensor_type.axis(node.attrs["query"])
                assert q is not None
                size = sympy.sympify(q.size)
                if isinstance(size, sympy.Symbol) and size.name in model.dims.free:
                    return size
                raise _refuse(node, f"the causal attention's query axis {q.name} has the fixed size {size}; "
                              "decoding needs a free sequence dim")
    # located at the first attention (non-causal, then), else at the first input
    where = next((n for g in model.graphs() for n in g if n.op == "attention" and n.span is not None), None) or \
        model.graph[next(iter(model.inputs.values()))]
    raise SpecError("E015", f"cannot decode incrementally: {model.name} has no causal attention over a sequence "
                    "axis (spelled out, `where(causal_mask(T, S), s, -inf)`, or `attention(..., causal=true)`) and "
                    "no scan over one", where.span)


def _bound(model: Model) -> dict[Any, Any]:
    """The dims bound to numbers: `T + conv_pad - 3` with conv_pad = 3 is the sequence's size."""
    return {s: v for s, v in model.dims.values.items() if sympy.sympify(v).is_Integer}


def _size(a: Axis, bound: dict[Any, Any]) -> Any:
    return sympy.sympify(a.size).xreplace(bound)


def _axes_of(graph: Graph, seq: sympy.Symbol, bound: dict[Any, Any]) -> frozenset[str]:
    names: set[str] = set()
    for node in graph:
        types = node.type if isinstance(node.type, tuple) else (node.type,)
        for t in types:
            names.update(a.name for a in t.axes if _size(a, bound) == seq)
    return frozenset(names)


def _mentions(value: Any, axes: frozenset[str]) -> bool:
    """Whether an attribute names one of `axes` (a name, an Axis, or inside a tuple)."""
    if isinstance(value, str):
        return value in axes
    if isinstance(value, Axis):
        return value.name in axes
    if isinstance(value, (tuple, list)):
        return any(_mentions(v, axes) for v in value)
    return False


def _types(node: Node) -> tuple[TensorType, ...]:
    return node.type if isinstance(node.type, tuple) else (node.type,)


class _Deriver:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.seq = _seq_symbol(model)
        self.bound = _bound(model)
        self.axes = {g.name: _axes_of(g, self.seq, self.bound) for g in model.graphs()}
        self.positions: dict[tuple[str, str], str] = {}
        self.windows: set[tuple[str, str]] = set()   # (graph, concat) of each causal convolution's window
        self.window_convs: set[tuple[str, str]] = set()
        self.checked: set[str] = set()
        self.mask_input = model.inputs.get("attention_mask")
        self.position_input = model.inputs.get("position_ids")

    def classify(self, graph: Graph) -> None:
        """Classify every node of one graph (once per template), refusing what cannot run on new tokens."""
        if graph.name in self.checked:
            return
        self.checked.add(graph.name)
        seq = self.axes[graph.name]
        for node in graph:
            self._node(graph, node, seq)

    def _node(self, graph: Graph, node: Node, seq: frozenset[str]) -> None:
        op = OPS[node.op]
        a = node.attrs
        if node.op == "attention":
            if a["key"] not in seq:
                return                       # attention over another axis (heads, patches): position-wise
            if not a["causal"] or a["query"] not in seq:
                raise _refuse(node, f"attention over the sequence axis {a['key']} is not causal: each position "
                              "would read later ones")
            if a["has_bias"]:
                raise _refuse(node, "an additive attention bias over the keys (ALiBi-style) is not derived yet")
            if a["has_mask"]:
                self._check_mask(graph, graph[node.inputs[3]], node)
            return
        if node.op == "arange" and _mentions(a.get("axis"), seq):
            self.positions[(graph.name, node.name)] = "positions"
            return
        if node.op == "rotary" and a["pos"] in seq:
            self.positions[(graph.name, node.name)] = "rotary"
            return
        if node.op == "sinusoidal" and _mentions(a.get("pos"), seq):
            self.positions[(graph.name, node.name)] = "table"
            return
        if node.op == "causal_mask":
            if self._only_masks(graph, node.name):
                return                       # and-ed into masks that the step replaces by the cache's
            raise _refuse(node, "a causal mask outside a recognised attention (softmax(q·k masked)·v): the "
                          "derivation caches keys and values of attention nodes only")
        if op.has(_STRUCTURE):
            for block in self._blocks(node):
                self.classify(self.model.templates[block])
            return
        if node.op == "concat" and self._window(graph, node, seq):
            return
        if (graph.name, node.name) in self.window_convs:
            return                           # reads a window: its outputs are the new positions'
        if op.has("pointwise"):
            return                           # elementwise: each position alone
        ins = [graph[i] for i in node.inputs]
        if node.op == "rearrange":           # a relabel (T seen as S) or a permute keeps a sequence axis
            if sum(n in seq for n in _types(node)[0].names) < sum(n in seq for n in _types(ins[0])[0].names):
                raise _refuse(node, "a rearrange that splits or merges the sequence axis moves positions")
            return
        had = {n for i in ins for t in _types(i) for n in t.names if n in seq}
        kept = {n for t in _types(node) for n in t.names if n in seq}
        if had - kept:
            raise _refuse(node, f"{node.op} mixes positions: it reduces or contracts the sequence axis "
                          f"{', '.join(sorted(had - kept))}")
        # a contraction keeping every sequence axis is a batched product over it (position-wise); any other
        # op naming the sequence axis does something along it
        if not op.has("matmul") and any(self._mentions(v, seq) for k, v in a.items() if k not in _NOT_AXES):
            raise _refuse(node, f"{node.op} over the sequence axis mixes or moves positions")

    def _mentions(self, value: Any, seq: frozenset[str]) -> bool:
        """`_mentions`, an Axis judged by its size (an axis named like a sequence axis elsewhere may be short)."""
        if isinstance(value, Axis):
            return bool(_size(value, self.bound) == self.seq)
        if isinstance(value, (tuple, list)):
            return any(self._mentions(v, seq) for v in value)
        return _mentions(value, seq)

    def _window(self, graph: Graph, node: Node, seq: frozenset[str]) -> bool:
        """Whether `node` is `concat(prefix, x)` over the sequence read only by a convolution over it with kernel
        K = prefix length + 1, stride 1 and no padding, whose output axis is the sequence (a causal convolution);
        if so, the concat is a window state and the conv position-wise."""
        if len(node.inputs) != 2:
            return False
        prefix, x = (graph[i].tensor_type for i in node.inputs)
        into = node.attrs.get("into")
        axis = prefix.axis(node.attrs["axis"])
        users = graph.users(node.name)
        # by size, not name: the concat relabels x's sequence axis to the prefix's axis name
        if axis is None or into is None or any(_size(a, self.bound) == self.seq for a in prefix.axes) or \
                len(users) != 1:
            return False
        x_seq = [a for a in x.axes if _size(a, self.bound) == self.seq]
        conv = users[0]
        a = conv.attrs
        width = _size(axis, self.bound)
        if len(x_seq) != 1 or conv.op != "conv" or conv.inputs[0] != node.name or a["spatial"] != (into.name,) \
                or not width.is_Integer or a["kernel"] != (int(width) + 1,) or a["stride"] != (1,) \
                or a["padding"] != (0,) or a["out_axes"][0].name not in seq:
            return False
        self.windows.add((graph.name, node.name))
        self.window_convs.add((graph.name, conv.name))
        return True

    def _only_masks(self, graph: Graph, name: str) -> bool:
        """Does the value reach only masks of attentions that hold the causal triangle (`mask_causal`: and-ed in
        once per forward by `causal-into-mask`), through pointwise ops, relabels and block arguments? The step
        replaces those masks by the cache's, which is causal itself, so the triangle is not needed there."""
        for user in graph.users(name):
            slots = [j for j, x in enumerate(user.inputs) if x == name]
            if user.op == "attention":
                ok = slots == [3] and bool(user.attrs.get("mask_causal"))
            elif OPS[user.op].has(_STRUCTURE) and user.op != "scan":   # arguments handed on one for one
                ok = all(self._only_masks(self.model.templates[b], self.model.templates[b].inputs[j])
                         for b in self._blocks(user) for j in slots)
            else:
                ok = OPS[user.op].has("pointwise") or user.op == "rearrange"
                ok = ok and self._only_masks(graph, user.name)
            if not ok:
                return False
        return True

    def _blocks(self, node: Node) -> list[str]:
        if node.op == "repeat":
            return sorted({b for b, _ in repeat_plan(node.attrs)})
        block = node.attrs.get("block")
        return [block] if block else []

    def _check_mask(self, graph: Graph, mask: Node, site: Node) -> None:
        """The site's mask must be the padding mask: made from block inputs by pointwise ops and relabels only,
        and the model must take `attention_mask` (the step replaces it by the padding mask over the cache)."""
        if self.mask_input is None:
            raise _refuse(site, "the attention's mask is not the padding mask: the model has no `attention_mask` "
                          "input (1 = token, 0 = padding) for the step to keep over the cache")
        seen: set[str] = set()
        todo = [mask.name]
        while todo:
            n = graph[todo.pop()]
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op == "input" or n.op == "const":
                continue
            if not (OPS[n.op].has("pointwise") or n.op == "rearrange"):
                raise _refuse(site, f"the attention's mask depends on {n.op} ({n.name}); only a padding mask "
                              "made from the `attention_mask` input is derived")
            todo.extend(n.inputs)

    def sites(self, graph: Graph, out: list[Site], states: list[State], order: list[Site | State]) -> None:
        """Cache sites and scan states in run order (each kind apart, and both in `order`), each block call or
        layer once per execution."""
        for node in graph:
            if node.op == "attention" and node.attrs["causal"] and node.attrs["key"] in self.axes[graph.name]:
                k, v = cached_values(graph, node)
                out.append(Site(graph.name, node.name, node.attrs["key"], graph[k].tensor_type, graph[v].tensor_type))
                order.append(out[-1])
            elif node.op == "scan" and _mentions(node.attrs["axis"], self.axes[graph.name]):
                states.append(State(graph.name, node.name, graph[node.inputs[0]].tensor_type))
                order.append(states[-1])
            elif (graph.name, node.name) in self.windows:
                states.append(State(graph.name, node.name, graph[node.inputs[0]].tensor_type, "window"))
                order.append(states[-1])
            elif node.op == "repeat":
                for block, _ in repeat_plan(node.attrs):
                    self.sites(self.model.templates[block], out, states, order)
            elif OPS[node.op].has(_STRUCTURE) and node.attrs.get("block"):
                self.sites(self.model.templates[node.attrs["block"]], out, states, order)

    def batch(self) -> sympy.Symbol | None:
        ids = self.model.graph[next(iter(self.model.inputs.values()))].tensor_type
        for a in ids.axes:
            size = sympy.sympify(a.size)
            if isinstance(size, sympy.Symbol) and size != self.seq and size.name in self.model.dims.free:
                return size
        return None


def derive(model: Model) -> DecodePlan:
    """The decoding plan of a model whose attention has been recognised (run the `attention` pass first on a
    spelled-out spec); a located E015 for what cannot run one step at a time."""
    d = _Deriver(model)
    d.classify(model.graph)
    sites: list[Site] = []
    states: list[State] = []
    order: list[Site | State] = []
    d.sites(model.graph, sites, states, order)
    values = {s: int(v) for s, v in d.bound.items()}
    return DecodePlan(d.seq, d.batch(), sites, states, d.positions, d.axes, d.mask_input, d.position_input, values,
                      order)
