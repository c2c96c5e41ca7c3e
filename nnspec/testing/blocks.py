"""Blocks: each maps `[batch, seq, width]` to exactly that type (attention, MLPs, gates, layers of other blocks),
and the ways a block is applied (call, residual call, repeat)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from hypothesis import strategies as st

from nnspec.testing.steps import _chain, _linear, _norm, _to_stream
from nnspec.testing.writer import Block, Code, Gen, Width


def _signature(g: Gen, name: str, extra: Sequence[str] = ()) -> str:
    """`name(x, ...)`, the tensor parameter sometimes annotated with its (checked) type."""
    x = f"x{g.stream_type()}" if g.draw(st.booleans()) else "x"
    return f"{name}({', '.join([x, *extra])})"


def _block_name(g: Gen, kind: str) -> str:
    """`kind`, numbered if taken: mlp, mlp1, ..."""
    names = {b.name for b in g.blocks}
    name, i = kind, 1
    while name in names:
        name, i = f"{kind}{i}", i + 1
    return name


def _chain_block(g: Gen) -> Block:
    """A random chain of steps, projected back to the width."""
    c = g.code()
    c.variables.add("x")
    z, w = _chain(g, c, "x", g.stream, g.draw(st.integers(1, g.max_chain)))
    c.add(f"return {_to_stream(g, c, z, w)}")
    name = _block_name(g, "mix")
    return Block(name, _signature(g, name), c.lines)


def _mlp_block(g: Gen) -> Block:
    """x -> width -> x, where `width` is a static parameter (default: the MLP dim); plain, gated (GLU, by
    splitting a doubled projection) or with the down-projection tied to the up-projection's weight."""
    n = g.n
    c = g.code()
    c.variables.update({"x", "width"})
    h = c.var("h")
    up = c.scope("up")
    style = g.draw(st.sampled_from(["plain", "glu", "tied"]))
    if style == "glu":
        a, b = c.var("a"), c.var("b")
        c.add(f"{a}, {b} = split(linear(x, 2 * width{g.bias_arg()}, name={up})[{n.batch}, {n.seq}, (2 width)], "
              "over=2)")
        c.add(f"{h} = {a} * {g.activation()}({b})")
    else:  # the new axis is named after the parameter: width
        c.add(f"{h} = {g.activation()}(linear(x, width{g.bias_arg()}, name={up}))")
    if g.draw(st.booleans()):
        c.add(f"{h} = dropout({h}, {g.dropout_p()})")
    if style == "tied":  # up.weight is [width, d]: contracting width maps back
        o = c.var("o")
        c.add(f"{o}{g.stream_type()} = {h} * {up}.weight")
        c.add(f"return {o}")
    else:
        c.add(f"return {_linear(g, c, h, g.stream, base='down')}")
    name = _block_name(g, "mlp")
    return Block(name, _signature(g, name, [f"width={n.ffn}"]), c.lines, width_param=True)


def _twin_block(g: Gen) -> Block:
    """Returns two tensors (halves of a doubled projection); its caller unpacks them."""
    n = g.n
    c = g.code()
    c.variables.update({"x", "a", "b"})
    c.add(f"a, b = split(linear(x, 2 * {n.width}, name={c.scope('pair')})[{n.batch}, {n.seq}, (2 {n.width})], "
          "over=2)")
    c.add(f"return a, {g.activation()}(b)")
    name = _block_name(g, "twin")
    return Block(name, _signature(g, name), c.lines, pair=True)


def _relabel_block(g: Gen) -> Block:
    """Its parameter's annotation renames the width axis (on each call, so it is called, not repeated)."""
    c = g.code()
    c.variables.add("x")
    feat = Width("", "feat", g.d.width)
    c.add(f"return {_linear(g, c, _norm(g, c, 'x', feat), g.stream, base='proj')}")
    name = _block_name(g, "relabel")
    return Block(name, f"{name}(x[{g.n.batch}, {g.n.seq}, feat])", c.lines, relabels=True)


