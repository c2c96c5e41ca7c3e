"""Hypothesis strategies for property tests of nnspec and of tools built on it.

- `specs()` draws spec texts (YAML strings) that `nnspec.check` must accept. They are correct by
  construction: the generator tracks every variable's axes while it writes the statements.
- `inputs_for(result)` draws a dict of input tensors for a checked model (torch is imported only when
  an example is drawn).

```python
from hypothesis import given, strategies as st
import nnspec
from nnspec.testing import inputs_for, specs

@given(st.data())
def test_runs(data):
    result = nnspec.check(data.draw(specs()))
    inputs = data.draw(inputs_for(result))   # free dims may also be fixed: inputs_for(result, T=4)
```

What a drawn spec contains (each feature is drawn, none is guaranteed):

- dims: a model width, a head count that divides it, the head size, an MLP dim, two vocabulary sizes,
  a position count and a layer count; integers or expressions over each other (`d_model / n_heads`,
  `4 * d_model`) in a shuffled order, spelled in one of several ways (`d_model`, `n_embd`, ...); free
  dims for batch and sequence (`B, T`, `batch, seq` or `N, L`); `require:` lines, static or run-time guards.
- options: an activation choice called as a function (`act(x)`), a dropout probability, and a flag read
  by `bias=` and by `a if flag else b`.
- 1 or 2 inputs: `float32[B, T, d]` features and/or `int64[B, T]` token ids (embedded), plus optional
  learned positions `embedding(arange(T), ...)`.
- 1 to `max_blocks` blocks, all but one kind mapping `[B, T, d]` to itself, so each can be repeated:
  - attention: fused q/k/v (split by `split(qkv[B, T, (3 h hd)], over=3)`, the tuple maybe bound to a
    name first), separate projections, or heads split and the sequence relabelled in one annotation at
    use; a named contraction `s[...] = q * k[B, S, h, hd] / sqrt(hd)` (scale written three ways, axes in
    any order, product maybe chosen by `if`), optional `where(causal_mask(T, S), s, -inf)`, softmax over
    `S`, dropout, and the heads merged by annotation (`o[B, T, (h hd)]`, or a rearrange after);
  - an MLP with a static `width` parameter (passed positionally, by keyword or defaulted): plain, gated
    (GLU, by splitting a doubled projection) or with its down-projection tied to `up.weight`;
  - a gate taking a second tensor; a block returning two tensors (unpacked by its caller); a block whose
    parameter annotation renames the width axis;
  - a chain of random steps: linear (with/without bias, to dims, expressions and literals),
    layernorm/rmsnorm (eps=, over=, name=), the six activations, dropout, residual and augmented
    assignments (`+= -= *=`, in place or on a copy), scalar arithmetic, mean/sum/max over named axes
    broadcast back by name, softmax over either axis, contractions (`m[B, T] = z * z`, `@`, `matmul`),
    comparisons (with `and`/`or`/`not`) in `where`, elementwise `max`/`min`, `exp log abs sqrt rsqrt **`,
    permutes, head split/merge round-trips, and a split
    of the free sequence axis (a run-time guard that it is even);
  - layers that apply earlier blocks by call (`name=` or the default scope), residual call or nested
    `repeat`, sometimes the same block twice.
- the body applies the top-level blocks the same ways, `repeat(N, block, x, name=..)` with separate or
  `shared=true` weights, maybe a chain of steps, then binds 1 to 3 outputs, declared with the type they
  get: the stream `[B, T, d]`, logits `[B, T, vocab]` (a linear head, or `h * wte.weight` tied to the
  embedding), a pooled `[B, d]`, a score `[B, T]`, a literal-width `[B, T, 2]` or a float input passed
  through.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
from hypothesis import strategies as st

__all__ = ["ACTIVATIONS", "FEATURES", "inputs_for", "specs"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")

#: Features `specs(avoid=...)` can leave out, for tools (or nnspec versions) that do not handle them.
FEATURES = frozenset({
    # a tuple bound to a name (`t = split(...)`, `t = pair_block(x)`) and unpacked twice
    "tuple_reuse",
})

Draw = Callable[[st.SearchStrategy[Any]], Any]


# ---- names and sizes ----
@dataclass(frozen=True)
class Names:
    """How one spec spells its dims and free dims."""

    batch: str
    seq: str
    key: str        # the sequence axis seen from the keys' side (attention relabels seq to it)
    width: str
    heads: str
    head_dim: str
    ffn: str
    vocab: str
    types: str      # rows of a second (segment) embedding
    positions: str
    layers: str


NAME_POOLS: dict[str, Sequence[str]] = {
    "width": ("d_model", "n_embd", "hidden_size"),
    "heads": ("n_heads", "n_head", "num_heads"),
    "head_dim": ("head_dim", "d_head"),
    "ffn": ("d_ff", "n_inner", "intermediate_size"),
    "vocab": ("vocab_size", "n_vocab"),
    "types": ("n_types", "type_vocab_size"),
    "positions": ("n_positions", "max_len"),
    "layers": ("n_layers", "n_layer"),
}
FREE_POOLS = (("B", "T", "S"), ("batch", "seq", "src"), ("N", "L", "K"))


@dataclass(frozen=True)
class Dims:
    """The value of every declared dim."""

    width: int
    heads: int
    head_dim: int
    ffn: int
    vocab: int
    types: int
    positions: int
    layers: int


@dataclass(frozen=True)
class Width:
    """The last axis of a `[batch, seq, W]` tensor: how to write its size, and what nnspec names it."""

    text: str       # a size expression, as an argument of linear: `d_model`, `2 * d_model`, `8`
    axis: str       # the axis's name: the dim's name, or the size expression as sympy prints it (`2*d_model`)
    value: int

    @property
    def nameable(self) -> bool:
        """Can the axis be named in an annotation or `over=`?"""
        return self.axis.isidentifier() or self.axis.isdigit()


@st.composite
def _names(draw: Draw) -> Names:
    batch, seq, key = draw(st.sampled_from(FREE_POOLS))
    picked = {role: draw(st.sampled_from(pool)) for role, pool in NAME_POOLS.items()}
    return Names(batch=batch, seq=seq, key=key, **picked)


@st.composite
def _dims(draw: Draw, max_width: int, max_layers: int) -> Dims:
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if 2 * h <= max_width]))
    head_dim = draw(st.integers(max(2, -(-4 // heads)), max_width // heads))
    width = heads * head_dim
    return Dims(width=width, heads=heads, head_dim=head_dim, ffn=draw(st.integers(4, 2 * max_width)),
                vocab=draw(st.integers(4, 16)), types=draw(st.integers(2, 4)),
                positions=draw(st.integers(8, 16)), layers=draw(st.integers(1, max_layers)))


def _dim_lines(draw: Draw, n: Names, d: Dims) -> list[str]:
    """`name: value` lines for `dims:`; some are expressions over others, in any order."""
    values: dict[str, str] = {
        n.width: str(d.width), n.heads: str(d.heads), n.head_dim: str(d.head_dim), n.ffn: str(d.ffn),
        n.vocab: str(d.vocab), n.types: str(d.types), n.positions: str(d.positions), n.layers: str(d.layers),
    }
    style = draw(st.sampled_from(["head_dim from width", "width from head_dim", "both literal"]))
    if style == "head_dim from width":
        values[n.head_dim] = draw(st.sampled_from([f"{n.width} / {n.heads}", f"{n.width} // {n.heads}"]))
    elif style == "width from head_dim":
        values[n.width] = f"{n.heads} * {n.head_dim}"
    for k in (2, 3, 4):
        if d.ffn == k * d.width and draw(st.booleans()):
            values[n.ffn] = f"{k} * {n.width}"
    order = draw(st.permutations(list(values)))
    return [f"{name}: {values[name]}" for name in order]


# ---- writing statements ----
def _reserved() -> set[str]:
    """Names no variable may take: nnspec's built-in functions and constants."""
    import nnspec  # noqa: F401  (registers the built-in functions)
    from nnspec.compiler.elaborate import CONSTANTS
    from nnspec.compiler.ops import BUILTINS

    return {*CONSTANTS, *BUILTINS}


