"""A checked model and a built one show themselves in a notebook: the check table as HTML, the block graph as SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import nnspec
from tests._small_models import GPT2

SPEC = """nnspec: 1
name: tiny
dims:
  d: 8
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  y = layernorm(linear(x, d, name=proj), name=ln)
"""


def test_check_result_html_has_the_table_rows_escaped_and_the_graph() -> None:
    r = nnspec.check(SPEC)
    html = r._repr_html_()
    assert "<b>tiny</b> (&lt;string&gt;)" in html   # spec text given inline is named <string>, escaped
    assert html.count("<tr>") == len(r.rows) + 2     # header, one per row, total
    assert f"{8 * 8 + 8:,}" in html and f">{r.params:,}<" in html   # proj's params; the total
    assert "<svg" in html and "<?xml" not in html.split("<svg", 1)[0]
    svg = r._repr_svg_()
    assert ET.fromstring(svg[svg.find("<svg"):]).tag.endswith("svg")   # well-formed SVG


def test_built_model_shows_its_check_table() -> None:
    m = nnspec.build("examples/gpt2.yaml", **GPT2)
    html = m._repr_html_()
    assert "<b>gpt2</b>" in html and f"{sum(p.numel() for p in m.parameters()):,}" in html
