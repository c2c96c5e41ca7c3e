"""Closed-form facts about a checked model: parameters and FLOPs, per node and in total.

FLOP convention (also in docs/language.md): a multiply-add is 2 FLOPs; elementwise ops count the per-element
cost their op declares; FLOPs are symbolic in the free dims (batch, sequence) with every declared dim
substituted. Repeats multiply their block's counts, and a scan its step's FLOPs by the length of the scanned
axis; nothing is unrolled.

Memory: `estimate_parameter_bytes` is what building the model allocates for its parameters and buffers, from
their dtypes and concrete sizes, computed in closed form (a repeat of 10^5 layers is one multiplication).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import cache

import sympy

from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType, repeat_counts, repeat_weight_sets
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.compiler.sizes import expand


@dataclass(frozen=True)
class ParamInfo:
    path: str
    type: TensorType


class Analysis:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.sizes = model.dims
        self.graph_params = cache(self._graph_params)
        self.graph_flops = cache(self._graph_flops)
        self.graph_tensors = cache(self._graph_tensors)

    def _graph_tensors(self, name: str) -> int:
        """Parameter tensors one run of the graph owns, blocks included: a repeat's body is walked once and its
        count multiplied, so nested repeats of a parameter-free block cost their spec's size, not 10^10 visits."""
        total = 0
        for node in self._graph(name):
            if node.op == "param":
                total += 1
            elif node.op == "repeat":
                total += sum(n * self.graph_tensors(b) for b, n in repeat_counts(node.attrs, weights=True).items())
            elif runs_block(node):
                total += self.graph_tensors(node.attrs["block"])
        return total

    def _graph_params(self, name: str) -> int:
        return sum(self.node_params(n) for n in self._graph(name))

    def _graph(self, name: str) -> Graph:
        return self.model.graph if name == self.model.graph.name and name not in self.model.templates \
            else self.model.templates[name]

    def node_params(self, node: Node) -> int:
        if node.op == "param":
            return int(self.sizes.concrete(node.attrs["type"].numel()))
        if node.op == "repeat":  # one count per weight set (transforms may vary blocks and group weights)
            return sum(n * self.graph_params(b) for b, n in repeat_counts(node.attrs, weights=True).items())
        if runs_block(node):    # a call or scan: one set of weights
            return self.graph_params(node.attrs["block"])
        return 0

    def _graph_flops(self, name: str) -> sympy.Expr:
        return expand(sum((self.node_flops(n, self._graph(name)) for n in self._graph(name)),
                                sympy.Integer(0)))

    def node_flops(self, node: Node, graph: Graph) -> sympy.Expr:
        if node.op == "call":
            return self.graph_flops(node.attrs["block"])
        if node.op == "repeat":
            return expand(sum((n * self.graph_flops(b) for b, n in repeat_counts(node.attrs, weights=False)
                                     .items()), sympy.Integer(0)))
        if node.op == "scan":  # the step runs once per position along the scanned axis
            return self.sizes.concrete(node.attrs["axis"].size) * self.graph_flops(node.attrs["block"])
        ins = graph.input_types(node)
        return self.sizes.concrete(OPS[node.op].flops(ins, node.type, node.attrs))

    def total_params(self) -> int:
        return sum(self.node_params(n) for n in self.model.graph)

    def total_flops(self) -> sympy.Expr:
        return expand(sum((self.node_flops(n, self.model.graph) for n in self.model.graph),
                                sympy.Integer(0)))

    def parameters(self) -> list[ParamInfo]:
        """Every parameter with its full path (repeats listed per layer), in definition order."""
        out: list[ParamInfo] = []
        self._collect(self.model.graph, "", out)
        return out

    def _collect(self, graph: Graph, prefix: str, out: list[ParamInfo]) -> None:
        for node in graph:
            if node.op == "param":
                out.append(ParamInfo(prefix + node.attrs["path"], node.attrs["type"]))
            elif runs_block(node) and not any(self.graph_tensors(b) for b in _blocks_of(node)):
                continue          # nothing to list: a parameter-free block is not walked (or unrolled)
            elif node.op == "repeat":
                for sub, block in repeat_weight_sets(node.attrs):
                    self._collect(self._graph(block), f"{prefix}{node.attrs['scope']}.{sub}." if sub else
                                  f"{prefix}{node.attrs['scope']}.", out)
            elif runs_block(node):
                self._collect(self._graph(node.attrs["block"]), f"{prefix}{node.attrs['scope']}.", out)