@dataclass
class Code:
    """The statements of one block or of the body, with the names they have taken."""

    taken: set[str]                      # names no variable may take (dims, options, blocks, builtins)
    lines: list[str] = field(default_factory=list)
    variables: set[str] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)
    fresh_axes: int = 0

    def var(self, base: str) -> str:
        """A variable name not used yet in this scope."""
        name, i = base, 1
        while name in self.variables or name in self.taken:
            name, i = f"{base}{i}", i + 1
        self.variables.add(name)
        return name

    def scope(self, base: str) -> str:
        """A parameter scope not used yet in this block, numbered as nnspec numbers a default scope
        (`base`, `base_1`, ...). Call it for calls without `name=` too, so that later names avoid theirs."""
        name, i = base, 1
        while name in self.scopes:
            name, i = f"{base}_{i}", i + 1
        self.scopes.add(name)
        return name

    def axis(self) -> str:
        """A new axis name, for a split whose size nnspec infers."""
        self.fresh_axes += 1
        return f"c{self.fresh_axes}"

    def add(self, line: str) -> None:
        self.lines.append(line)


@dataclass
class Block:
    """A drawn block: its signature (the `blocks:` key), its statements and how to call it."""

    name: str
    signature: str
    lines: list[str]
    takes_gate: bool = False      # a second tensor argument
    width_param: bool = False     # a static size parameter with a default
    pair: bool = False            # returns two tensors (so it cannot be repeated)
    relabels: bool = False        # takes another type than it returns (so it cannot be repeated)


