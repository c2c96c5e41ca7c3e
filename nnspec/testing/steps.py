"""Op chains over a `[batch, seq, W]` tensor: each step writes one statement and returns the new variable and its
width."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from nnspec.compiler.ops.registry import with_trait
from nnspec.testing.writer import Code, Gen, Width


def _linear(g: Gen, c: Code, z: str, out: Width, base: str = "fc") -> str:
    """`linear(z, out, ...)` with a fresh `name=`, and a bias by default, by literal or by option; sometimes
    broken over two lines (a newline inside brackets does not end the statement)."""
    sep = g.draw(st.sampled_from([", ", ", ", ",\n    "]))
    return f"linear({z}{sep}{out.text}{g.bias_arg()}, name={c.scope(base)})"


def _norm(g: Gen, c: Code, z: str, w: Width) -> str:
    """layernorm or rmsnorm of z (last axis w), with or without eps=, over= and name=."""
    kind = g.draw(st.sampled_from(sorted(with_trait("row_norm"))))
    args = [z]
    if g.draw(st.booleans()):
        args.append(f"eps={g.draw(st.sampled_from(['1e-5', '1e-6', '0.001']))}")
    if w.nameable and w.axis.isidentifier() and g.draw(st.booleans()):
        args.append(f"over={w.axis}")
    if g.draw(st.booleans()):
        args.append(f"name={c.scope('ln' if kind == 'layernorm' else 'norm')}")
    else:
        c.scope(kind)  # the default scope nnspec will claim
    return f"{kind}({', '.join(args)})"


def _widths(g: Gen) -> list[Width]:
    """Output sizes for linear: the width, the MLP dim, an expression and a literal."""
    n, d = g.n, g.d
    return [g.stream, Width(n.ffn, n.ffn, d.ffn), Width(f"2 * {n.width}", f"2*{n.width}", 2 * d.width),
            Width(str(d.heads * 4), str(d.heads * 4), d.heads * 4)]


def _over_last(w: Width) -> str:
    """`, over=W` naming the last axis, or nothing (the default is the last axis)."""
    return f", over={w.axis}" if w.axis.isidentifier() else ""


# Each step writes statements over `z: [batch, seq, w]` and returns the variable holding the result and
# the result's last axis (the width, unless the step changes it).
Step = Callable[[Gen, Code, str, Width], tuple[str, Width]]


def _activation_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")
    c.add(f"{y} = {g.activation()}({z})")
    return y, w


def _norm_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")
    c.add(f"{y} = {_norm(g, c, z, w)}")
    return y, w


def _dropout_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")
    c.add(f"{y} = dropout({z}, {g.dropout_p()})")
    return y, w


def _linear_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y, out = c.var("z"), g.draw(st.sampled_from(_widths(g)))
    c.add(f"{y} = {_linear(g, c, z, out)}")
    return y, out


def _residual_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = _copy(g, c, z)  # a square map keeps its axis name, so the sum lines up
    c.add(f"{y} += {_linear(g, c, f'{g.activation()}({z})', w, base='res')}")
    return y, w


def _augmented_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = _copy(g, c, z)
    c.add(f"{y} {g.draw(st.sampled_from(['+=', '-=', '*=']))} {g.activation()}({z})")
    return y, w


def _center_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # [B, T] broadcast against [B, T, W]
    c.add(f"{y} = {z} - {g.draw(st.sampled_from(['mean', 'max']))}({z}{_over_last(w)})")
    return y, w


def _pool_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # reduce over the sequence; broadcasting by name puts it back
    c.add(f"{y} = {z} * sigmoid({g.draw(st.sampled_from(['sum', 'mean', 'max']))}({z}, over={g.n.seq}))")
    return y, w


def _softmax_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")
    over = g.draw(st.sampled_from([g.n.seq, w.axis] if w.axis.isidentifier() else [g.n.seq, None]))
    c.add(f"{y} = softmax({z}{'' if over is None else f', over={over}'})")
    return y, w


def _scalar_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")
    c.add(f"{y} = {g.draw(st.sampled_from([f'0.5 * {z}', f'{z} / 2', f'{z} * 2.0 - 1', f'-{z}']))}")
    return y, w


def _clip_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # comparisons make bool tensors: where's condition
    cond = g.draw(st.sampled_from([f"{z} > 0.0", f"{z} > -1 and {z} < 1", f"not {z} <= 0", f"{z} < -1 or {z} > 1"]))
    c.add(f"{y} = where({cond}, {z}, 0.1 * {z})")
    return y, w


def _clamp_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # two-argument max and min are elementwise
    forms = [f"max({z}, -1.0)", f"min({z}, 1.0)", f"min(max({z}, -2), 2)", f"max({z}, -{z})"]
    c.add(f"{y} = {g.draw(st.sampled_from(forms))}")
    return y, w


def _math_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # the other elementwise functions, on arguments where they are finite
    forms = [f"log(1.0 + exp({z}))", f"sqrt(abs({z}) + 1)", f"{z} / (1.0 + abs({z}))", f"0.5 * {z} ** 2",
             f"{z} * rsqrt({z} * {z} + 1)", f"exp(-abs({z}))"]
    c.add(f"{y} = {g.draw(st.sampled_from(forms))}")
    return y, w


def _ternary_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    y = c.var("z")  # only the taken branch is built
    c.add(f"{y} = {g.activation()}({z}) if {g.flag()} else {_norm(g, c, z, w)}")
    return y, w


def _sumsq_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    """A contraction over the width, written three ways, then broadcast back."""
    n = g.n
    y, m = c.var("z"), c.var("ms")
    forms = [f"{m}[{n.batch}, {n.seq}] = {z} * {z} / {w.value}", f"{m} = {z} @ {z} / {w.value}"]
    if w.axis.isidentifier():
        forms.append(f"{m} = matmul({z}, {z}, over={w.axis}) / {w.value}")
    c.add(g.draw(st.sampled_from(forms)))
    c.add(f"{y} = {z} * rsqrt({m} + 1e-5)")
    return y, w


def _permute_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    """[B, W] + [B, T, W] is [B, W, T] (the left operand's axes first); annotate it back."""
    n, y = g.n, c.var("z")
    c.add(f"{y} = mean({z}, over={n.seq}) + {z}")
    c.add(f"{y} = {y}[{n.batch}, {n.seq}, {w.axis}]")
    return y, w


def _heads_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    """Split W into heads (the head size inferred), work per head, merge back."""
    n, y, part = g.n, c.var("z"), c.axis()
    c.add(f"{y} = {z}[{n.batch}, {n.seq}, ({n.heads} {part})]")
    c.add(f"{y} = softmax({y}, over={n.heads}) * {y}")
    c.add(f"{y} = {y}[{n.batch}, {n.seq}, ({n.heads} {part})]")
    # n_heads * (W / n_heads) simplifies back to W: the merged axis is named as W's size
    return y, Width(w.text, _size_name(w), w.value)


def _fold_step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    """Split the free sequence axis in two (a run-time guard that it is even) and merge it back."""
    n, y, part = g.n, c.var("z"), c.axis()
    c.add(f"{y} = {z}[{n.batch}, (2 {part}), {w.axis}]")
    c.add(f"{y} = {y} * sigmoid(mean({y}, over={part}))")
    c.add(f"{y} = {y}[{n.batch}, (2 {part}), {w.axis}]")  # 2 * (seq/2) is named seq again
    return y, w


STEPS: dict[str, Step] = {
    "activation": _activation_step, "norm": _norm_step, "dropout": _dropout_step, "linear": _linear_step,
    "residual": _residual_step, "augmented": _augmented_step, "center": _center_step, "pool": _pool_step,
    "softmax": _softmax_step, "scalar": _scalar_step, "clip": _clip_step, "clamp": _clamp_step, "math": _math_step,
    "ternary": _ternary_step, "sumsq": _sumsq_step, "permute": _permute_step, "heads": _heads_step,
    "fold": _fold_step,
}


def _step(g: Gen, c: Code, z: str, w: Width) -> tuple[str, Width]:
    """One step, drawn from those that apply to a width w."""
    kinds = [k for k in STEPS if (k not in ("permute", "fold") or w.nameable)
             and (k != "heads" or w.value % g.d.heads == 0)]
    return STEPS[g.draw(st.sampled_from(kinds))](g, c, z, w)


def _copy(g: Gen, c: Code, z: str) -> str:
    """A copy `y = z` to update (z is used again after), or z itself, to update in place."""
    if g.draw(st.booleans()):
        return z
    y = c.var("z")
    c.add(f"{y} = {z}")
    return y


def _size_name(w: Width) -> str:
    """What nnspec names an axis of w's size made by merging: the size expression as sympy prints it
    (`d_model`, `2*d_model`, `8`)."""
    return w.text.replace(" ", "")


def _chain(g: Gen, c: Code, z: str, w: Width, steps: int) -> tuple[str, Width]:
    """`steps` steps from z, now and then separated by a comment or a blank line; returns the last variable
    and its width."""
    for i in range(steps):
        z, w = _step(g, c, z, w)
        gap = g.draw(st.sampled_from(["", "", "", f"# step {i + 1} done", ""]))
        if gap or g.draw(st.integers(0, 7)) == 0:
            c.add(gap)
    return z, w


def _to_stream(g: Gen, c: Code, z: str, w: Width) -> str:
    """An expression of type [batch, seq, width] (exactly the stream's type) from z: [batch, seq, w]."""
    if w.axis == g.n.width and g.draw(st.booleans()):
        return z
    return _linear(g, c, z, g.stream, base="proj")
