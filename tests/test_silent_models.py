"""Issue 15, section 1: mistakes that used to check into a wrong model are now located errors, or correct math.

- An annotated assignment over a sum contracts each product term on its own, then adds the terms (Einstein's
  convention): `s[T, S] = q * k + b` is `q @ k.T + b`, never the sum over `d` of `q * k + b`.
- A contraction refuses to sum an axis only one factor has (the attention typo `v[B, T, ...]` for `v[B, S, ...]`);
  `sum(..., over=S)` says a plain sum is meant. A size-1 axis may be summed away (that is dropping it).
- An elementwise op none of whose operands carries every axis of the result (an outer sum or product) is refused
  where it is written, unless an annotated assignment names the result's axes. Ordinary broadcasting stays.
- A size-1 axis that takes part in an error gets a note at the expression that made it.

Every expected value is written from the semantics with plain torch operations in the test.
"""

from __future__ import annotations

from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
from nnspec.backends.torch import Interpreter  # noqa: E402


def spec(inputs: dict[str, str], outputs: dict[str, str], body: str, dims: str = "{d: 4, h: 3}") -> str:
    ins = "\n".join(f"  {k}: {v}" for k, v in inputs.items())
    outs = "\n".join(f"  {k}: {v}" for k, v in outputs.items())
    lines = "\n".join("  " + line for line in body.strip().splitlines())
    return f"nnspec: 1\nname: silent\ndims: {dims}\ninputs:\n{ins}\noutputs:\n{outs}\nbody: |\n{lines}\n"


def run_all(text: str, **inputs: Any) -> list[Any]:
    """The first output computed by the reference interpreter and by the generated module at -O0 and -O2."""
    interp = Interpreter(nnspec.check(text).model, seed=0)
    first = next(iter(interp(**inputs).values()))
    return [first] + [nnspec.build(text, opt=opt)(**inputs) for opt in (0, 2)]


def error(text: str) -> nnspec.SpecError:
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text)
    return info.value


