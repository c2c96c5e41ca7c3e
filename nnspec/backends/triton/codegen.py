"""Code generation for the Triton target: the torch backend's module, with kernels where the graph allows.

The generated file is the torch target's file (same classes, same state dict, same checks) in which
- each fusion group the optimiser formed, and each lone pointwise op, calls a kernel generated from its
  nodes (`elementwise.py`), defined in the same file;
- norms (with a fused residual add for `add_norm` groups), softmax, rotary embeddings, attention and embedding
  lookups call nnspec's template kernels (`nnspec.backends.triton.kernels`, imported as `K`);
- everything else runs the torch code the torch backend writes, as `lowering.TABLE` says and `--explain` lists.

A launcher runs its kernel on GPU tensors, or on CPU tensors when `TRITON_INTERPRET=1`; otherwise (and for
calls autograd must record, where a generated kernel has no backward) it runs the same computation in torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.codegen import ModuleGen
from nnspec.backends.torch.context import ModuleContext
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import align, on_last, permute
from nnspec.backends.torch.members import ClassPlan
from nnspec.backends.torch.pysrc import Expr, Lit, Ref, call, method
from nnspec.backends.torch.source import Stmt, Var
from nnspec.backends.triton.elementwise import Kernel, pointwise_kernel
from nnspec.backends.triton.epilogue import epilogue_kernel
from nnspec.backends.triton.lowering import NOT_COMPUTE, TABLE
from nnspec.backends.triton.pointwise import RULES, Unsupported
from nnspec.compiler.ir import FusionGroup, Graph, Node, TensorType
from nnspec.compiler.ops import OPS

K = "K"   # the name generated files import nnspec.backends.triton.lib under


class TritonModuleGen(ModuleGen):
    needs = "Needs PyTorch, Triton and nnspec's kernel library."
    reserved_globals = frozenset({"triton", "tl", K})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a parallel scan evaluates its step under torch.func transforms (vmap, jvp), which Triton kernels do not
        # support: the step loop stays, its kernels launched once per step
        self.options = dataclasses.replace(self.options, parallel_scan=False)
        # launchers are named while functions are written: module-level and local names check each other
        self.globals.taken = _Taken(self.globals.taken)
        self.kernels: dict[tuple[str, str], Kernel | str] = {}   # (graph, group) -> kernel, or why not
        self.sources: list[str] = []         # kernel + launcher sources, in the order first used
        self.fallback_sources: list[str] = []
        self.used: dict[str, set[str]] = {}  # op -> how its nodes were lowered: "kernel", "template", "torch"

    def file_header(self) -> list[str]:
        return ["import triton", "import triton.language as tl", "",
                "# Kernels run on GPU tensors, or on CPU ones when TRITON_INTERPRET=1 is set before this import;",
                "# otherwise each launcher runs the same computation as torch code.",
                "from nnspec.backends.triton import lib as K"]

    def preamble(self) -> list[str]:
        return [*self.fallback_sources, *self.sources]

    def route(self, node: Node, how: str, why: str = "", *, note: bool = True) -> None:
        self.used.setdefault(node.op, set()).add(how)
        if how == "torch" and node.op not in NOT_COMPUTE:
            self.note(f"torch fallback: {node.op} ({why or TABLE[node.op].fallback})")
        elif how == "template" and note:
            self.note(f"template kernel: {node.op}")

    # -- generated kernels --
    def kernel_for(self, graph: Graph, key: str, members: list[str], inputs: list[str],
                   outputs: list[str], make: Any = pointwise_kernel) -> Kernel | str:
        """The kernel computing `members` (made once per graph and key), or the reason there is none."""
        if (graph.name, key) in self.kernels:
            return self.kernels[(graph.name, key)]
        # no leading `__`: a module-level name read inside a class body would be name-mangled (a model named `_`)
        name = self.globals.fresh(f"{graph.name}_{key}".lstrip("_") or "kernel")
        fallback = self.globals.fresh(f"{name}_torch")
        try:
            kernel: Kernel | str = make(graph, members, inputs, outputs, name, fallback)
        except Unsupported as err:
            kernel = str(err)
            self.note(f"no kernel for {graph.name}.{key}: {err}; its ops run one by one")
        else:
            self.fallback_sources.append(self._torch_function(graph, members, kernel, fallback))
            self.sources.append(kernel.source)
            self.note(f"kernel {kernel.summary}")
        self.kernels[(graph.name, key)] = kernel
        return kernel

    def _torch_function(self, graph: Graph, members: list[str], kernel: Kernel, name: str) -> str:
        """A module-level function computing the kernel's outputs with the torch backend's code."""
        sub = Graph(name)
        for i in kernel.inputs:
            sub.add("input", [], {"name": i, "type": graph[i].type}, graph[i].type, hint=i)
        for n in dict.fromkeys(i for m in members for i in graph[m].inputs):
            if n not in sub.nodes and n not in members:   # scalar constants the kernel writes as literals
                c = graph[n]
                sub.add(c.op, [], dict(c.attrs), c.type, c.span, hint=n)
        for m in members:
            node = graph[m]
            sub.add(node.op, node.inputs, dict(node.attrs), node.type, node.span, hint=m)
        sub.outputs = list(kernel.outputs)
        sub.meta["block"] = graph.meta.get("block", graph.name)
        gen = _TorchGroupGen(self, sub, ClassPlan(name, sub), None, training=kernel.training)
        return "\n".join(gen.generate(name, method=False))


class _Taken(set[str]):
    """A namespace's names that also counts other namespaces' as taken: the file's module-level names and every
    function's locals, so a launcher named after a spec variable (`m_h`) and a local named after a launcher
    never shadow each other, whichever is named first."""

    def __init__(self, own: set[str], *others: set[str]) -> None:
        super().__init__(own)
        self.others = list(others)

    def __contains__(self, name: object) -> bool:
        return set.__contains__(self, name) or any(set.__contains__(o, name) for o in self.others)


def _share_names(fn: FunctionGen, mg: ModuleContext) -> None:
    """Couple a function's locals with the module's names (see `_Taken`)."""
    fn.names.taken = _Taken(fn.names.taken, mg.globals.taken)
    if isinstance(mg.globals.taken, _Taken):
        mg.globals.taken.others.append(fn.names.taken)


class _TorchGroupGen(FunctionGen):
    """The torch code of a kernel's ops, as a function; dropout reads a `training` argument, not `self`."""

    def __init__(self, mg: ModuleContext, graph: Graph, plan: ClassPlan, model: Any, *, training: bool) -> None:
        super().__init__(mg, graph, plan, model)
        _share_names(self, mg)
        self.extra_params = ["training: bool"] if training else []

    def emitter_for(self, node: Node) -> Any:
        if node.op == "dropout":
            # a kernel that does not train (p = 0) takes no `training` argument: its fallback drops nothing either
            training = P.Name("training") if self.extra_params else Lit(False)
            return lambda fn, n, ins: call("F.dropout", ins[0], n.attrs["p"], training)
        return super().emitter_for(node)


