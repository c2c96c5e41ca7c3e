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
    `repeat`, sometimes the same block twice;
  - with `specs(scans=True)` only: a recurrence over the sequence, `scan(step, zeros(...), ..., over=T)` with its
    step a block of its own: retention (a decaying state of outer products k v^T read by q), a gated diagonal
    recurrence (s = a * s + u, a = sigmoid(linear(x))) or a selective SSM as Mamba's (decay exp(dt a), drive
    dt b x, read out by a contraction with c).
- the body applies the top-level blocks the same ways, `repeat(N, block, x, name=..)` with separate or
  `shared=true` weights, maybe a chain of steps, then binds 1 to 3 outputs, declared with the type they
  get: the stream `[B, T, d]`, logits `[B, T, vocab]` (a linear head, or `h * wte.weight` tied to the
  embedding), a pooled `[B, d]`, a score `[B, T]`, a literal-width `[B, T, 2]` or a float input passed
  through.
"""

from __future__ import annotations

from nnspec.testing.inputs import inputs_for
from nnspec.testing.spec_text import specs
from nnspec.testing.writer import ACTIVATIONS, FEATURES

__all__ = ["ACTIVATIONS", "FEATURES", "inputs_for", "specs"]
