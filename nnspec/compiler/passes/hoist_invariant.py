"""Loop-invariant code motion: work a repeated block does the same way in every iteration moves out of it, so it
runs once per forward instead of once per layer.

What moves: in a block template run inside a `repeat` (directly, or through block calls from such a block), a node
that is pure (the op table's `pure` effect: not a parameter, buffer, random draw, stateful op or block call), is not
part of a fusion group, and reads only the block's invariant arguments, constants and other such nodes. An argument
is invariant when every place that runs the block passes it unchanged for the whole run: every argument of a `call`,
the arguments of a `repeat` after its carried state (the carried state changes each iteration). A `scan` hands its
block one step of each sequence, and a repeat with per-iteration variants runs several templates: blocks they run
are left as they are. Typical finds: Swin's shifted-window mask and the window's relative-position index, built
from `arange`s; a mask or a table built from the model's inputs and handed to every layer.

How: each such node that the block still needs after the move (a node staying in the block, or the block's output,
reads it) and that does arithmetic (views, constants and plain sources such as `arange` are free and stay) becomes a
new argument of the block, appended after the others; every place that runs the block computes it, by a copy of the
nodes it is made of (its inputs mapped to that place's arguments), just before the call or repeat, and passes it.
Applied to a fixed point, from inner blocks outwards, so work in a block called by a repeated block reaches the
graph that runs the repeat. Blocks never run inside a repeat are left alone (moving work out of a block that runs
once only moves it). The duplicates this leaves in a caller (two blocks that built the same mask) are merged by the
`cse` that runs after it.

Why sound: a pure node's value is a function of its inputs; the inputs it reads are the same values in every
iteration and at every call (invariant arguments, constants, or nodes of that kind), and the copy in the caller reads
exactly the values the block's arguments were bound to, so it is the value each iteration computed. Types are
unchanged (a call's argument types equal the block's input types, so the copies type as the originals did). Parameters
and buffers never move, so the state dict, the weight paths and what a LoRA or a quantised layer replaces are the
same. The one difference: a repeat of count 0 now computes the moved values once, unused; they are pure, so nothing
observable changes.

The rewrite works on the whole model when the pass runs over its body (block templates are shared by their callers
and are edited together with them); runs over the templates only report which of them it changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.compiler.passes.base import Context

_CHANGED = "hoist_invariant.changed"   # graph.meta mark: a template this pass changed while over the body


@dataclass(frozen=True)
class Site:
    """A node that runs a block: the graph it is in and the node."""

    graph: Graph
    node: Node


@dataclass(frozen=True)
class HoistInvariant:
    name: str = "hoist-invariant"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        if graph is not ctx.model.graph:
            return graph, bool(graph.meta.pop(_CHANGED, False))
        changed = False
        moved = True
        while moved:   # to a fixed point: what leaves an inner block may leave its caller next
            moved = False
            sites = _sites(ctx.model)
            looped = _looped(ctx.model, sites)
            fixed = _fixed(ctx.model, sites)
            for name in _callees_first(ctx.model, sites):
                template = ctx.model.templates[name]
                if name in looped and _eligible(sites[name]) and _hoist(ctx, template, sites[name], fixed[name]):
                    template.meta[_CHANGED] = True
                    moved = changed = True
                    break   # the sites and what is fixed changed: work them out again
        for name in _inline_identities(ctx.model):
            ctx.explain.rewrite(self.name, ctx.model.graph, None, f"block {name} only returned an argument once its "
                                "work moved out: its calls read that argument instead")
            changed = True
        return graph, changed


def _blocks(node: Node) -> list[str]:
    if OPS[node.op].effect is not Effect.OWNS_STATE:
        return []
    return list(dict.fromkeys([node.attrs["block"], *(b for _, b in node.attrs.get("variants", ()))]))


def _sites(model: Model) -> dict[str, list[Site]]:
    """Block -> every node (in every graph) that runs it."""
    out: dict[str, list[Site]] = {}
    for g in model.graphs():
        for node in g:
            for block in _blocks(node):
                out.setdefault(block, []).append(Site(g, node))
    return out


def _looped(model: Model, sites: dict[str, list[Site]]) -> set[str]:
    """The blocks that run inside a repeat of more than one iteration: run by one, or called from such a block."""
    out: set[str] = set()
    todo = [b for b, ss in sites.items() if any(s.node.op == "repeat" and s.node.attrs["count"] > 1 for s in ss)]
    while todo:
        block = todo.pop()
        if block in out:
            continue
        out.add(block)
        todo += [b for node in model.templates[block] for b in _blocks(node)]
    return out


def _callees_first(model: Model, sites: dict[str, list[Site]]) -> list[str]:
    """The blocks that are run, each after the blocks it runs (work leaves the innermost blocks first)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(block: str) -> None:
        if block in seen:
            return
        seen.add(block)
        for node in model.templates[block]:
            for b in _blocks(node):
                visit(b)
        order.append(block)
    for block in sites:
        visit(block)
    return order