@dataclass
class Gen:
    """What every part of one spec shares while it is drawn."""

    draw: Draw
    n: Names
    d: Dims
    avoid: frozenset[str]
    options: dict[str, str] = field(default_factory=dict)   # name -> YAML value, for the options used
    blocks: list[Block] = field(default_factory=list)
    max_chain: int = 4

    @property
    def stream(self) -> Width:
        """The model width, the last axis of the stream every block takes and returns."""
        return Width(self.n.width, self.n.width, self.d.width)

    def taken(self) -> set[str]:
        dims = {getattr(self.n, f) for f in ("width", "heads", "head_dim", "ffn", "vocab", "types", "positions",
                                              "layers", "batch", "seq", "key")}
        return {*_reserved(), *dims, *OPTION_NAMES, *(b.name for b in self.blocks)}

    def code(self) -> Code:
        return Code(self.taken())

    def stream_type(self) -> str:
        """`[batch, seq, width]`: the type every block takes and returns."""
        return f"[{self.n.batch}, {self.n.seq}, {self.n.width}]"

    # -- options, declared on first use --
    def activation(self) -> str:
        """An activation to call: a builtin, or the choice option naming one."""
        if self.draw(st.integers(0, 3)) == 0:
            if "act" not in self.options:
                default = self.draw(st.sampled_from(ACTIVATIONS))
                choices = self.draw(st.lists(st.sampled_from(ACTIVATIONS), unique=True, max_size=3))
                choices = sorted({default, *choices})
                self.options["act"] = f"{{default: {default}, choices: [{', '.join(choices)}]}}"
            return "act"
        return self.draw(st.sampled_from(ACTIVATIONS))

    def dropout_p(self) -> str:
        """A dropout probability: a literal, the option, or a static `if` on the flag."""
        kind = self.draw(st.sampled_from(["literal", "option", "if"]))
        if kind == "option":
            self.options.setdefault("p_drop", str(self.draw(st.sampled_from([0.0, 0.1, 0.25]))))
            return "p_drop"
        if kind == "if":
            return f"0.1 if {self.flag()} else 0.0"
        return self.draw(st.sampled_from(["0.0", "0.1", "0.5"]))

    def bias_arg(self) -> str:
        """`, bias=...` (or nothing, for the default)."""
        choice = self.draw(st.sampled_from(["default", "true", "false", "option"]))
        if choice == "default":
            return ""
        if choice == "option":
            self.options.setdefault("use_bias", self.draw(st.sampled_from(["true", "false"])))
            return ", bias=use_bias"
        return f", bias={choice}"

    def flag(self) -> str:
        """A boolean option, for `a if flag else b`."""
        self.options.setdefault("use_bias", self.draw(st.sampled_from(["true", "false"])))
        return "use_bias"


