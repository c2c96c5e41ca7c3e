"""dtype: store and compute in bfloat16 or float16, with float32 where precision matters.

Rewrite (every graph, types inferred again):
- parameters and buffers of float dtype are stored in the low dtype, except those only a normalisation reads
  (norm weights and biases, running statistics): they are O(width) and are used in float32;
- float constants take the low dtype; float model inputs and the float sources (`sinusoidal` tables, float
  `full`s: the `float_source` trait) are cast to it where they enter;
- float32 islands: the ops with the `keeps_float32` trait (norms, softmax, attention, sum, mean, cumsum) read
  their float operands cast to float32 and their result is cast back to the low dtype;
- the residual stream is float32: a residual add (`x + f(x)`) reads both operands in float32, and a repeat
  carries float32 from one iteration to the next;
- the output tail (`fp32_outputs`, the default): the last linear or contraction computing each model output
  (the LM head) and the adds after it read float32 operands (bf16-representable ones: the head's input is the
  final norm's output rounded once), so logits are accumulated and returned in float32;
- every other op computes in the low dtype (float32 operands are cast down), and the model's outputs are cast
  back to their declared dtype: the interface is unchanged, the transformed model a drop-in replacement.

Matrix products in the low dtype accumulate in float32 in torch's CPU and CUDA kernels.

Contract: not numerics-preserving. On the tests' small GPT-2 and Llama at random initialisation the next-token
top-1 agrees with float32 holding the same weights on >= 99% of positions (tests/test_transforms_dtype.py;
larger random models and measured numbers in docs/transforms.md).
"""

from __future__ import annotations

import networkx as nx

from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType, Type
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.compiler.transforms.rewrite import GraphBuilder, Rebuilder, TransformError, mark

DTYPES = {"bf16": DType.bfloat16, "bfloat16": DType.bfloat16, "fp16": DType.float16, "float16": DType.float16,
          "fp32": DType.float32, "float32": DType.float32}


def parse_dtype(text: str | DType) -> DType:
    if isinstance(text, DType):
        return text
    if text not in DTYPES:
        raise TransformError(f"--dtype takes bf16 or fp16, got {text!r}")
    return DTYPES[text]


def _is_float(t: object) -> bool:
    return isinstance(t, TensorType) and t.dtype.is_float


class _LowPrecision(Rebuilder):
    def __init__(self, model: Model, dtype: DType, fp32_outputs: bool) -> None:
        super().__init__(model)
        self.low = dtype
        self.note = f"dtype {dtype}"
        self.tail = _output_tail(model.graph) if fp32_outputs else set()

    def cast(self, b: GraphBuilder, name: str, dtype: DType, why: str) -> str:
        t = b.type(name)
        if not isinstance(t, TensorType) or not t.dtype.is_float or t.dtype == dtype:
            return name
        return b.add("cast", [name], {"dtype": dtype}, hint=f"{name}_{'f32' if dtype == DType.float32 else 'low'}",
                     meta={"transform": f"{self.note}: {why}"})

    def residual(self, node: Node) -> bool:
        g = self.old_graph
        a, c = node.inputs
        return a != c and (nx.has_path(g.nx, a, c) or nx.has_path(g.nx, c, a))

    def norm_only(self, node: Node) -> bool:
        users = self.old_graph.users(node.name)
        return bool(users) and all(OPS[u.op].has("norm") and node.name not in u.inputs[:1] for u in users)

    def visit(self, b: GraphBuilder, node: Node, ins: list[str]) -> str:
        if OPS[node.op].has("state"):
            t = node.attrs["type"]
            if not t.dtype.is_float or t.dtype == self.low or self.norm_only(node):
                return self.copy(b, node, ins)
            new = self.copy(b, node, ins, type=t.with_dtype(self.low))
            mark(b.graph[new].meta, f"{self.note} storage")
            return new
        if node.op == "const" and node.attrs["type"].dtype.is_float:
            return self.copy(b, node, ins, type=node.attrs["type"].with_dtype(self.low))
        if node.op == "input" and self.old_graph is self.old.graph and _is_float(node.type):
            return self.cast(b, self.copy(b, node, ins), self.low, "input to low precision")
        if self.old_graph is self.old.graph and node.name in self.tail:
            ins = [self.cast(b, i, DType.float32, "output projection in float32") for i in ins]
            out = self.copy(b, node, ins)
            mark(b.graph[out].meta, f"{self.note}: output in float32")
            return out
        if node.op == "add" and self.residual(node):
            ins = [self.cast(b, i, DType.float32, "residual stream in float32") for i in ins]
            return self.copy(b, node, ins)
        if OPS[node.op].has("keeps_float32") and any(_is_float(b.type(i)) for i in ins):
            ins = [self.cast(b, i, DType.float32, f"{node.op} in float32") for i in ins]
            out = self.copy(b, node, ins)
            return self.cast(b, out, self.low, f"{node.op} result back to {self.low}")
        if node.op == "cast" and node.attrs["dtype"].is_float and node.attrs["dtype"] != DType.float32:
            raise TransformError(f"--dtype: the spec already casts to {node.attrs['dtype']} (node {node.name}); "
                                 "mixing a spec's own precision with --dtype is not supported")
        if not OPS[node.op].has("structure") and node.op != "cast":
            # everything else computes in the low dtype, also when it reads the float32 stream (block calls and
            # tuple members pass values through; a cast to float32 or an integer dtype is the spec's own)
            ins = [self.cast(b, i, self.low, "back to low precision") for i in ins]
        out = self.copy(b, node, ins)
        if OPS[node.op].has("float_source"):
            return self.cast(b, out, self.low, f"{node.op} to low precision")
        return out

    def carry(self, b: GraphBuilder, value: str, result: Type) -> str:
        if isinstance(result, TensorType) and _is_float(b.type(value)):
            return self.cast(b, value, result.dtype, "residual stream in float32")
        return super().carry(b, value, result)

    def output(self, b: GraphBuilder, new: str, old: Node) -> str:
        if self.old_graph is not self.old.graph or not isinstance(old.type, TensorType):
            return new
        return self.cast(b, new, old.type.dtype, f"output back to {old.type.dtype}")


