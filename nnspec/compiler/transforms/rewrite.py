"""What the transforms share: rebuilding graphs with types inferred again, walking the parameter instances
(`h.3.attn.`), and specialising a block template for some of its uses (copying a model and erasing unused
nodes, which the passes do too, are in `graph_edits`).

A block template is shared by every call and every iteration of a repeat, but a transform often targets one
use (`--drop h.5.attn`, `--lora h.3.*:8`). `specialize` walks the model's uses top-down with their parameter
prefixes, asks the transform what to change in each use, and gives the uses that change a new template
(a repeat's iterations that differ become `variants`); uses that do not change keep the original, so a
transform never copies more than it changes.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from nnspec.compiler.analysis import runs_block
from nnspec.compiler.elaborate import UsageError
from nnspec.compiler.graph_edits import copy_model
from nnspec.compiler.ir import Graph, Model, Node, Type, repeat_plan, repeat_weight_sets
from nnspec.compiler.ops import OPS
from nnspec.compiler.sizes import Sizes


class TransformError(UsageError):
    """A transform that cannot apply to this model: a path that names nothing, or a structure the transform
    does not recognise. The message names the flag, the path and the reason."""


# ---- templates ----
def collect_garbage(model: Model) -> None:
    """Drop templates nothing reaches from the body; give a variant its origin's name when the origin is gone."""
    reached: set[str] = set()

    def visit(g: Graph) -> None:
        for node in g:
            if runs_block(node):
                for block in {node.attrs["block"], *dict(node.attrs.get("variants", ())).values()}:
                    if block not in reached:
                        reached.add(block)
                        visit(model.templates[block])

    visit(model.graph)
    model.templates = {n: g for n, g in model.templates.items() if n in reached}
    renames: dict[str, str] = {}
    for name, g in list(model.templates.items()):
        origin = g.meta.get("variant_of")
        if origin and origin not in model.templates and origin not in renames.values():
            renames[name] = origin
    if not renames:
        return
    model.templates = {renames.get(n, n): g for n, g in model.templates.items()}
    for name, g in model.templates.items():
        g.name = name
    for g in model.graphs():
        for node in g:
            if runs_block(node):
                node.attrs["block"] = renames.get(node.attrs["block"], node.attrs["block"])
                if "variants" in node.attrs:
                    node.attrs["variants"] = tuple((i, renames.get(b, b)) for i, b in node.attrs["variants"])


def dedupe_templates(model: Model) -> None:
    """Let identical templates (same nodes and attrs, whatever their names) become one, keeping the first, and
    drop a repeat's variants that run its own block; then collect garbage."""
    from nnspec.compiler.printer import print_graph

    changed = True
    while changed:
        seen: dict[str, str] = {}
        rep: dict[str, str] = {}
        for name, g in model.templates.items():
            body = print_graph(g).replace(f"block {name}(", "block (", 1)
            rep[name] = seen.setdefault(body, name)
        changed = any(k != v for k, v in rep.items())
        for g in model.graphs():
            for node in g:
                if runs_block(node):
                    node.attrs["block"] = rep.get(node.attrs["block"], node.attrs["block"])
                    variants = tuple((i, rep.get(b, b)) for i, b in node.attrs.get("variants", ())
                                     if rep.get(b, b) != node.attrs["block"])
                    if variants:
                        node.attrs["variants"] = variants
                    else:
                        node.attrs.pop("variants", None)
        collect_garbage(model)


def fresh_template_name(model: Model, base: str, tag: str) -> str:
    name = f"{base}_{tag}"
    n = 2
    while name in model.templates:
        name = f"{base}_{tag}{n}"
        n += 1
    return name


# ---- graphs ----
def scope_of(graph: Graph, node: Node) -> str | None:
    """The parameter scope a node is known by: a call's or repeat's `scope`, or the common prefix of the
    parameters an op reads (`c_attn` for a linear reading `c_attn.weight`)."""
    if runs_block(node):
        return node.attrs["scope"]
    paths = [graph[i].attrs["path"] for i in node.inputs if graph[i].op == "param"]
    scopes = {p.rpartition(".")[0] for p in paths}
    return scopes.pop() if len(scopes) == 1 and "" not in scopes else None


class GraphBuilder:
    """Builds a graph node by node, inferring each type with the op's rule."""

    def __init__(self, like: Graph, sizes: Sizes, name: str | None = None) -> None:
        self.graph = Graph(name or like.name)
        self.graph.meta = copy.deepcopy(like.meta)
        self.sizes = sizes

    def type(self, name: str) -> Type:
        return self.graph[name].type

    def add(self, op: str, inputs: list[str], attrs: dict[str, Any], *, hint: str, like: Node | None = None,
            meta: dict[str, Any] | None = None) -> str:
        pending = len(self.sizes.pending)
        t = OPS[op].infer([self.graph[i].type for i in inputs], attrs, self.sizes)
        del self.sizes.pending[pending:]  # the checked spec already holds these facts as guards
        node = self.graph.add(op, inputs, attrs, t, like.span if like else None, hint)
        if like is not None:
            node.meta = copy.deepcopy(like.meta)
        node.meta.update(meta or {})
        return node.name