OPTION_NAMES = ("act", "p_drop", "use_bias")


# ---- op chains over a [batch, seq, W] tensor ----
def _linear(g: Gen, c: Code, z: str, out: Width, base: str = "fc") -> str:
    """`linear(z, out, ...)` with a fresh `name=`, and a bias by default, by literal or by option; sometimes
    broken over two lines (a newline inside brackets does not end the statement)."""
    sep = g.draw(st.sampled_from([", ", ", ", ",\n    "]))
    return f"linear({z}{sep}{out.text}{g.bias_arg()}, name={c.scope(base)})"


def _norm(g: Gen, c: Code, z: str, w: Width) -> str:
    """layernorm or rmsnorm of z (last axis w), with or without eps=, over= and name=."""
    kind = g.draw(st.sampled_from(["layernorm", "rmsnorm"]))
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


# ---- blocks: each maps [batch, seq, width] to exactly that type ----
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
        else:
            block = LEAVES[g.draw(st.sampled_from(sorted(LEAVES)))](g)
        g.blocks.append(block)
        top.append(block)
    return top


# ---- the body, inputs and outputs ----
@dataclass
class Body:
    """The drawn body, with the inputs and outputs it declares (name -> type) and its requirements."""

    code: Code
    inputs: dict[str, str]
    outputs: dict[str, str]
    require: list[str]


def _body(g: Gen, top: Sequence[Block]) -> Body:
    """Inputs -> the stream h -> each top-level block -> (ops) -> outputs."""
    n = g.n
    c = g.code()
    kinds = g.draw(st.sampled_from([("float",), ("int",), ("float", "int"), ("int", "int"), ("float", "float")]))
    inputs: dict[str, str] = {}
    parts: list[str] = []
    embedded = None
    for kind in kinds:
        if kind == "int":
            first = embedded is None
            name = c.var("ids" if first else "segments")
            inputs[name] = f"int64[{n.batch}, {n.seq}]"
            rows = n.vocab if first else n.types
            scope = c.scope("wte" if first else "tte")
            embedded = embedded or (scope, rows)
            parts.append(f"embedding({name}, {rows}, {n.width}, name={scope})")
        else:
            name = c.var("features")
            inputs[name] = f"float32{g.stream_type()}"
            parts.append(name if g.draw(st.booleans()) else _linear(g, c, name, g.stream, base="in_proj"))
    require = []
    if g.draw(st.booleans()):
        parts.append(f"embedding(arange({n.seq}), {n.positions}, {n.width}, name={c.scope('wpe')})")
        require.append(f"{n.seq} <= {n.positions}")
    if g.draw(st.booleans()):
        require.append(f"{n.width} % {n.heads} == 0")
    h = c.var("h")
    c.add(f"{h} = {' + '.join(parts)}")
    gate = h
    if any(b.takes_gate for b in top):
        gate = c.var("h0")
        c.add(f"{gate} = {h}")  # the embedded input, fed to every gate
    if g.draw(st.booleans()):
        c.add(f"{h} = dropout({h}, {g.dropout_p()})")
    count = g.draw(st.sampled_from([n.layers, str(g.d.layers)]))
    for block in top:
        _apply(g, c, block, h, gate, count)
    if g.draw(st.booleans()):  # some ops in the body itself
        z, w = _chain(g, c, h, g.stream, g.draw(st.integers(1, g.max_chain)))
        c.add(f"{h} = {_to_stream(g, c, z, w)}")
    if g.draw(st.booleans()):
        c.add(f"{h} = {_norm(g, c, h, g.stream)}")
    features = next((name for name, t in inputs.items() if t.startswith("float")), None)
    return Body(c, inputs, _outputs(g, c, h, embedded, features), require)