def _gate_block(g: Gen) -> Block:
    """x gated by a second tensor argument."""
    c = g.code()
    c.variables.update({"x", "g"})
    c.add(f"return x * sigmoid({_linear(g, c, 'g', g.stream, base='gate_proj')})")
    name = _block_name(g, "gate")
    return Block(name, _signature(g, name, ["g"]), c.lines, takes_gate=True)


def _attention_block(g: Gen) -> Block:
    """Multi-head attention: heads split off by annotation, scores by a named contraction, softmax over
    the keys (the sequence axis relabelled), values contracted back and the heads merged."""
    n, d = g.n, g.d
    c = g.code()
    c.variables.update({"x", "q", "k", "v", "s", "p", "o"})
    bt = f"{n.batch}, {n.seq}"
    head = n.head_dim if g.draw(st.booleans()) else c.axis()  # a dim, or a new name sized by division
    heads = f"({n.heads} {head})"
    style = g.draw(st.sampled_from(["fused", "separate", "split at use"]))
    if style == "fused":
        fused = f"split(linear(x, 3 * {n.width}{g.bias_arg()}, name={c.scope('qkv')})[{bt}, (3 {n.heads} {head})], " \
            "over=3)"
        if g.draw(st.booleans()):
            c.add(f"q, k, v = {fused}")
        else:  # a tuple bound to a name, then unpacked
            t = c.var("qkv")
            c.add(f"{t} = {fused}")
            c.add(f"q, k, v = {t}")
        q, k, v = "q", f"k[{n.batch}, {n.key}, {n.heads}, {head}]", f"v[{n.batch}, {n.key}, {n.heads}, {head}]"
    elif style == "separate":
        for t in ("q", "k", "v"):
            c.add(f"{t} = {_linear(g, c, 'x', g.stream, base=f'{t}_proj')}[{bt}, {heads}]")
        q, k, v = "q", f"k[{n.batch}, {n.key}, {n.heads}, {head}]", f"v[{n.batch}, {n.key}, {n.heads}, {head}]"
    else:  # one annotation relabels the sequence axis and splits the heads
        for t in ("q", "k", "v"):
            c.add(f"{t} = {_linear(g, c, 'x', g.stream, base=f'{t}_proj')}")
        q, k, v = f"q[{bt}, {heads}]", f"k[{n.batch}, {n.key}, {heads}]", f"v[{n.batch}, {n.key}, {heads}]"
    if style != "split at use" and g.draw(st.booleans()):
        c.add(f"q = q[{n.batch}, {n.heads}, {n.seq}, {head}]")  # heads first: a permute
    s_axes = ", ".join(g.draw(st.permutations([n.batch, n.heads, n.seq, n.key])))
    scale = _scale(g, n.head_dim, d.head_dim)
    if g.draw(st.integers(0, 3)) == 0:  # a static choice between two ways to write the product
        c.add(f"s[{s_axes}] = ({q} * {k} if {g.flag()} else {k} * {q}){scale}")
    else:
        c.add(f"s[{s_axes}] = {q} * {k}{scale}")
    if g.draw(st.booleans()):
        c.add(f"s = where(causal_mask({n.seq}, {n.key}), s, -inf)")
    c.add(f"p = softmax(s, over={n.key})")
    if g.draw(st.booleans()):
        c.add(f"p = dropout(p, {g.dropout_p()})")
    if g.draw(st.booleans()):
        c.add(f"o[{bt}, {heads}] = p * {v}")
    else:
        c.add(f"o[{bt}, {n.heads}, {head}] = p * {v}")
        c.add(f"o = o[{bt}, {heads}]")
    c.add(f"return {_linear(g, c, 'o', g.stream, base='out_proj')}")
    name = _block_name(g, "attn")
    return Block(name, _signature(g, name), c.lines)