def _fixed(model: Model, sites: dict[str, list[Site]]) -> dict[str, set[str]]:
    """Block -> its values that are the same every time it runs in one forward: the arguments every site passes a
    fixed value in that position (the body runs once: all its values are fixed; a repeat's carried state is not),
    and pure nodes computed from fixed values only."""
    out: dict[str, set[str]] = {}
    body = {n.name for n in model.graph}

    def fixed_in(graph: Graph) -> set[str]:
        return body if graph is model.graph else out.get(graph.name, set())
    for block in reversed(_callees_first(model, sites)):   # callers first
        template = model.templates[block]
        fixed: set[str] = set()
        if _eligible(sites[block]):
            for i, name in enumerate(template.inputs):
                if all(i >= _carried(s.node) and s.node.inputs[i] in fixed_in(s.graph) for s in sites[block]):
                    fixed.add(name)
        for node in template:
            if node.op != "input" and not node.is_impure() and "fusion_group" not in node.meta and \
                    all(i in fixed for i in node.inputs):
                fixed.add(node.name)
        out[block] = fixed
    return out


def _eligible(sites: list[Site]) -> bool:
    """Every place the block runs hands it its arguments one for one: calls, and repeats without variants."""
    return bool(sites) and all(s.node.op == "call" or (s.node.op == "repeat" and not s.node.attrs.get("variants"))
                               for s in sites)


def _carried(node: Node) -> int:
    if node.op != "repeat":
        return 0
    result = node.attrs["result"]
    return len(result) if isinstance(result, tuple) else 1


def _work(node: Node) -> bool:
    """Does computing the node cost anything: not a view, a constant or a plain source (`arange`, a fill). A member
    of a tuple (the cos and sin of `rotary_tables`) counts as its tuple's work: the member moves, never the tuple."""
    op = OPS[node.op]
    return op.has("structure") or (not op.has("view") and (not op.has("source") or op.has("costly_source")))


def _hoist(ctx: Context, template: Graph, sites: list[Site], fixed: set[str]) -> bool:
    movable = {n.name for n in template if n.op != "input" and n.name in fixed}
    if not any(_work(template[n]) for n in movable):
        return False
    # what stays: every node that cannot move, and the free nodes (views, constants) something staying reads
    staying = {n.name for n in template if n.name not in movable}
    for node in reversed(list(template)):
        if node.name in movable and not _work(node) and (
                node.name in template.outputs or any(u.name in staying for u in template.users(node.name))):
            staying.add(node.name)
    hoisted = [n.name for n in template if n.name in movable and n.name not in staying and (
        n.name in template.outputs or any(u.name in staying for u in template.users(n.name)))]
    if not hoisted:
        return False
    carried = max(_carried(s.node) for s in sites)
    used = [i for i in template.inputs if template.users(i) or i in template.outputs]
    cone = _cone(template, hoisted, movable)
    for site in sites:
        _compute_at(ctx, template, site, cone, hoisted)
    for name in hoisted:
        node = template[name]
        arg = template.add("input", [], {"name": name, "type": node.type}, node.type, node.span, hint=f"{name}_arg")
        template.move_before([arg.name], _first_non_input(template))
        template.replace_uses(name, arg.name)
        template.erase(name)
        template.relabel(arg.name, name)   # the argument takes the value's name: the generated code reads the same
    for node in reversed(list(template)):
        if node.name in movable and node.name not in staying and not template.users(node.name) and \
                node.name not in template.outputs:
            template.erase(node.name)
    _drop_unused_arguments(template, sites, used, carried)
    ctx.explain.rewrite("hoist-invariant", template, template[hoisted[0]],
                        f"computed {', '.join(hoisted)} once where the block is run ("
                        f"{', '.join(sorted({s.graph.name for s in sites}))}) instead of in every iteration: "
                        f"they read only arguments that do not change between iterations; now arguments of "
                        f"{template.name}")
    return True