def _outputs(g: Gen, c: Code, h: str, embedded: tuple[str, str] | None, features: str | None) -> dict[str, str]:
    """Bind 1 to 3 outputs from the final stream h (or a float input, passed through); return their
    declared types. `embedded` is the token embedding's (scope, rows), for a tied head."""
    n = g.n
    b, t = n.batch, n.seq
    kinds = ["stream", "logits", "pooled", "score", "classes", *(["echo"] if features else [])]
    kinds = g.draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3, unique=True))
    out: dict[str, str] = {}
    for kind in kinds:
        name = c.var(kind)
        if kind in ("stream", "echo"):
            c.add(f"{name} = {h if kind == 'stream' else features}")
            out[name] = f"float32[{b}, {t}, {n.width}]"
        elif kind == "logits":
            if embedded is not None and embedded[1] == n.vocab and g.draw(st.booleans()):
                c.add(f"{name}[{b}, {t}, {n.vocab}] = {h} * {embedded[0]}.weight")  # tied to the embedding
            else:
                c.add(f"{name} = {_linear(g, c, h, Width(n.vocab, n.vocab, g.d.vocab), base='head')}")
            out[name] = f"float32[{b}, {t}, {n.vocab}]"
        elif kind == "pooled":
            c.add(f"{name} = {g.draw(st.sampled_from(['mean', 'sum', 'max']))}({h}, over={t})")
            out[name] = f"float32[{b}, {n.width}]"
        elif kind == "score":
            c.add(f"{name} = {g.draw(st.sampled_from(['mean', 'sum', 'max']))}({h}{_over_last(g.stream)})")
            out[name] = f"float32[{b}, {t}]"
        else:
            c.add(f"{name} = {_linear(g, c, h, Width('2', '2', 2), base='classifier')}")
            out[name] = f"float32[{b}, {t}, 2]"
    return out


def _yaml(name: str, dims: list[str], options: dict[str, str], body: Body, blocks: list[Block]) -> str:
    """Assemble the YAML document."""
    def block(text: str) -> str:
        return textwrap.indent(text, "    ")

    lines = ["nnspec: 1", f"name: {name}", "doc: drawn by nnspec.testing.specs()", "dims:"]
    lines += [f"  {d}" for d in dims]
    if options:
        lines += ["options:", *(f"  {k}: {v}" for k, v in options.items())]
    if body.require:
        lines += ["require:", *(f"  - {r}" for r in body.require)]
    lines += ["inputs:", *(f"  {k}: {v}" for k, v in body.inputs.items())]
    lines += ["outputs:", *(f"  {k}: {v}" for k, v in body.outputs.items())]
    if blocks:
        lines.append("blocks:")
        for b in blocks:
            lines += [f"  {b.signature}: |", block("\n".join(b.lines))]
    lines += ["body: |", textwrap.indent("\n".join(body.code.lines), "  ")]
    return "\n".join(lines) + "\n"


def specs(*, max_layers: int = 3, max_blocks: int = 3, max_width: int = 32, max_chain: int = 4,
          avoid: Collection[str] = ()) -> st.SearchStrategy[str]:
    """Valid nnspec spec texts (YAML strings; what they contain is in the module docstring).

    max_layers: the largest repeat count (the layer-count dim); max_blocks: the most blocks (at least one
    is drawn); max_width: the largest model width (at least 4; the MLP dim is at most twice it);
    max_chain: the most steps in one random op chain; avoid: names from `FEATURES` to leave out.
    """
    unknown = set(avoid) - FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
    if max_width < 4 or max_blocks < 1 or max_layers < 1 or max_chain < 1:
        raise ValueError("specs() needs max_width >= 4 and max_blocks, max_layers, max_chain >= 1")
    return _specs(max_layers, max_blocks, max_width, max_chain, frozenset(avoid))


@st.composite
def _specs(draw: Draw, max_layers: int, max_blocks: int, max_width: int, max_chain: int,
           avoid: frozenset[str]) -> str:
    n = draw(_names())
    d = draw(_dims(max_width, max_layers))
    g = Gen(draw, n, d, avoid, max_chain=max_chain)
    top = _blocks(g, draw(st.integers(1, max_blocks)))
    body = _body(g, top)
    return _yaml("drawn", _dim_lines(draw, n, d), g.options, body, g.blocks)


