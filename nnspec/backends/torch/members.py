"""The attributes of each generated class (`plan_members`).

A parameter group that ops use the way a torch module does (`linear` taking `c_fc.weight` and `c_fc.bias` ->
`nn.Linear`; likewise `nn.Embedding`, `nn.LayerNorm`, `RMSNorm`, `nn.BatchNormNd`, `nn.ConvNd`,
`nn.ConvTransposeNd`) becomes that module, so state-dict keys stay the spec's paths and the code reads like
hand-written PyTorch; any other group
becomes plain `nn.Parameter`s and buffers under `nn.Module()` containers. Block calls and repeats become block
instances and `nn.ModuleList`s. Each member carries the `reset_parameters()` lines its spec init needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.context import ModuleContext
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.source import holds_state, member, owns_block, refuse, size_expr
from nnspec.compiler.ir import DType, Graph, Node, TensorType, repeat_plan
from nnspec.errors import InternalError


# ---- the members of one class ----
@dataclass
class Member:
    """One attribute of a generated class: a torch module, a block, a list of blocks or a container."""

    attr: str
    ctor: Expr | None                                 # `self.attr = ctor`; None for plain parameters
    inits: list[Expr] = field(default_factory=list)   # reset_parameters() statements
    # other __init__ statements: `target = value` pairs or calls (plain parameters, buffers, containers)
    setup: list[Expr | tuple[Expr, Expr]] = field(default_factory=list)

    def init_lines(self) -> list[str]:
        lines = [] if self.ctor is None else [f"self.{self.attr} = {P.src(self.ctor)}"]
        return lines + [f"{P.src(e[0])} = {P.src(e[1])}" if isinstance(e, tuple) else P.src(e) for e in self.setup]


@dataclass
class ClassPlan:
    name: str
    graph: Graph
    members: list[Member] = field(default_factory=list)   # in the order the graph first uses them
    module_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # param/buffer node -> (attr, module kind)


def module_for(plan: ClassPlan, kind: str, params: list[str]) -> str | None:
    """The attribute of the torch module (of `kind`: the op it serves) holding exactly these parameters, if the
    plan made one."""
    found = {plan.module_of.get(p) for p in params}
    if len(found) == 1:
        got = found.pop()
        if got is not None and got[1] == kind:
            return got[0]
    return None


def plan_members(mg: ModuleContext, graph: Graph, name: str) -> ClassPlan:
    plan = ClassPlan(name, graph)
    first: dict[str, int] = {}
    groups: dict[str, list[Node]] = {}
    blocks: list[Member] = []
    for pos, node in enumerate(graph):
        if owns_block(node):
            scope = node.attrs["scope"]
            mg.check_attr("scope", scope, node)
            if scope in first:
                raise InternalError(f"scope {scope} used twice in {graph.name}")
            first[scope] = pos
            block = P.call(P.Name(mg.class_names[node.attrs["block"]]))
            if node.op == "repeat" and not node.attrs["shared"] and node.attrs.get("variants"):
                # iterations run different templates: one instance of its class per iteration, in order
                block = call("nn.ModuleList", P.ListExpr(tuple(P.call(P.Name(mg.class_names[b]))
                                                               for b, _ in repeat_plan(node.attrs))))
            elif node.op == "repeat" and not node.attrs["shared"]:
                block = call("nn.ModuleList", P.ListComp(block, "_", call("range", node.attrs["count"])))
            blocks.append(Member(scope, block))
        elif holds_state(node):
            parts = node.attrs["path"].split(".")
            for part in parts:
                mg.check_attr("parameter path component", part, node)
            first.setdefault(parts[0], pos)
            groups.setdefault(parts[0], []).append(node)
    members = list(blocks)
    for attr, nodes in groups.items():
        if any(m.attr == attr for m in blocks):
            raise refuse("parameter path", nodes[0].attrs["path"], f"'{attr}' is also a block scope", nodes[0].span)
        leaves = {n.attrs["path"][len(attr) + 1:]: n for n in nodes}
        simple = all(leaves) and all("." not in k for k in leaves)
        for kind, recognise in MODULES.items():
            found = recognise(mg, graph, leaves) if simple else None
            if found is not None:
                members.append(Member(attr, found[0], found[1]))
                plan.module_of.update({n.name: (attr, kind) for n in nodes})
                break
        else:
            members.append(_plain_member(mg, attr, nodes))
    plan.members = sorted(members, key=lambda m: first[m.attr])
    _freeze_and_pad(graph, {m.attr: m for m in members})
    return plan


def _freeze_and_pad(graph: Graph, by_attr: dict[str, Member]) -> None:
    """Parameters a transform froze (`trainable=false`, a base weight under LoRA) stop requiring gradients, as
    in the interpreter; an embedding's padding row starts at zero, as torch's and Hugging Face's do."""
    for node in graph:
        if node.op == "param" and node.attrs.get("trainable", True) is False:
            by_attr[node.attrs["path"].split(".")[0]].setup.append(
                method(member(node.attrs["path"]), "requires_grad_", False))
        elif node.op == "embedding" and node.attrs.get("padding_idx") is not None \
                and graph[node.inputs[1]].op == "param":
            path = graph[node.inputs[1]].attrs["path"]
            row = call("nn.init.zeros_", P.Index(member(path), (Lit(node.attrs["padding_idx"]),)))
            owner = by_attr[path.split(".")[0]]
            if row not in owner.inits:
                owner.inits.append(row)