class TritonFunctionGen(FunctionGen):
    """One `forward`: kernel calls where the lowering table has a kernel, the torch backend's code elsewhere."""

    mg: TritonModuleGen

    def __init__(self, mg: ModuleContext, graph: Graph, plan: ClassPlan, model: Any) -> None:
        super().__init__(mg, graph, plan, model)
        _share_names(self, mg)

    def emitter_for(self, node: Node) -> Any:
        mg = self.mg
        group_name = node.meta.get("fusion_group")
        if group_name is not None:
            group = self.graph.meta["fusion_groups"][group_name]
            emitter = self._group(group, node)
            if emitter is not None:
                return emitter
        if node.op in RULES:   # a pointwise op the kernel generator computes
            kernel = mg.kernel_for(self.graph, node.name, [node.name], list(dict.fromkeys(node.inputs)), [node.name])
            if isinstance(kernel, Kernel):
                mg.route(node, "kernel")
                return lambda fn, n, ins: fn._launch(kernel)
        template = TEMPLATES.get(node.op)
        if template is not None:
            return lambda fn, n, ins: fn._template(template, n, ins)
        if node.op in TABLE and TABLE[node.op].fallback is not None and node.op not in ("input",):
            mg.route(node, "torch")
        return super().emitter_for(node)

    def cache_attention(self, node: Node, ins: list[Expr], positions: Expr) -> Expr | None:
        """A decoding step's attention over the static KV cache (`decode_codegen`: q of the new tokens, the cache's
        keys and values, the cache mask [B, t, length]): the flash-decoding template, else the torch code. A step
        is for inference: its attention drops nothing (as the forward's in eval mode)."""
        if node.attrs.get("dropout", 0.0) > 0:
            node = dataclasses.replace(node, attrs={**node.attrs, "dropout": 0.0})
        return self._template(lambda fn, n, i: _attention(fn, n, i, positions=positions), node, ins)

    def _template(self, template: Any, node: Node, ins: list[Expr]) -> Expr | None:
        try:
            value = template(self, node, ins)
        except Unsupported as err:
            self.mg.route(node, "torch", str(err))
            return self.mg.emitters[node.op](self, node, ins)
        self.mg.route(node, "template")
        return value

    def _group(self, group: FusionGroup, node: Node) -> Any:
        """The emitter of a fusion group's member: the first launches the group's kernel, the rest are in it."""
        if group.kind == "add_norm":
            try:
                plan = self._add_norm_plan(group)
            except Unsupported as err:
                self.mg.note(f"no kernel for {self.graph.name}.{group.name}: {err}; its ops run one by one")
                return None
            if node.name != group.nodes[0]:
                return lambda fn, n, ins: None
            return lambda fn, n, ins: fn._add_norm(group, plan)
        make = {"elementwise": pointwise_kernel, "epilogue": epilogue_kernel}.get(group.kind)
        if make is None:
            return None
        kernel = self.mg.kernel_for(self.graph, group.name, group.nodes, group.inputs, group.outputs, make)
        if not isinstance(kernel, Kernel):
            return None
        self.mg.route(node, "kernel")
        if node.name != group.nodes[0]:
            return lambda fn, n, ins: None
        return lambda fn, n, ins: fn._launch(kernel)

    def _launch(self, kernel: Kernel) -> None:
        args = [self.value(i) for i in kernel.inputs]
        if kernel.training:
            args.append(P.dotted("self.training"))
        value = call(kernel.name, *args)
        self._bind_outputs(value, kernel.outputs)

    def branch_on_training(self, training: Expr, evaluating: Expr, hint: str) -> Expr:
        """`hint = training` under `if self.training:`, else `hint = evaluating`; returns the variable."""
        tmp = self._temp(hint)
        self.add(Stmt([(0, ("if self.training:",)), (1, (Var(tmp), " = ", training)), (0, ("else:",)),
                       (1, (Var(tmp), " = ", evaluating))], pinned=True, inline_into=False,
                      evaluates=[self.node.name] if self.node else []))
        return Ref(tmp)

    def _bind_outputs(self, value: Expr, outputs: list[str]) -> None:
        if len(outputs) == 1:
            self.alias[outputs[0]] = self.let(value, outputs[0])
        else:
            for o, ref in zip(outputs, self.let_many(value, list(outputs)), strict=True):
                self.alias[o] = ref

    # -- residual add + norm --
    def _add_norm_plan(self, group: FusionGroup) -> tuple[Node, Node]:
        if len(group.nodes) != 2:
            raise Unsupported("a residual add + norm kernel takes exactly an add and a norm")
        add, norm = (self.graph[n] for n in group.nodes)
        if add.op != "add" or not OPS[norm.op].has("row_norm") or norm.inputs[0] != add.name:
            raise Unsupported("the group is not add, then a norm of the sum")
        t = add.tensor_type
        if any(self.type_of(i).names != t.names for i in add.inputs) or t.names[-1] != norm.attrs["axis"] \
                or any(self.type_of(i).dtype != t.dtype for i in add.inputs):
            raise Unsupported("the add broadcasts, casts or the norm's axis is not last")
        return add, norm

    def _add_norm(self, group: FusionGroup, plan: tuple[Node, Node]) -> None:
        add, norm = plan
        a, b = (self.value(i) for i in add.inputs)
        w = [self.value(i) for i in norm.inputs[1:]]
        kwargs = {"residual": b}
        value = call(f"{K}.{norm.op}", a, *w, P.lit(norm.attrs["eps"]), **kwargs)
        self.mg.route(add, "template", note=False)
        self.mg.route(norm, "template")
        refs = self.let_many(value, [add.name, norm.name])
        self.alias[add.name], self.alias[norm.name] = refs