# ---- inputs ----
def inputs_for(result_or_model: Any, *, min_size: int = 2, max_size: int = 5, device: str = "cpu",
               **free_dims: int) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of input tensors, by spec name, for a spec (a path or YAML text), a checked model (`CheckResult` or
    `ir.Model`) or a module made by `nnspec.build`.

    Free dims are drawn from [min_size, max_size] unless given by keyword, and only bindings for which
    the model's run-time guards hold are drawn. Floats are standard normal; an integer input that feeds
    an embedding (directly, or through block calls and repeats) is drawn below the smallest table it
    indexes, any other from [0, 2); bool inputs are fair coins.
    """
    if isinstance(result_or_model, (str, os.PathLike)):
        import nnspec

        result_or_model = nnspec.check(result_or_model)
    model = getattr(result_or_model, "spec_model", None) or getattr(result_or_model, "model", result_or_model)
    free = _free_dims(model)
    unknown = set(free_dims) - set(free)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not free dims of {model.name} (its free dims: {free})")
    sizes = st.fixed_dictionaries({
        name: st.just(free_dims[name]) if name in free_dims else st.integers(min_size, max_size) for name in free
    }).filter(lambda bound: _guards_hold(model, bound))
    bounds = _index_bounds(model)

    @st.composite
    def draw_inputs(draw: Draw) -> dict[str, Any]:
        bound = draw(sizes, label="free dims")
        seed = draw(st.integers(0, 2**31 - 1), label="seed")
        return _make_inputs(model, bound, bounds, seed, device)

    return draw_inputs()


def _free_dims(model: Any) -> list[str]:
    return sorted(name for name, sym in model.dims.free.items() if sym not in model.dims.values)


def _bindings(model: Any, bound: dict[str, int]) -> dict[Any, Any]:
    sizes = dict(model.dims.values)
    sizes.update({model.dims.free[name]: sympy.Integer(v) for name, v in bound.items()})
    return sizes


def _guards_hold(model: Any, bound: dict[str, int]) -> bool:
    sizes = _bindings(model, bound)
    return all(sympy.sympify(g.expr).xreplace(sizes) is sympy.true for g in model.guards)


def _index_bounds(model: Any) -> dict[str, int]:
    """For each integer input that feeds embeddings: the fewest rows among the tables it indexes."""
    bounds: dict[str, int] = {}
    shape_only = {"rearrange", "select", "getitem"}

    def visit(graph: Any, sources: dict[str, str], seen: set[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
        key = (graph.name, tuple(sorted(sources.items())))
        if key in seen:
            return
        seen.add(key)
        for node in graph:
            origin = [sources.get(i) for i in node.inputs]
            if node.op == "embedding" and origin[0] is not None:
                rows = int(model.dims.concrete(graph[node.inputs[1]].type.sizes[0]))
                bounds[origin[0]] = min(rows, bounds.get(origin[0], rows))
            elif node.op in shape_only and origin and origin[0] is not None:
                sources[node.name] = origin[0]
            elif node.op in ("call", "repeat"):
                template = model.templates[node.attrs["block"]]
                inner = {p: o for p, o in zip(template.inputs, origin, strict=True) if o is not None}
                if inner:
                    visit(template, inner, seen)

    visit(model.graph, {node: name for name, node in model.inputs.items()}, set())
    return bounds


def _make_inputs(model: Any, bound: dict[str, int], bounds: dict[str, int], seed: int, device: str
                 ) -> dict[str, Any]:
    import torch

    from nnspec.backends.torch.lowering import TORCH_DTYPES

    sizes = _bindings(model, bound)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for name, node in model.inputs.items():
        t = model.graph[node].type
        shape = [int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes]
        dtype = TORCH_DTYPES[t.dtype]
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            x = torch.rand(shape, generator=gen) < 0.5
        else:
            x = torch.randint(0, bounds.get(name, 2), shape, generator=gen, dtype=dtype)
        out[name] = x.to(device)
    return out