def _plain_member(mg: ModuleContext, attr: str, nodes: list[Node]) -> Member:
    """`nn.Parameter`s and buffers at their paths, under `nn.Module()` containers where nested."""
    m = Member(attr, None)
    containers: set[str] = set()
    for node in nodes:
        *parents, leaf = node.attrs["path"].split(".")
        for k in range(1, len(parents) + 1):
            path = ".".join(parents[:k])
            if path not in containers:
                containers.add(path)
                m.setup.append((member(path), call("nn.Module")))
        owner = member(".".join(parents)) if parents else P.Name("self")
        t: TensorType = node.attrs["type"]
        shape = P.TupleExpr(tuple(mg_size(mg, s) for s in t.sizes))
        init = node.attrs["init"]
        kwargs: dict[str, Any] = {} if t.dtype == DType.float32 else {"dtype": P.dotted(f"torch.{t.dtype.value}")}
        if node.op == "buffer":
            maker = {"zeros": "torch.zeros", "ones": "torch.ones"}.get(init[0], "torch.empty") \
                if t.dtype.is_float else "torch.zeros"
            tensor = call(maker, shape, **kwargs)
            m.setup.append(method(owner, "register_buffer", leaf, tensor, persistent=node.attrs["persistent"]))
            if maker == "torch.empty":
                m.inits.append(_init(P.Attr(owner, leaf), init, t))
            continue
        grad: dict[str, Any] = {} if t.dtype.is_float else {"requires_grad": False}
        m.setup.append((P.Attr(owner, leaf), call("nn.Parameter", call("torch.empty", shape, **kwargs), **grad)))
        m.inits.append(_init(P.Attr(owner, leaf), init, t))
    return m


def mg_size(mg: ModuleContext, e: sympy.Basic) -> Expr:
    def name_of(sym: sympy.Symbol) -> Expr:
        if sym not in mg.dim_names:
            raise InternalError(f"parameter size {e} depends on a free dim")
        return P.Name(mg.dim_names[sym])
    return size_expr(e, name_of)


def _init(target: Expr, init: tuple[Any, ...], t: TensorType) -> Expr:
    if not t.dtype.is_float:
        return call("nn.init.zeros_", target)
    if init[0] == "normal":
        return call("nn.init.normal_", target, std=init[1])
    if init[0] in ("zeros", "ones"):
        return call(f"nn.init.{init[0]}_", target)
    raise InternalError(f"unknown parameter init {init}")


Recogniser = Callable[[ModuleContext, Graph, dict[str, Node]], tuple[Expr, list[Expr]] | None]


def _uses(graph: Graph, nodes: list[Node], op: str, slots: list[str | None]) -> list[Node] | None:
    """The `op` nodes that take these parameters, if each takes all of them in these input slots."""
    users = [u for n in nodes for u in graph.users(n.name) if u.op == op]
    users = list({u.name: u for u in users}.values())
    for u in users:
        if u.inputs[1:1 + len(slots)] != slots or len(u.inputs) != 1 + len(slots):
            return None
    return users or None


def _same(users: list[Node], *keys: str) -> bool:
    return all(all(u.attrs[k] == users[0].attrs[k] for u in users) for k in keys)


def _float32(*nodes: Node) -> bool:
    return all(n.attrs["type"].dtype == DType.float32 for n in nodes)


def _linear_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    w, b = leaves.get("weight"), leaves.get("bias")
    if w is None or set(leaves) - {"weight", "bias"} or not _float32(*leaves.values()) or w.op != "param" or \
            (b is not None and b.op != "param"):
        return None
    if not _serves_linears(graph, w, b):
        return None
    out, inp = w.attrs["type"].sizes
    kwargs = {} if b else {"bias": False}
    inits = [_init(member(w.attrs["path"]), w.attrs["init"], w.attrs["type"])]
    if b:
        inits.append(_init(member(b.attrs["path"]), b.attrs["init"], b.attrs["type"]))
    # fused_linear calls it through the `linear` helper (oneDNN with the epilogue's activation); same parameters
    cls = mg.helper("Linear") if mg.options.fused_linear else "nn.Linear"
    return call(cls, mg_size(mg, inp), mg_size(mg, out), **kwargs), inits


