"""Colours by op family, shared by the block graph and the circuit diagrams, with the legend's wording."""

from __future__ import annotations

# family -> (fill, border, legend text). Fills differ pairwise by CIE76 colour difference >= 12 (a glance tells
# any two legend swatches apart; 2.3 is the just-noticeable difference) and keep black text at contrast >= 7:1;
# tests/test_render_palette.py checks both.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "io": ("#ffffff", "#555555", "input / output"),
    "source": ("#bfe8df", "#3f8f80", "index source"),
    "nn": ("#c2d8f5", "#3d6fa8", "learned map"),
    "normalize": ("#d4f0c0", "#4d8a3d", "normalisation"),
    "elementwise": ("#fff0a8", "#b8912a", "elementwise"),
    "reduce": ("#fbcfa6", "#c0712b", "reduction / softmax"),
    "contract": ("#f5c2da", "#9a4d72", "contraction (einsum)"),
    "shape": ("#d9d9d9", "#777777", "reshape / select"),
    "structure": ("#dccaf5", "#6a4c9c", "block"),
}
UNKNOWN = ("#f4cccc", "#a33", "other")
# what a transform made or changed (`node.meta["transform"]`): a border and notes in this colour, in both diagrams
TRANSFORM = "#d9480f"
TRANSFORM_LEGEND = "made or changed by a transform"


def colours(family: str) -> tuple[str, str]:
    fill, border, _ = FAMILIES.get(family, UNKNOWN)
    return fill, border


def legend_text(family: str) -> str:
    return FAMILIES.get(family, UNKNOWN)[2]