def _cone(graph: Graph, roots: list[str], movable: set[str]) -> list[str]:
    """The movable nodes the roots are computed from (the roots included), in the graph's order."""
    need: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in need or name not in movable:
            continue
        need.add(name)
        todo += graph[name].inputs
    return [n.name for n in graph if n.name in need]


def _first_non_input(graph: Graph) -> str | None:
    return next((n.name for n in graph if n.op != "input"), None)


def _compute_at(ctx: Context, template: Graph, site: Site, cone: list[str], hoisted: list[str]) -> None:
    """Copy the cone into the site's graph before the site and pass the hoisted values as new trailing arguments."""
    graph, node = site.graph, site.node
    bound = dict(zip(template.inputs, node.inputs, strict=True))
    for name in cone:
        src = template[name]
        copy = graph.insert_before(node.name, src.op, [bound[i] for i in src.inputs], src.attrs, src.type, src.span,
                                   hint=name)
        bound[name] = copy.name
    for name in hoisted:
        index = len(node.inputs)
        node.inputs.append(bound[name])
        graph.nx.add_edge(bound[name], node.name, key=index, index=index, type=graph[bound[name]].type)
    node.attrs["params"] = (*node.attrs["params"], *(template[n].type for n in hoisted))


def _inline_identities(model: Model) -> list[str]:
    """Calls of blocks left with nothing but arguments, one of them returned (Swin's `shift_mask` once its mask is
    built outside): each call's uses read that argument, and the call goes. Such a block owns no parameters or
    buffers (it has no nodes), so the state dict is unchanged."""
    done: list[str] = []
    for site_list in _sites(model).values():
        for site in site_list:
            template = model.templates[site.node.attrs["block"]]
            if site.node.op != "call" or any(n.op != "input" for n in template) or len(template.outputs) != 1:
                continue
            arg = site.node.inputs[template.inputs.index(template.outputs[0])]
            site.graph.replace_uses(site.node.name, arg)
            site.graph.erase(site.node.name)
            done.append(template.name)
    for name in dict.fromkeys(done):
        if name not in _sites(model):
            del model.templates[name]
    return list(dict.fromkeys(done))


def _drop_unused_arguments(template: Graph, sites: list[Site], used: list[str], carried: int) -> None:
    """Arguments the block read only to compute what moved out (Llama's `positions`, once its rotary tables are
    made outside) are no longer passed: dropped from the block's signature and from every place that runs it."""
    gone = [i for i, name in enumerate(template.inputs) if i >= carried and name in used and
            not template.users(name) and name not in template.outputs]
    if not gone:
        return
    for i in reversed(gone):
        name = template.inputs.pop(i)
        template.erase(name)
    for site in sites:
        keep = [j for j in range(len(site.node.inputs)) if j not in gone]
        _rewire(site.graph, site.node, [site.node.inputs[j] for j in keep])
        params = site.node.attrs["params"]
        site.node.attrs["params"] = tuple(params[j] for j in keep)


def _rewire(graph: Graph, node: Node, inputs: list[str]) -> None:
    """Give the node these inputs (edges keyed by position, as `Graph.add` makes them)."""
    for src, key in [(u, k) for u, _, k in graph.nx.in_edges(node.name, keys=True)]:
        graph.nx.remove_edge(src, node.name, key=key)
    node.inputs = list(inputs)
    for index, src in enumerate(node.inputs):
        graph.nx.add_edge(src, node.name, key=index, index=index, type=graph[src].type)
