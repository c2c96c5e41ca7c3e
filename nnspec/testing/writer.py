"""What a drawn spec is written with: how it names its dims, their values, and the writer of statements that
tracks every variable's axes (`Code`, `Block`, `Gen`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from nnspec.compiler.ops.registry import with_trait

# the functions an `act` option may name: every activation op (a spec calls each by its op's name)
ACTIVATIONS = tuple(sorted(with_trait("activation")))

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
    from nnspec.compiler.elaborate import BUILTINS, CONSTANTS

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
    scans: bool = False           # draw recurrences (`scan`) among the blocks too

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
