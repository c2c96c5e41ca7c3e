"""The palette's legend colours can be told apart, and read: checked numerically, with CIE L*a*b* (D65) colour
differences and the WCAG 2 contrast ratio, both computed here from their published formulas."""

from __future__ import annotations

import itertools
import math

from nnspec.compiler.diagrams.palette import FAMILIES, TRANSFORM, UNKNOWN

MIN_DELTA_E = 12.0     # CIE76; 2.3 is just noticeable, >= 10 reads as a different colour at a glance
MIN_TEXT_CONTRAST = 7.0   # WCAG AAA for black label text on a fill


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    r, g, b = (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
    return r, g, b


def _lab(hex_colour: str) -> tuple[float, float, float]:
    r, g, b = map(_linear, _rgb(hex_colour))
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _luminance(hex_colour: str) -> float:
    r, g, b = map(_linear, _rgb(hex_colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_formulas_against_known_values() -> None:
    assert math.dist(_lab("#ffffff"), (100, 0, 0)) < 0.05               # white (rounded D65 white point)
    assert math.dist(_lab("#ff0000"), (53.24, 80.09, 67.20)) < 0.1      # sRGB red in L*a*b* (D65)
    assert abs(_contrast("#000000", "#ffffff") - 21.0) < 1e-9
    assert abs(_contrast("#777777", "#ffffff") - 4.48) < 0.01           # the WCAG 4.5:1 borderline grey


def test_every_pair_of_legend_fills_is_distinguishable() -> None:
    fills = {name: fill for name, (fill, _, _) in FAMILIES.items()} | {"other": UNKNOWN[0]}
    close = [(a, b, round(math.dist(_lab(x), _lab(y)), 1))
             for (a, x), (b, y) in itertools.combinations(fills.items(), 2)
             if math.dist(_lab(x), _lab(y)) < MIN_DELTA_E]
    assert not close, f"legend fills too alike (CIE76 < {MIN_DELTA_E}): {close}"


def test_label_text_reads_on_every_fill_and_borders_show() -> None:
    for name, (fill, border, _) in FAMILIES.items():
        assert _contrast("#000000", fill) >= MIN_TEXT_CONTRAST, name
        assert math.dist(_lab(fill), _lab(border)) >= 25, f"{name}: its border hardly shows on its fill"
    assert _contrast(TRANSFORM, "#ffffff") >= 3.0      # the transform colour marks borders and notes on white