def _fused_part(graph: Graph, p: Node, user: Node) -> tuple[Node, Node, int] | None:
    """(the linear, the concatenation, the part index) where `user` of parameter `p` is a part of fuse-linear's
    concatenated weight or bias (through the view that relabels its axes, if any)."""
    if user.op == "rearrange" and user.attrs["perm"] == tuple(range(len(user.attrs["perm"]))):
        users = graph.users(user.name)
        if len(users) != 1:
            return None
        p, user = user, users[0]
    if user.op != "concat" or not user.meta.get("weights_only") or user.inputs.count(p.name) != 1:
        return None
    linears = graph.users(user.name)
    if len(linears) != 1 or linears[0].op != "linear":
        return None
    return linears[0], user, user.inputs.index(p.name)


def _serves_linears(graph: Graph, w: Node, b: Node | None) -> bool:
    """Whether some linear takes the weight `w` (and bias `b`), and every linear that reads them takes exactly them,
    directly or as part i of a fused linear's concatenated weight (and bias): then they can be an `nn.Linear` at
    every -O level."""
    slots = [w.name] + ([b.name] if b else [])
    uses: dict[str, set[tuple[str, int]]] = {w.name: set(), **({b.name: set()} if b else {})}
    for slot, p in enumerate((w, b), start=1):
        if p is None:
            continue
        for u in graph.users(p.name):
            if u.op == "linear":
                if u.inputs[1:] != slots:
                    return False
                uses[p.name].add((u.name, -1))
                continue
            part = _fused_part(graph, p, u)
            if part is None:
                continue   # another op reading the parameter (a tied LM head) reads the module's attribute
            if len(part[0].inputs) != len(slots) + 1 or part[0].inputs[slot] != part[1].name:
                return False
            uses[p.name].add((part[0].name, part[2]))
    return bool(uses[w.name]) and (b is None or uses[b.name] == uses[w.name])


def linear_group(plan: ClassPlan, graph: Graph, lin: Node) -> list[str] | None:
    """The `nn.Linear` attributes whose weights (and biases) a fused linear `lin` concatenates, in order, when
    every part is one: its code then calls `linear_group` on those modules."""
    concats = [graph[i] for i in lin.inputs[1:]]
    if not all(c.op == "concat" and c.meta.get("weights_only") for c in concats):
        return None

    def param(name: str) -> str:
        node = graph[name]
        return node.inputs[0] if node.op == "rearrange" else name

    parts = list(zip(*[[param(i) for i in c.inputs] for c in concats], strict=True))
    attrs = [module_for(plan, "linear", list(ps)) for ps in parts]
    return None if any(a is None for a in attrs) else attrs  # type: ignore[return-value]


def _embedding_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    w = leaves.get("weight")
    if w is None or len(leaves) != 1 or w.op != "param" or not _float32(w) or \
            _uses(graph, [w], "embedding", [w.name]) is None:
        return None
    pads = {n.attrs.get("padding_idx") for n in graph if n.op == "embedding" and w.name in n.inputs}
    if len(pads) != 1:
        return None  # uses disagree on the padding row: F.embedding states it per call
    pad = pads.pop()
    num, d = w.attrs["type"].sizes
    init = w.attrs["init"]
    # the spec's init always runs after construction, so the table matches the interpreter's exactly
    inits = [] if init == ("normal", 1.0) and pad is None else [_init(member(w.attrs["path"]), init, w.attrs["type"])]
    kwargs = {} if pad is None else {"padding_idx": pad}
    return call("nn.Embedding", mg_size(mg, num), mg_size(mg, d), **kwargs), inits


def _layernorm_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    w, b = leaves.get("weight"), leaves.get("bias")
    if w is None or b is None or len(leaves) != 2 or not _float32(w, b) or w.op != "param" or b.op != "param":
        return None
    users = _uses(graph, [w, b], "layernorm", [w.name, b.name])
    if users is None or not _same(users, "eps"):
        return None
    eps = users[0].attrs["eps"]
    inits = [_init(member(n.attrs["path"]), n.attrs["init"], n.attrs["type"])
             for n, default in ((w, "ones"), (b, "zeros")) if n.attrs["init"] != (default,)]
    return call("nn.LayerNorm", mg_size(mg, w.attrs["type"].sizes[0]), **({} if eps == 1e-5 else {"eps": eps})), inits