# This transform's own op classes, by name where no trait says the same:
# - the ops that may stand between the LM head and a model output and still be part of computing the logits (a
#   bias or a scale, dropout, a reshape or a pick), run in float32 with the head. Not every `view` (a slice
#   is not one of them) and not every `matmul` (a conv head is not): the traits would widen the tail.
TAIL_OPS = ("add", "sub", "mul", "div", "dropout", "rearrange", "select", "getitem")
HEADS = ("linear", "einsum")
# - what may compute in float32 outside the islands: a cast (how an island is entered) and an add (the residual
#   stream), besides leaves (norm weights are stored in float32) and block calls (they carry the stream).
FLOAT32_OK = ("cast", "add")


def _output_tail(graph: Graph) -> set[str]:
    """The nodes computing each model output from its last linear or contraction (the LM head and a bias added
    to it): they run in float32 so the logits are not rounded to the low dtype."""
    tail: set[str] = set()
    todo = [o for o in graph.outputs if graph[o].op in TAIL_OPS + HEADS]
    while todo:
        node = graph[todo.pop()]
        if node.name in tail or not _is_float(node.type):
            continue
        tail.add(node.name)
        if node.op in TAIL_OPS:
            todo += [i for i in node.inputs if graph[i].op in TAIL_OPS + HEADS]
    return tail


def to_dtype(model: Model, dtype: str | DType, *, fp32_outputs: bool = True) -> Model:
    """`model` storing and computing in `dtype` (bf16 or fp16), float32 where it matters (module docstring).

    fp32_outputs: the op computing each model output (the LM head) runs in float32 (the default), or in the
    low dtype with its result cast (faster; the logits are then rounded to the low dtype).
    """
    low = parse_dtype(dtype)
    if low == DType.float32:
        return model
    out = _LowPrecision(model, low, fp32_outputs).run()
    out.transforms.append(f"dtype {low}")
    for g in out.graphs():
        _check(g)
    return out


def _check(graph: Graph) -> None:
    """Every float op outside the islands computes in the low dtype, never promoted to float32 by accident."""
    for node in graph:
        op = OPS[node.op]
        if op.has("keeps_float32") or op.has("float_source") or op.effect in (Effect.LEAF, Effect.OWNS_STATE) \
                or node.op in FLOAT32_OK:
            continue
        if "output in float32" in node.meta.get("transform", ""):
            continue
        if _is_float(node.type) and node.tensor_type.dtype == DType.float32 and node.name not in graph.outputs:
            srcs = [i for i in node.inputs if _is_float(graph[i].type) and graph[i].tensor_type.dtype == DType.float32]
            raise TransformError(f"--dtype: {node.op} node {node.name} in {graph.name} still computes in float32 "
                                 f"(from {', '.join(srcs) or 'its attributes'})")
