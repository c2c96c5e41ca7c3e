"""`specs()`: the body (inputs, blocks applied, outputs) and the YAML text of a drawn spec."""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from nnspec.testing.blocks import _apply, _blocks
from nnspec.testing.steps import _chain, _linear, _norm, _over_last, _to_stream
from nnspec.testing.writer import FEATURES, Block, Code, Draw, Gen, Width, _dim_lines, _dims, _names


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
          avoid: Collection[str] = (), scans: bool = False) -> st.SearchStrategy[str]:
    """Valid nnspec spec texts (YAML strings; what they contain is in the module docstring).

    max_layers: the largest repeat count (the layer-count dim); max_blocks: the most blocks (at least one
    is drawn); max_width: the largest model width (at least 4; the MLP dim is at most twice it);
    max_chain: the most steps in one random op chain; avoid: names from `FEATURES` to leave out;
    scans: also draw recurrences over the sequence (`scan`: retention, a gated diagonal one, a selective SSM).
    """
    unknown = set(avoid) - FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
    if max_width < 4 or max_blocks < 1 or max_layers < 1 or max_chain < 1:
        raise ValueError("specs() needs max_width >= 4 and max_blocks, max_layers, max_chain >= 1")
    return _specs(max_layers, max_blocks, max_width, max_chain, frozenset(avoid), scans)


@st.composite
def _specs(draw: Draw, max_layers: int, max_blocks: int, max_width: int, max_chain: int,
           avoid: frozenset[str], scans: bool = False) -> str:
    n = draw(_names())
    d = draw(_dims(max_width, max_layers))
    g = Gen(draw, n, d, avoid, max_chain=max_chain, scans=scans)
    top = _blocks(g, draw(st.integers(1, max_blocks)))
    body = _body(g, top)
    return _yaml("drawn", _dim_lines(draw, n, d), g.options, body, g.blocks)