def _rmsnorm_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    w = leaves.get("weight")
    if w is None or len(leaves) != 1 or not _float32(w) or w.op != "param":
        return None
    users = _uses(graph, [w], "rmsnorm", [w.name])
    if users is None or not _same(users, "eps"):
        return None
    inits = [] if w.attrs["init"] == ("ones",) else [_init(member(w.attrs["path"]), w.attrs["init"],
                                                           w.attrs["type"])]
    return call(mg.helper("RMSNorm"), mg_size(mg, w.attrs["type"].sizes[0]), eps=users[0].attrs["eps"]), inits


# nn.BatchNormNd's state: leaf -> whether it is a learned parameter or a buffer
BN_LEAVES = {"weight": "param", "bias": "param", "running_mean": "buffer", "running_var": "buffer",
             "num_batches_tracked": "buffer"}
BN_DEFAULTS = {"weight": ("ones",), "bias": ("zeros",), "running_mean": ("zeros",), "running_var": ("ones",)}


def _batchnorm_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    if set(leaves) != set(BN_LEAVES):
        return None
    nodes = [leaves[k] for k in BN_LEAVES]
    if any(n.op != op for n, op in zip(nodes, BN_LEAVES.values(), strict=True)) or not _float32(*nodes[:4]) or \
            not all(n.attrs["persistent"] for n in nodes[2:]) or nodes[4].attrs["type"].dtype != DType.int64:
        return None
    users = _uses(graph, nodes, "batchnorm", [n.name for n in nodes])
    if users is None or not _same(users, "eps", "momentum"):
        return None
    ranks = {graph[u.inputs[0]].tensor_type.rank for u in users}
    if len(ranks) != 1 or (rank := ranks.pop()) not in (2, 3, 4, 5):
        return None
    if any(leaves[k].attrs["init"] != v for k, v in BN_DEFAULTS.items()):
        return None
    a = users[0].attrs
    ctor = call(f"nn.BatchNorm{max(1, rank - 2)}d", mg_size(mg, nodes[0].attrs["type"].sizes[0]), eps=a["eps"],
                momentum=a["momentum"])
    return ctor, []


def _conv_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]) -> tuple[Expr, list[Expr]] | None:
    return _conv_like(mg, graph, leaves, "conv")


def _conv_transpose_module(mg: ModuleContext, graph: Graph, leaves: dict[str, Node]
                           ) -> tuple[Expr, list[Expr]] | None:
    return _conv_like(mg, graph, leaves, "conv_transpose")


def _conv_like(mg: ModuleContext, graph: Graph, leaves: dict[str, Node], kind: str) -> tuple[Expr, list[Expr]] | None:
    """nn.ConvNd (weight `[out, in/groups, *kernel]`) or nn.ConvTransposeNd (`[in, out/groups, *kernel]`)."""
    w, b = leaves.get("weight"), leaves.get("bias")
    if w is None or set(leaves) - {"weight", "bias"} or not _float32(*leaves.values()) or w.op != "param":
        return None
    users = _uses(graph, list(leaves.values()), kind, [w.name] + ([b.name] if b else []))
    window = ("kernel", "stride", "padding") + (("output_padding", "groups") if kind == "conv_transpose" else ())
    if users is None or not _same(users, *window) or len({u.attrs.get("groups", 1) for u in users}) != 1:
        return None
    a = users[0].attrs
    groups = a.get("groups", 1)
    first, second = w.attrs["type"].sizes[:2]
    inp, out = (second * groups, first) if kind == "conv" else (first, second * groups)
    kwargs: tuple[tuple[str, Expr], ...] = (("stride", P.TupleExpr(P.ints(a["stride"]))),
                                            ("padding", P.TupleExpr(P.ints(a["padding"]))))
    if kind == "conv_transpose":
        kwargs += (("output_padding", P.TupleExpr(P.ints(a["output_padding"]))),)
    if groups != 1:
        kwargs += (("groups", Lit(groups)),)
    if b is None:
        kwargs += (("bias", Lit(False)),)
    cls = f"nn.Conv{len(a['kernel'])}d" if kind == "conv" else f"nn.ConvTranspose{len(a['kernel'])}d"
    ctor = P.Call(P.dotted(cls), (mg_size(mg, inp), mg_size(mg, out), P.TupleExpr(P.ints(a["kernel"]))), kwargs)
    inits = [_init(member(n.attrs["path"]), n.attrs["init"], n.attrs["type"]) for n in (w, b) if n]
    return ctor, inits


MODULES: dict[str, Recogniser] = {"linear": _linear_module, "embedding": _embedding_module,
                                  "layernorm": _layernorm_module, "rmsnorm": _rmsnorm_module,
                                  "batchnorm": _batchnorm_module, "conv": _conv_module,
                                  "conv_transpose": _conv_transpose_module}