class Rebuilder:
    """Derives a new model graph by graph, calling `visit` for every node so a transform can replace it;
    every type is inferred again, and a template is derived once per distinct typing of its arguments."""

    def __init__(self, model: Model) -> None:
        self.old = model
        self.model = copy_model(model)
        self.model.templates = {}
        self._memo: dict[tuple[str, tuple[Type, ...]], str] = {}
        self._old: list[Graph] = []

    def run(self) -> Model:
        old = self.old.graph
        self.model.graph = new = self.graph(old, None)
        self.model.inputs = {k: new.inputs[old.inputs.index(v)] for k, v in self.old.inputs.items()}
        self.model.outputs = {k: new.outputs[old.outputs.index(v)] for k, v in self.old.outputs.items()}
        collect_garbage(self.model)
        return self.model

    def template(self, name: str, arg_types: tuple[Type, ...]) -> str:
        key = (name, arg_types)
        if key not in self._memo:
            new = name if name not in self.model.templates else fresh_template_name(self.model, name, "as")
            self._memo[key] = new
            built = self.graph(self.old.templates[name], arg_types, new)   # its callees first, as elaborated
            if new != name:
                built.meta.setdefault("variant_of", name)
            self.model.templates[new] = built
        return self._memo[key]

    def graph(self, g: Graph, arg_types: tuple[Type, ...] | None, name: str | None = None) -> Graph:
        b = GraphBuilder(g, self.model.dims, name)
        env: dict[str, str] = {}
        args = iter(arg_types or ())
        self._old.append(g)
        try:
            for node in g:
                if node.op == "input" and arg_types is not None:
                    attrs = {**node.attrs, "type": next(args)}
                    env[node.name] = b.add("input", [], attrs, hint=node.name, like=node)
                else:
                    env[node.name] = self.visit(b, node, [env[i] for i in node.inputs])
            b.graph.outputs = [self.output(b, env[o], g[o]) for o in g.outputs]
        finally:
            self._old.pop()
        return b.graph

    @property
    def old_graph(self) -> Graph:
        """The graph being rebuilt (the old one)."""
        return self._old[-1]

    def output(self, b: GraphBuilder, new: str, old: Node) -> str:
        """The value returned for a graph output (a transform may cast it back to its declared type)."""
        return new

    def carry(self, b: GraphBuilder, value: str, result: Type) -> str:
        """The value a repeat starts from when its block returns `result`, another type than it takes."""
        raise TransformError(f"a repeated block would return {result} but take {b.type(value)}")

    def visit(self, b: GraphBuilder, node: Node, ins: list[str]) -> str:
        """The new node(s) for `node`, whose inputs are now `ins`; returns the name holding its value."""
        return self.copy(b, node, ins)

    def copy(self, b: GraphBuilder, node: Node, ins: list[str], **changes: Any) -> str:
        attrs = {**node.attrs, **changes}
        if node.op == "scan":
            old = self.old_graph
            if any(b.type(i) != old[j].type for i, j in zip(ins, node.inputs, strict=True)):
                raise TransformError(f"scan {node.attrs['scope']}: the transform changes the types flowing into a "
                                     "scan, which --dtype and --slice do not support yet")
            template = self.old.templates[node.attrs["block"]]
            attrs["block"] = self.template(node.attrs["block"], tuple(template[i].type for i in template.inputs))
        elif runs_block(node):   # a call or repeat: its block is derived again for the new argument types
            args = tuple(b.type(i) for i in ins)
            attrs["block"] = self.template(node.attrs["block"], args)
            result = self.model.templates[attrs["block"]].output_type()
            # the carried value (each member of a carried tuple) must keep one type
            returned = result if isinstance(result, tuple) else (result,)
            if node.op == "repeat" and returned != args[:len(returned)]:
                ins = [self.carry(b, i, r) if b.type(i) != r else i
                       for i, r in zip(ins, returned, strict=False)] + ins[len(returned):]
                args = tuple(b.type(i) for i in ins)
                attrs["block"] = self.template(node.attrs["block"], args)
            if "variants" in attrs:
                attrs["variants"] = tuple((i, self.template(v, args)) for i, v in attrs["variants"])
            attrs["params"] = args
            attrs["result"] = self.model.templates[attrs["block"]].output_type()
        return b.add(node.op, ins, attrs, hint=node.name, like=node)