def _scan_block(g: Gen) -> Block:
    """A recurrence over the sequence (`scan`), its step a block of its own (drawn when `specs(scans=True)`):
    retention (a decaying state of outer products k v^T read by q), a diagonal gated recurrence (an input-dependent
    decay per channel) or a selective SSM as Mamba's (a [width, head_dim] state, decay exp(dt a) and drive dt b u,
    read out by a contraction with c)."""
    n = g.n
    b, t, w, hd = n.batch, n.seq, n.width, n.head_dim
    style = g.draw(st.sampled_from(["retention", "diagonal", "selective"]))
    s = g.code()
    c = g.code()
    c.variables.add("x")
    out = c.var("y")
    final = c.var("last")
    step_name = _block_name(g, "recur")
    if style == "retention":
        gamma = g.draw(st.sampled_from(["0.9", "0.5", "1.0"]))
        s.variables.update({"s", "q", "k", "v", "kv", "o"})
        s.add(f"kv[{b}, {n.heads}, {hd}, {w}] = k * v")
        s.add(f"s = {gamma} * s + kv")
        s.add(f"o[{b}, {n.heads}, {w}] = q * s")
        s.add("return s, o")
        signature = f"{step_name}(s, q, k, v)"
        q, k, v = c.var("q"), c.var("k"), c.var("v")
        heads = f"[{b}, {t}, ({n.heads} {hd})]"
        c.add(f"{q} = {_linear(g, c, 'x', g.stream, base='q_proj')}{heads}")
        c.add(f"{k} = {_linear(g, c, 'x', g.stream, base='k_proj')}{heads}")
        c.add(f"{v} = {_linear(g, c, 'x', g.stream, base='v_proj')}")
        c.add(f"{final}, {out} = scan({step_name}, zeros({b}, {n.heads}, {hd}, {w}), {q}, {k}, {v}, over={t})")
        merged = f"{out}[{b}, {t}, ({n.heads} {w})]"
        c.add(f"return {_linear(g, c, merged, g.stream, base='o_proj')}")
    elif style == "diagonal":
        s.variables.update({"s", "a", "u"})
        s.add("s = a * s + u")
        s.add(f"return s, {g.activation() if g.draw(st.booleans()) else ''}(s)")
        signature = f"{step_name}(s, a, u)"
        a, u = c.var("a"), c.var("u")
        c.add(f"{a} = sigmoid({_linear(g, c, 'x', g.stream, base='gate')})")
        c.add(f"{u} = {_linear(g, c, 'x', g.stream, base='drive')}")
        c.add(f"{final}, {out} = scan({step_name}, zeros({b}, {w}), {a}, {u}, over={t})")
        c.add(f"return {_to_stream(g, c, out, g.stream)}")
    else:
        s.variables.update({"h", "decay", "drive", "r", "y"})
        s.add("h = decay * h + drive")
        s.add(f"y[{b}, {w}] = h * r")
        s.add("return h, y")
        signature = f"{step_name}(h, decay, drive, r)"
        dt, a, bb, r, decay, drive = (c.var(x) for x in ("dt", "a", "bb", "r", "decay", "drive"))
        c.add(f"{dt} = softplus({_linear(g, c, 'x', g.stream, base='dt_proj')})")
        c.add(f"{a} = -exp(param({w}, {hd}, name={c.scope('A_log')}))")
        c.add(f"{bb} = linear(x, {hd}, bias=false, name={c.scope('b_proj')})")
        c.add(f"{r} = linear(x, {hd}, bias=false, name={c.scope('c_proj')})")
        c.add(f"{decay}[{b}, {t}, {w}, {hd}] = exp({dt} * {a})")
        c.add(f"{drive}[{b}, {t}, {w}, {hd}] = {dt} * {bb} * x")
        c.add(f"{final}, {out} = scan({step_name}, zeros({b}, {w}, {hd}), {decay}, {drive}, {r}, over={t})")
        c.add(f"return {_linear(g, c, out, g.stream, base='out_proj')}")
    g.blocks.append(Block(step_name, signature, s.lines))
    name = _block_name(g, "recurrence")
    return Block(name, _signature(g, name), c.lines)


def _scale(g: Gen, head_dim: str, value: int) -> str:
    """Scale scores by 1/sqrt(head_dim), written one of several ways."""
    return g.draw(st.sampled_from([f" / sqrt({head_dim})", f" * {head_dim} ** -0.5", f" * {1 / math.sqrt(value)!r}"]))