# ---- template kernels, one emitter per op (raise Unsupported to fall back to the torch code) ----
def _norm(fn: TritonFunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    return on_last(ins[0], t, node.attrs["axis"],
                   lambda x: call(f"{K}.{node.op}", x, *ins[1:], P.lit(node.attrs["eps"])))


def _softmax(fn: TritonFunctionGen, node: Node, ins: list[Expr]) -> Expr:
    return on_last(ins[0], fn.in_type(node, 0), node.attrs["axis"], lambda x: call(f"{K}.softmax", x))


def _embedding(fn: TritonFunctionGen, node: Node, ins: list[Expr]) -> Expr:
    kwargs = {"padding_idx": node.attrs["padding_idx"]} if "padding_idx" in node.attrs else {}
    return call(f"{K}.embedding", ins[0], ins[1], **kwargs)


def _rotary(fn: TritonFunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    a = node.attrs
    rest = [n for n in t.names if n != a["dim"]]
    if len(ins) > 1 and fn.in_type(node, 1).rank != 1 and \
            fn.in_type(node, 1).names != tuple(rest[:rest.index(a["pos"]) + 1]):
        raise Unsupported("rotary positions over axes other than x's leading ones up to the position axis")
    kwargs: dict[str, Expr] = {"positions": ins[1]} if len(ins) > 1 else {}
    if len(ins) == 4:   # the tables made once per forward (`rotary-tables`): read, not recomputed from positions
        order = (*fn.in_type(node, 1).names, a["dim"])   # the positions' axes, then the features
        kwargs = {"cos": align(ins[2], fn.in_type(node, 2), order), "sin": align(ins[3], fn.in_type(node, 3), order)}
    if a["style"] == "interleaved":
        kwargs["interleaved"] = Lit(True)

    def rotate(x: Expr) -> Expr:
        return call(f"{K}.rotary", x, rest.index(a["pos"]), P.lit(a["base"]), **kwargs)
    return on_last(ins[0], t, a["dim"], rotate)


def _attention(fn: TritonFunctionGen, node: Node, ins: list[Expr], positions: Expr | None = None) -> Expr:
    """Flash attention on [Z, heads, T, D] views: the first axis q and k share is Z, the rest of their shared
    axes and then q's own (a GQA group axis) are heads, so query head h reads key/value head h // groups.
    With `positions` (a decoding step's, k and v the whole static cache, the mask [Z, T, S] over it), the
    flash-decoding kernel instead (`kernels/decode_attention.py`)."""
    from nnspec.compiler.ops.attention import attention_types
    a = node.attrs
    types = [fn.in_type(node, i) for i in range(len(ins))]
    sizes = fn.mg.model.dims
    scores_t, out_t = attention_types(types, a, sizes)
    q_t, k_t, v_t = types[:3]
    qn, kn, dn = a["query"], a["key"], a["dim"]
    batch = [n for n in scores_t.names if n not in (qn, kn)]
    shared = [n for n in batch if n in q_t.names and n in k_t.names]
    q_only = [n for n in batch if n in q_t.names and n not in k_t.names]
    value = [n for n in v_t.names if n not in shared and n != kn]
    if not shared or len(value) != 1 or sorted(q_t.names) != sorted([*shared, *q_only, qn, dn]) \
            or sorted(k_t.names) != sorted([*shared, kn, dn]) or sorted(v_t.names) != sorted([*shared, kn, *value]) \
            or sorted(out_t.names) != sorted([*shared, *q_only, qn, *value]):
        raise Unsupported("attention whose axes are not batch/heads x positions x features")
    dropout = a.get("dropout", 0.0)
    if dropout > 0 and (a["has_mask"] or (a["causal"] and a["has_bias"])):
        # while training, SDPA drops the probabilities; it takes one attn_mask, and masks no row entirely
        raise Unsupported("attention dropout with a boolean mask, or causal with a bias")
    if positions is not None and (a["causal"] or a["has_bias"] or not a["has_mask"] or dropout > 0
                                  or types[3].names != (shared[0], qn, kn)):
        raise Unsupported("attention over the KV cache whose mask is not [batch, query, key]")

    def heads(x: Expr, t: TensorType, order: list[str]) -> Expr:
        y = permute(x, [t.index(n) for n in order])
        if len(order) == 4:
            return y
        last = [fn.size(t.axis(n).size) for n in order[-2:]]  # type: ignore[union-attr]
        return method(y, "reshape", fn.size(t.axis(order[0]).size), Lit(-1), *last)  # type: ignore[union-attr]

    # the kernel's [Z, heads, positions, features] views, one statement each so the call reads plainly
    q, k, v = (fn.let(heads(ins[i], t, order), f"{'qkv'[i]}_heads") for i, (t, order) in enumerate(
        [(q_t, [*shared, *q_only, qn, dn]), (k_t, [*shared, kn, dn]), (v_t, [*shared, kn, *value])]))
    full = [*shared, *q_only, qn, kn]
    kwargs: dict[str, Expr] = {"scale": P.lit(a["scale"]), "causal": Lit(a["causal"])}
    extra = list(zip(ins[3:], types[3:], strict=True))
    for flag in ("mask", "bias"):
        if a[f"has_{flag}"]:
            x, t = extra.pop(0)
            kwargs[flag] = _scores_view(fn, x, t, full, scores_t)
    if positions is not None:   # a decoding step over the cache: the mask as it is, [Z, T, S]
        y: Expr = call(f"{K}.decode_attention", q, k, v, positions, scale=P.lit(a["scale"]), mask=ins[3])
    else:
        y = call(f"{K}.attention", q, k, v, **kwargs)
    if dropout > 0:
        # the kernel drops nothing: while training, SDPA (on the same views) drops the probabilities
        sdpa: dict[str, Expr] = {"dropout_p": Lit(dropout), "scale": P.lit(a["scale"]), "enable_gqa": Lit(True)}
        if a["causal"]:
            sdpa["is_causal"] = Lit(True)
        if a["has_bias"]:
            sdpa["attn_mask"] = kwargs["bias"]
        y = fn.branch_on_training(call("F.scaled_dot_product_attention", q, k, v, **sdpa), y, "o_heads")
    order = [*shared, *q_only, qn, *value]
    if len(order) != 4:
        y = method(fn.let(y, "o_heads"), "reshape", *[fn.size(out_t.axis(n).size) for n in order])  # type: ignore[union-attr]
    return permute(y, [order.index(n) for n in out_t.names])


def _scores_view(fn: TritonFunctionGen, x: Expr, t: TensorType, full: list[str], scores_t: TensorType) -> Expr:
    """A mask or bias laid out as the kernel's [Z, heads, T, S] (broadcast axes stay stride 0)."""
    y = align(x, t, tuple(full), full=True)
    sizes = [fn.size(scores_t.axis(n).size) for n in full]  # type: ignore[union-attr]
    y = method(y, "expand", *sizes)
    if len(full) != 4:
        y = method(y, "reshape", sizes[0], Lit(-1), sizes[-2], sizes[-1])
    return y


def _moe(fn: TritonFunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    return on_last(ins[0], fn.in_type(node, 0), a["axis"], lambda x: call(
        f"{K}.moe", x, *ins[1:], k=Lit(a["k"]), norm_topk_prob=Lit(a["norm_topk_prob"])))


TEMPLATES = {"layernorm": _norm, "rmsnorm": _norm, "softmax": _softmax, "embedding": _embedding, "rotary": _rotary,
             "attention": _attention, "moe": _moe}

TritonModuleGen.function_gen = TritonFunctionGen


__all__ = ["TEMPLATES", "TritonModuleGen"]
