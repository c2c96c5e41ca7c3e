"""The layouts a decoding step reads: its KV cache's (`cache_types`) and its weights' (`decode_codegen`'s linears).

The cache of each causal attention call is stored in the order the attention reads it (`cache_types`).

A decoding step multiplies a few rows (the batch, one new token each) by every weight matrix: memory-bound
GEMVs. PyTorch's `F.linear` reads an [out, in] weight as `out` dot products over `in`; the BLAS reads an [in, out]
copy as rows of the output, which on the CPUs measured (AMD EPYC, AVX2, 2 threads) runs 10-30% faster at GPT-2's
layer shapes and up to 1.8x faster for its 50257 x 768 tied LM head (benchmarks/RESULTS.md), while at other shapes
(Llama's 2048 x 8192 down projection) the given layout wins. So the step asks per weight:

- in a class's `decode_step`, a linear on an `nn.Linear` member (`self.c_attn(x)`, `linear_act(self.c_fc, x, ...)`)
  becomes `step_linear(self.c_attn, x, ...)`, and `linear(x, self.wte.weight)` (or `F.linear`) on a parameter
  (a tied head) `step_gemv(self, "wte.weight", x, self.wte.weight)`; the class lists them in `STEP_WEIGHTS`;
- a block whose forward has such a linear gets a `decode_step` too (GPT-2's `Mlp`), where a block with a step
  calls it (not a scan's body: the scan runs the forward);
- `<Model>Decoder(..., weight_layout="auto")` calls `choose_layouts` (`decode_runtime`): per listed weight the
  fastest of four layouts a one-time measurement at that shape finds (`LAYOUT_KINDS`: the parameter itself; an
  [in, out] copy; the weight split into one part per thread, read by one batched product, as a view of the
  parameter or as an [in, out]-ordered copy in huge pages), or the one `weight_layout` names for all. MKL's GEMV
  for a few rows runs on one thread; a split runs one per thread. The copies cost their bytes
  (`Decoder.layout_bytes`), up to the model's weights once more.

`step_gemv` uses the copy only for a few rows, without autograd or tracing, and re-makes it if the parameter was
replaced or changed in place: the numbers are the plain step's (the same products, summed in another order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.members import module_for
from nnspec.backends.torch.pysrc import Expr
from nnspec.backends.torch.source import owns_block
from nnspec.compiler.ir import Graph, Model, Node, TensorType, repeat_plan

if TYPE_CHECKING:
    from nnspec.backends.torch.function import FunctionGen

# what a generated file with such a step copies from decode_runtime.py
RUNTIME = ("step_gemv", "_layout_gemv", "step_linear", "LAYOUT_KINDS", "choose_layouts", "_FLUSH_BYTES",
           "_step_weights", "_copy_bytes", "_layout", "_huge_empty", "_fastest_kind")
# (and runtime.py's `weight_stamp`, a helper of the file: `cat_weights` checks its copies the same way)


def cache_types(k: TensorType, v: TensorType, key: str, dim: str) -> tuple[TensorType, TensorType]:
    """The types of a site's cache as stored: the keys' and values' axes in the order the attention reads them
    (SDPA's [batch..., key, features]): the axes besides the key axis and the features (batch, heads) first, in
    the keys' order, then the key axis, then the features (`dim` for the keys). So SDPA reads the cache as it
    is, contiguous, not a transposed view (GPT-2's keys are [B, S, heads, d] where made): 0.059 against 0.067 ms
    a call at GPT-2's shape, 1 thread (docs/generate.md)."""
    lead = [n for n in k.names if n not in (key, dim)]
    k_order = [*lead, key, *(n for n in k.names if n not in lead and n != key)]
    v_lead = [n for n in lead if n in v.names]
    v_order = [*v_lead, key, *(n for n in v.names if n not in v_lead and n != key)]
    return (TensorType(tuple(k.axes[k.index(n)] for n in k_order), k.dtype),
            TensorType(tuple(v.axes[v.index(n)] for n in v_order), v.dtype))


def gemv_weight(graph: Graph, node: Node) -> str | None:
    """The spec path (in the node's block) of the [out, in] parameter a linear or a two-operand product (an LM head
    `h * wte.weight`) multiplies by, else None."""
    if node.op == "linear":
        names = node.inputs[1:2]
    elif node.op == "einsum" and len(node.inputs) == 2:
        names = node.inputs
    else:
        return None
    params = [graph[n] for n in names if graph[n].op == "param"]
    if len(params) != 1 or not isinstance(params[0].type, TensorType) or params[0].type.rank != 2:
        return None
    path = params[0].attrs.get("path")
    return path if isinstance(path, str) else None


def gemv_blocks(model: Model, needs: set[str]) -> set[str]:
    """Templates with a linear (`gemv_weight`) that a graph with a step (the model's, or one in `needs`) calls
    or repeats as its only block, not as a scan's body: they get a `decode_step`, so their linears can use the
    chosen layouts."""
    added: set[str] = set()
    for g in [model.graph, *(model.templates[t] for t in needs if t in model.templates)]:
        for node in g:
            if not owns_block(node) or node.op == "scan":
                continue
            blocks = {b for b, _ in repeat_plan(node.attrs)} if node.op == "repeat" else {node.attrs["block"]}
            if len(blocks) != 1 or blocks <= needs:
                continue
            block = next(iter(blocks))
            template = model.templates[block]
            if any(gemv_weight(template, n) is not None for n in template):
                added.add(block)
    return added


def step_call(fn: FunctionGen, node: Node, value: Expr | None, weights: list[tuple[str, str]]) -> Expr | None:
    """The forward's code for `node` (`value`) in a `decode_step`: a linear through `step_linear`/`step_gemv`
    where the forward calls an `nn.Linear` member or the `linear` helper on a parameter; else unchanged. Records
    the weight as (submodule, parameter) in `weights`."""
    key = gemv_weight(fn.graph, node)
    if key is None or not isinstance(value, P.Call):
        return value
    mod = module_for(fn.plan, "linear", node.inputs[1:]) if node.op == "linear" else None
    if mod is not None:
        layer = fn.member(mod)
        if value.fn == layer and len(value.args) == 1 and not value.kwargs:
            args: tuple[Expr, ...] = (layer, value.args[0])
        elif value.fn == P.Name("linear_act") and value.args[:1] == (layer,):
            args = value.args
        else:
            return value
        fn.mg.helper("linear_act")
        _record(weights, (mod, "weight"))
        return P.Call(P.Name("step_linear"), args, value.kwargs)
    if value.fn in (P.Name("linear"), P.dotted("F.linear")) and len(value.args) >= 2:
        fn.mg.helper("linear")
        fn.mg.helper("linear_act")
        _record(weights, ("", key))
        return P.Call(P.Name("step_gemv"), (P.Name("self"), P.Lit(key), *value.args), value.kwargs)
    return value


def _record(weights: list[tuple[str, str]], entry: tuple[str, str]) -> None:
    if entry not in weights:
        weights.append(entry)


def step_weights_lines(weights: list[tuple[str, str]]) -> list[str]:
    """The class attribute listing the weights its `decode_step` multiplies by (for `choose_layouts`)."""
    if not weights:
        return []
    items = [f"({P.string(m)}, {P.string(k)})," for m, k in weights]
    one_line = "    STEP_WEIGHTS = (" + " ".join(items)[:-1] + ("," if len(items) == 1 else "") + ")"
    comment = ["    # the weights decode_step multiplies the new rows by, as (submodule, parameter): the",
               "    # Decoder may keep an [in, out] copy of each (`choose_layouts`)"]
    if len(one_line) <= 120:
        return [*comment, one_line]
    return [*comment, "    STEP_WEIGHTS = (", *(f"        {item}" for item in items), "    )"]


__all__ = ["RUNTIME", "cache_types", "gemv_blocks", "gemv_weight", "step_call", "step_weights_lines"]