def _call(g: Gen, c: Code, block: Block, x: str, gate: str) -> str:
    """A call of `block` on x (and the gate tensor), with `name=` or the default scope."""
    args = [x]
    if block.takes_gate:
        args.append(gate)
    if block.width_param:
        width = g.draw(st.sampled_from([None, g.n.ffn, f"2 * {g.n.width}", "width=8"]))
        if width is not None:
            args.append(width)
    scope = c.scope(block.name)
    if g.draw(st.integers(0, 3)) > 0:
        args.append(f"name={scope}")
    return f"{block.name}({', '.join(args)})"


def _repeat(g: Gen, c: Code, block: Block, x: str, gate: str, count: str) -> str:
    """`repeat(count, block, x, ...)`, with separate or shared weights."""
    args = [count, block.name, x]
    if block.takes_gate:
        args.append(gate)
    if block.width_param and g.draw(st.booleans()):  # further arguments go to the block
        args.append(g.draw(st.sampled_from([f"width={g.n.ffn}", "8"])))
    args.append(f"name={c.scope('layers')}")
    if g.draw(st.booleans()):
        args.append(f"shared={g.draw(st.sampled_from(['true', 'false']))}")
    return f"repeat({', '.join(args)})"


def _apply(g: Gen, c: Code, block: Block, h: str, gate: str, count: str) -> None:
    """One use of a block on the stream variable h: a call, a residual call or a repeat."""
    if block.pair:
        a, b = c.var("a"), c.var("b")
        call = _call(g, c, block, h, gate)
        if g.draw(st.booleans()):  # bind the tuple to one name, then unpack it
            t = c.var("pair")
            c.add(f"{t} = {call}")
            c.add(f"{a}, {b} = {t}")
            if "tuple_reuse" not in g.avoid and g.draw(st.booleans()):
                b = c.var("b")
                c.add(f"{c.var('a')}, {b} = {t}")
        else:
            c.add(f"{a}, {b} = {call}")
        c.add(f"{h} += {a} * {b}")
        return
    how = g.draw(st.sampled_from(["call", "residual"] + ([] if block.relabels else ["repeat"])))
    if how == "repeat":
        c.add(f"{h} = {_repeat(g, c, block, h, gate, count)}")
    elif how == "residual":
        c.add(f"{h} += {_call(g, c, block, _norm(g, c, h, g.stream), gate)}")
    else:
        c.add(f"{h} = {_call(g, c, block, h, gate)}")


def _layer_block(g: Gen, inner: Sequence[Block]) -> Block:
    """Applies each of `inner` (earlier blocks) to x: by call, residual call or a nested repeat."""
    c = g.code()
    c.variables.add("x")
    for block in inner:
        _apply(g, c, block, "x", "x", str(g.draw(st.integers(1, 2))))
    if g.draw(st.integers(0, 3)) == 0:  # the same block twice: one template, two sets of weights
        _apply(g, c, g.draw(st.sampled_from(inner)), "x", "x", "1")
    c.add("return x")
    name = _block_name(g, "layer")
    return Block(name, _signature(g, name), c.lines)


LEAVES: dict[str, Callable[[Gen], Block]] = {
    "attention": _attention_block, "mlp": _mlp_block, "gate": _gate_block, "chain": _chain_block,
    "twin": _twin_block, "relabel": _relabel_block,
}


def _blocks(g: Gen, count: int) -> list[Block]:
    """Draw `count` blocks; return those no other block calls (the body uses them)."""
    top: list[Block] = []
    for _ in range(count):
        if len(top) >= 1 and g.draw(st.booleans()):
            k = g.draw(st.integers(1, len(top)))
            inner, top = top[-k:], top[:-k]
            block = _layer_block(g, inner)
        elif g.scans and g.draw(st.booleans()):  # only when asked for: what is drawn without it is unchanged
            block = _scan_block(g)
        else:
            block = LEAVES[g.draw(st.sampled_from(sorted(LEAVES)))](g)
        g.blocks.append(block)
        top.append(block)
    return top