def _blocks_of(node: Node) -> list[str]:
    """The templates a call, repeat or scan runs (a repeat's variants included)."""
    if node.op == "repeat":
        return list(repeat_counts(node.attrs, weights=True))
    return [node.attrs["block"]]


def runs_block(node: Node) -> bool:
    """A call, repeat or scan: an op that runs a block template and owns its parameters (the op table's
    `owns_state` effect)."""
    return OPS[node.op].effect is Effect.OWNS_STATE


DTYPE_BYTES: dict[DType, int] = {DType.float32: 4, DType.float16: 2, DType.bfloat16: 2, DType.int64: 8,
                                 DType.int32: 4, DType.bool: 1}


def parameter_bytes_by_dtype(model: Model) -> dict[str, int]:
    """Bytes of parameters and buffers by dtype name (`{"float32": 497758208}`), in closed form.

    Buffers are counted whether persistent or not: building the model allocates both. Tied weights are one
    parameter node, so they count once; a shared repeat's weights count once, a separate one's `count` times.
    """
    totals: dict[str, int] = {}
    memo: dict[int, dict[str, int]] = {}

    def graph_bytes(graph: Graph) -> dict[str, int]:
        if id(graph) in memo:
            return memo[id(graph)]
        out: dict[str, int] = {}
        for node in graph:
            if OPS[node.op].has("state"):
                t = node.attrs["type"]
                numel = model.dims.concrete(t.numel())
                if not numel.is_Integer:  # a parameter sized by a free dim: nothing can be estimated before run
                    raise ValueError(f"parameter {node.attrs['path']} has a size that depends on a free dim")
                _add(out, {t.dtype.value: int(numel) * DTYPE_BYTES[t.dtype]})
            elif node.op == "repeat":
                for block, n in repeat_counts(node.attrs, weights=True).items():
                    _add(out, {k: n * v for k, v in graph_bytes(model.templates[block]).items()})
            elif runs_block(node):
                _add(out, graph_bytes(model.templates[node.attrs["block"]]))
        memo[id(graph)] = out
        return out

    _add(totals, graph_bytes(model.graph))
    return dict(sorted(totals.items()))


def estimate_parameter_bytes(model: Model) -> int:
    """The bytes building `model` allocates for parameters and buffers (see `parameter_bytes_by_dtype`)."""
    return sum(parameter_bytes_by_dtype(model).values())


MEMORY_FRACTION = 0.5  # the default limit: this share of the machine's physical memory
_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)")


def parse_size(text: str) -> int:
    """`4GiB`, `512MiB`, `1e9`, `2.5GB`, `4096` -> bytes. KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of
    1024. Raises ValueError for anything else (a negative size, an unknown unit)."""
    # stripped first, one \s* left between number and unit: `\s*([A-Za-z]*)\s*` split a run of spaces n^2 ways
    m = _SIZE.fullmatch(text.strip()) if len(text) <= 100 else None
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {text[:40]!r} as a size: write a number of bytes with an optional unit, such as "
                         "4GiB, 512MiB, 2GB or 1e9")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value >= 2 ** 63:
        raise ValueError(f"size {text[:40]!r} is out of range")
    return int(value)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, where the OS says (`os.sysconf`); None elsewhere."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return pages * page if pages > 0 and page > 0 else None


def default_max_memory() -> int | None:
    """The default limit on what building a model may allocate: half of physical memory (None if unknown)."""
    total = physical_memory()
    return int(total * MEMORY_FRACTION) if total is not None else None


def check_memory(model: Model, max_memory: int | None) -> int:
    """The estimate of `estimate_parameter_bytes`; raises `ResourceError` when it is above `max_memory`."""
    from nnspec.errors import ResourceError

    needed = estimate_parameter_bytes(model)
    if max_memory is not None and needed > max_memory:
        by_dtype = ", ".join(f"{k} {format_bytes(v)}" for k, v in parameter_bytes_by_dtype(model).items())
        raise ResourceError(f"{model.name}: parameters and buffers need {format_bytes(needed)} ({needed:,} bytes: "
                            f"{by_dtype}), more than the limit of {format_bytes(max_memory)}", needed, max_memory)
    return needed


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def format_bytes(n: int) -> str:
    """`497758208` -> `474.7 MiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n:,} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