def line_col(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first `needle` in `text`."""
    for i, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return i, line.index(needle) + 1
    raise AssertionError(needle)


# ---- 1. an annotation over a sum ----
@pytest.mark.parametrize("bias_type, bias_of", [
    ("float32[T, S]", lambda b: b),
    ("float32[S]", lambda b: b[None, :]),
    ("float32[T]", lambda b: b[:, None]),
])
def test_annotation_over_a_sum_contracts_the_product_then_adds(bias_type: str, bias_of: Any) -> None:
    text = spec({"q": "float32[T, d]", "k": "float32[S, d]", "b": bias_type}, {"y": "float32[T, S]"},
                "y[T, S] = q * k / 2 + b")
    q, k = torch.randn(5, 4), torch.randn(6, 4)
    b = torch.randn(*[{"T": 5, "S": 6}[a] for a in bias_type[8:-1].split(", ")])
    want = q @ k.T / 2 + bias_of(b)
    for got in run_all(text, q=q, k=k, b=b):
        torch.testing.assert_close(got, want)


def test_each_product_term_contracts_on_its_own_with_its_sign() -> None:
    inputs = {"q": "float32[T, d]", "k": "float32[S, d]", "r": "float32[T, h]", "s": "float32[S, h]",
              "b": "float32[T, S]"}
    text = spec(inputs, {"y": "float32[T, S]"}, "y[T, S] = b - q * k * 0.5 + r * s * 0.5")
    q, k, r, s, b = torch.randn(5, 4), torch.randn(6, 4), torch.randn(5, 3), torch.randn(6, 3), torch.randn(5, 6)
    want = b - (q @ k.T) * 0.5 + (r @ s.T) * 0.5
    for got in run_all(text, q=q, k=k, r=r, s=s, b=b):
        torch.testing.assert_close(got, want)
    text = spec(inputs, {"y": "float32[T, S]"}, "y[T, S] = b - (q * k - r * s)")
    want = b - q @ k.T + r @ s.T   # a subtracted sum's terms change sign
    for got in run_all(text, q=q, k=k, r=r, s=s, b=b):
        torch.testing.assert_close(got, want)


def test_a_sum_inside_a_factor_is_not_distributed_and_is_refused() -> None:
    """`(q * k - r * s) * 0.5` is one factor, evaluated elementwise before any contraction: q * k would be the
    outer [T, d, S], which the target does not name, so it is refused where it is written."""
    text = spec({"q": "float32[T, d]", "k": "float32[S, d]", "r": "float32[T, h]", "s": "float32[S, h]"},
                {"y": "float32[T, S]"}, "y[T, S] = (q * k - r * s) * 0.5")
    err = error(text)
    assert err.code == "E012" and (err.span.line, err.span.col) == line_col(text, "q * k -")


def test_a_bias_term_with_the_contracted_axis_is_refused_not_summed() -> None:
    text = spec({"q": "float32[T, d]", "k": "float32[S, d]", "b": "float32[d]"}, {"y": "float32[T, S]"},
                "y[T, S] = q * k + b")
    err = error(text)
    assert err.code == "E017" and "'d'" in err.message and "sum(..., over=d)" in err.message
    assert (err.span.line, err.span.col) == line_col(text, "y[T, S]")
    line, col = line_col(text, "+ b")
    assert (err.notes[0].span.line, err.notes[0].span.col) == (line, col + 2)


# ---- 2. an axis only one factor has ----
def test_summing_an_axis_of_one_factor_is_refused_with_its_name() -> None:
    text = spec({"p": "float32[B, h, T, S]", "v": "float32[B, S, h, d]"}, {"o": "float32[B, T, h, d]"},
                "o[B, T, h, d] = p * v[B, T, h, d]")
    err = error(text)
    assert err.code == "E017"
    assert "axis 'S'" in err.message and "sum(..., over=S)" in err.message
    assert (err.span.line, err.span.col) == line_col(text, "o[B, T, h, d] =")
    assert err.notes[0].span.col == line_col(text, "p * v")[1]


def test_the_correctly_labelled_contraction_is_attention() -> None:
    text = spec({"p": "float32[B, h, T, S]", "v": "float32[B, S, h, d]"}, {"o": "float32[B, T, h, d]"},
                "o[B, T, h, d] = p * v")
    p, v = torch.randn(2, 3, 5, 6).softmax(-1), torch.randn(2, 6, 3, 4)
    want = torch.einsum("bhts,bshd->bthd", p, v)
    for got in run_all(text, p=p, v=v):
        torch.testing.assert_close(got, want)


def test_a_plain_sum_is_said_with_sum_over() -> None:
    text = spec({"x": "float32[B, T, d]"}, {"y": "float32[B, d]"}, "y[B, d] = x")
    err = error(text)
    assert err.code == "E017" and "a single tensor, not a product" in err.message
    text = spec({"x": "float32[B, T, d]"}, {"y": "float32[B, d]"}, "y = sum(x, over=T)")
    x = torch.randn(2, 5, 4)
    for got in run_all(text, x=x):
        torch.testing.assert_close(got, x.sum(1))


def test_a_size_one_axis_may_be_summed_away() -> None:
    text = spec({"w": "float32[B, T, 1]", "x": "float32[B, T, d]"}, {"y": "float32[B, d]"}, "y[B, d] = w * x")
    w, x = torch.randn(2, 5, 1), torch.randn(2, 5, 4)
    want = (w * x).sum(1)
    for got in run_all(text, w=w, x=x):
        torch.testing.assert_close(got, want)


# ---- 3. outer broadcasts ----
@pytest.mark.parametrize("body, needle", [
    ("y = x + r", "x + r"),
    ("y = x * r", "x * r"),
    ("y = max(x, r)", "max(x, r)"),
    ("y = where(x > 0, x, r)", "where"),
    ("y = x\ny += r", "y += r"),
])
def test_an_outer_broadcast_is_refused_where_it_is_written(body: str, needle: str) -> None:
    text = spec({"x": "float32[B, T, d]", "r": "float32[B, T, h]"}, {"y": "float32[B, T, d]"}, body)
    err = error(text)
    assert err.code == "E012" and "each operand has an axis the other lacks" in err.message
    assert "[B, T, d, h]" in err.message
    assert (err.span.line, err.span.col) == line_col(text, needle)


def test_a_comparison_across_different_axes_is_refused() -> None:
    text = spec({"a": "float32[T]", "b": "float32[S]"}, {"y": "bool[T, S]"}, "y = a < b")
    assert error(text).code == "E012"


def test_an_annotated_assignment_writes_the_outer_product_down() -> None:
    text = spec({"x": "float32[B, T, d]", "r": "float32[B, T, h]"}, {"y": "float32[B, T, d, h]"},
                "y[B, T, d, h] = x + r")
    x, r = torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    want = x[..., :, None] + r[..., None, :]
    for got in run_all(text, x=x, r=r):
        torch.testing.assert_close(got, want)


def test_a_2d_position_table_as_an_explicit_outer_sum() -> None:
    text = spec({"rows": "float32[H, d]", "cols": "float32[W, d]"}, {"pos": "float32[H, W, d]"},
                "pos[H, W, d] = rows + cols")
    rows, cols = torch.randn(3, 4), torch.randn(5, 4)
    for got in run_all(text, rows=rows, cols=cols):
        torch.testing.assert_close(got, rows[:, None, :] + cols[None, :, :])


def test_alibi_style_bias_as_an_explicit_outer_product() -> None:
    text = spec({"slopes": "float32[h]", "dist": "float32[T, S]", "s": "float32[B, h, T, S]"},
                {"y": "float32[B, h, T, S]"}, "bias[h, T, S] = -slopes * dist\ny = s + bias")
    slopes, dist, s = torch.rand(3), torch.rand(5, 6), torch.randn(2, 3, 5, 6)
    want = s - slopes[:, None, None] * dist[None]
    for got in run_all(text, slopes=slopes, dist=dist, s=s):
        torch.testing.assert_close(got, want)


def test_an_outer_broadcast_inside_the_annotated_right_hand_side() -> None:
    text = spec({"m": "bool[T, S]", "x": "float32[B, T]"}, {"y": "float32[B, T, S]"},
                "y[B, T, S] = where(m, x, 0.0)")
    m, x = torch.rand(5, 6) > 0.5, torch.randn(2, 5)
    want = torch.where(m[None], x[:, :, None], torch.zeros(()))
    for got in run_all(text, m=m, x=x):
        torch.testing.assert_close(got, want)


def test_an_annotation_naming_too_few_axes_still_refuses_the_outer_sum() -> None:
    text = spec({"x": "float32[B, T, d]", "r": "float32[B, T, h]"}, {"y": "float32[B, T, d]"},
                "y[B, T, d] = relu(x + r)")
    err = error(text)
    assert err.code == "E012" and (err.span.line, err.span.col) == line_col(text, "x + r")


@pytest.mark.parametrize("inputs, body, want", [
    ({"x": "float32[B, T, d]", "b": "float32[d]"}, "y = x + b", lambda x, b: x + b),
    ({"x": "float32[B, T, d]", "b": "float32[T, d]"}, "y = x * b", lambda x, b: x * b),
    ({"x": "float32[B, T, d]", "b": "float32[B, d]"}, "y = x - b", lambda x, b: x - b[:, None, :]),
    ({"x": "float32[B, T, d]", "b": "float32[T, d]"}, "y = where(b > 0, x, b)",
     lambda x, b: torch.where(b > 0, x, b)),
])
def test_ordinary_broadcasting_stays(inputs: dict[str, str], body: str, want: Any) -> None:
    text = spec(inputs, {"y": "float32[B, T, d]"}, body)
    x = torch.randn(2, 5, 4)
    b = torch.randn(*[{"B": 2, "T": 5, "d": 4}[a] for a in inputs["b"][8:-1].split(", ")])
    for got in run_all(text, x=x, b=b):
        torch.testing.assert_close(got, want(x, b))


def test_a_mask_against_scores_stays() -> None:
    text = spec({"s": "float32[B, h, T, S]", "m": "bool[T, S]"}, {"y": "float32[B, h, T, S]"},
                "y = where(m, s, -1e9)")
    s, m = torch.randn(2, 3, 5, 6), torch.rand(5, 6) > 0.5
    for got in run_all(text, s=s, m=m):
        torch.testing.assert_close(got, torch.where(m, s, torch.tensor(-1e9)))


# ---- 4. size-1 leftovers ----
def test_a_size_one_axis_in_an_error_points_at_where_it_was_made() -> None:
    text = spec({"x": "float32[B, T, d]"}, {"y": "float32[B, T, d]"},
                "g = sigmoid(linear(x, 1, name=gate))\ny = g * x")
    err = error(text)
    assert err.code == "E012" and (err.span.line, err.span.col) == line_col(text, "g * x")
    [note] = err.notes
    assert (note.span.line, note.span.col) == line_col(text, "linear(x, 1")
    assert "size 1" in note.message and "sum(..., over=1)" in note.message


def test_a_size_one_axis_in_an_output_mismatch_points_at_where_it_was_made() -> None:
    text = spec({"x": "float32[B, T, d]"}, {"y": "float32[B, T]"}, "z = relu(x)\ny = linear(z, 1, name=score)")
    err = error(text)
    assert err.code == "E021"
    born = [n for n in err.notes if "size 1" in n.message]
    assert [(n.span.line, n.span.col) for n in born] == [line_col(text, "linear(z, 1")]


def test_a_size_one_axis_in_a_view_error_points_at_where_it_was_made() -> None:
    text = spec({"x": "float32[B, T, d]"}, {"y": "float32[B, T]"}, "s = linear(x, 1, name=score)\ny = s[B, T]")
    err = error(text)
    assert err.code == "E018" and [(n.span.line, n.span.col) for n in err.notes] == [line_col(text, "linear(x")]


def test_dropping_the_size_one_axis_fixes_it() -> None:
    text = spec({"x": "float32[B, T, d]", "g": "float32[B, T, 1]"}, {"y": "float32[B, T, d]"},
                "y = sum(g, over=1) * x")
    x, g = torch.randn(2, 5, 4), torch.randn(2, 5, 1)
    for got in run_all(text, x=x, g=g):
        torch.testing.assert_close(got, g * x)


def test_no_size_one_note_on_an_unrelated_error() -> None:
    text = spec({"x": "float32[B, T, 1]", "i": "float32[B, T]"}, {"y": "float32[B, T, 1]"},
                "y = embedding(i, 10, 4)")
    assert error(text).notes == []