# ---- instances: every use of every graph, with its parameter prefix ----
def instances(model: Model) -> Iterator[tuple[str, Graph]]:
    """(prefix, graph) for the body and each weight instance of each template (`h.3.`, `h.3.attn.`)."""
    def walk(g: Graph, prefix: str) -> Iterator[tuple[str, Graph]]:
        yield prefix, g
        for node in g:
            if node.op == "repeat":
                for sub, block in repeat_weight_sets(node.attrs):
                    yield from walk(model.templates[block], f"{prefix}{node.attrs['scope']}." + (f"{sub}." if sub
                                                                                               else ""))
            elif runs_block(node):   # a call or scan: one set of weights
                yield from walk(model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.")
    yield from walk(model.graph, "")


def param_nodes(model: Model) -> list[tuple[str, Node]]:
    """Every parameter instance: (full path, its param node), in definition order."""
    return [(prefix + n.attrs["path"], n) for prefix, g in instances(model) for n in g if n.op == "param"]


def known_scopes(model: Model) -> list[str]:
    out = []
    for prefix, g in instances(model):
        for node in g:
            s = scope_of(g, node)
            if s:
                out.append(prefix + s)
            if node.op == "repeat" and not node.attrs["shared"]:
                out.extend(f"{prefix}{node.attrs['scope']}.{i}" for i in range(min(node.attrs["count"], 64)))
    return list(dict.fromkeys(out))


def unknown_path(flag: str, path: str, model: Model, what: str = "a block call or layer") -> TransformError:
    scopes = known_scopes(model)
    hint = difflib.get_close_matches(path, scopes, n=3)
    return TransformError(f"{flag} {path}: no {what} at that path"
                          + (f" (did you mean {', '.join(hint)}?)" if hint else
                             f"; paths look like {', '.join(scopes[:6])}"))


# ---- specialising templates for some of their uses ----
Decide = Callable[[Graph, str], Hashable | None]
Edit = Callable[[Graph, Any], None]


def mark(meta: dict[str, Any], text: str) -> None:
    """Note a transform on a node's or graph's meta (`meta["transform"]`, several joined by "; ")."""
    meta["transform"] = f"{meta['transform']}; {text}" if meta.get("transform") else text


def unmark(meta: dict[str, Any], text: str) -> None:
    """Remove one note `mark` added."""
    notes = [n for n in meta.get("transform", "").split("; ") if n and n != text]
    if notes:
        meta["transform"] = "; ".join(notes)
    else:
        meta.pop("transform", None)


def specialize(model: Model, decide: Decide, edit: Edit, tag: str | Callable[[Any], str],
               note: str | None = None) -> Model:
    """A copy of `model` where each use (prefix) of each graph for which `decide(graph, prefix)` returns a
    decision is replaced by a copy edited by `edit(copy, decision)`. `edit` must depend only on the decision,
    so uses with equal decisions share one new template, named `{block}_{tag}` (`tag(decision)` when a
    function). The body's prefix is "". Structure nodes whose template changed are marked with `note`."""
    out = copy_model(model)
    memo: dict[Hashable, str] = {}

    def visit(g: Graph, prefix: str) -> Graph | None:
        changes: dict[str, dict[str, Any]] = {}
        for node in g:
            if node.op == "repeat":
                plan = repeat_plan(node.attrs)
                scope = f"{prefix}{node.attrs['scope']}."
                done: dict[tuple[str, str], str] = {}
                new = []
                for block, sub in plan:
                    if (block, sub) not in done:
                        done[(block, sub)] = use(block, scope + (f"{sub}." if sub else ""))
                    new.append(done[(block, sub)])
                if new != [b for b, _ in plan]:
                    base = max(dict.fromkeys(new), key=new.count)
                    changes[node.name] = {"block": base,
                                          "variants": tuple((i, b) for i, b in enumerate(new) if b != base)}
            elif runs_block(node):   # a call or scan: one use of its block
                child = use(node.attrs["block"], f"{prefix}{node.attrs['scope']}.")
                if child != node.attrs["block"]:
                    changes[node.name] = {"block": child}
        decision = decide(g, prefix)
        if decision is None and not changes:
            return None
        key = (g.name, decision, tuple(sorted((k, tuple(sorted(v.items()))) for k, v in changes.items())))
        if g is not model.graph and key in memo:
            return out.templates[memo[key]]
        new_g = g.clone()
        for name, attrs in changes.items():
            node = new_g[name]
            node.attrs.update(attrs)
            if not node.attrs.get("variants", True):
                del node.attrs["variants"]
            if note:
                mark(node.meta, note)
        if decision is not None:
            edit(new_g, decision)
        if g is not model.graph:
            suffix = tag if isinstance(tag, str) or decision is None else tag(decision)
            new_g.name = fresh_template_name(out, g.name, suffix if isinstance(suffix, str) else "variant")
            new_g.meta["variant_of"] = g.meta.get("variant_of", g.name)
            out.templates[new_g.name] = new_g
            memo[key] = new_g.name
        return new_g

    def use(block: str, prefix: str) -> str:
        new = visit(model.templates[block], prefix)
        return block if new is None else new.name

    body = visit(model.graph, "")
    if body is not None:
        out.graph = body
    order = {name: i for i, name in enumerate(model.templates)}   # a variant right after its origin
    position = {name: (order.get(g.meta.get("variant_of", name), len(order)), name not in order, i)
                for i, (name, g) in enumerate(out.templates.items())}
    out.templates = dict(sorted(out.templates.items(), key=lambda kv: position[kv[0]]))
    collect_garbage(out)
    return out
