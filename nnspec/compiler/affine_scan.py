"""Which scans are linear recurrences: a step whose new state is `a * state + b`, with `a` and `b` computed from
the step's other inputs and weights only (Mamba's selective scan, RetNet's decaying state, an EMA).

Such a recurrence is associative (h_t = a_t h_(t-1) + b_t composes as (a, b) pairs), so a backend may compute
every a_t and b_t at once and combine them in log-depth or chunked form instead of stepping through the axis in
Python; the results are the step loop's up to floating-point reassociation. A step that runs anything impure
(dropout, random sources) is left to the loop: evaluating it out of order would draw different numbers.
"""

from __future__ import annotations

import networkx as nx

from nnspec.compiler.ir import Graph, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect


def affine_state(step: Graph) -> bool:
    """Whether block `step` (inputs: state, slices...; outputs: new state[, y]) makes its new state as
    `a * state + b` (either operand order) with neither `a` nor `b` depending on the state."""
    if not step.inputs or not step.outputs or any(OPS[n.op].effect not in (Effect.PURE, Effect.LEAF)
                                                  for n in step.nodes.values()):
        return False
    state = step.inputs[0]
    new = step.nodes[step.outputs[0]]
    if not isinstance(new.type, TensorType) or not new.type.dtype.is_float or new.op != "add" \
            or len(new.inputs) != 2:
        return False
    from_state = nx.descendants(step.nx, state) | {state}
    through = [i for i in new.inputs if i in from_state]
    if len(through) != 1 or through[0] == state:
        return False
    mul = step.nodes[through[0]]
    if mul.op != "mul" or len(mul.inputs) != 2 or sorted(i == state for i in mul.inputs) != [False, True]:
        return False
    coefficient = next(i for i in mul.inputs if i != state)
    # what else the step computes from the state (its output y) is evaluated with the state before each step
    return coefficient not in from_state


def direct_coefficients(step: Graph) -> tuple[int, int] | None:
    """For a step that `affine_state` accepts: the positions among the step's inputs of `a` and `b` when both are
    inputs of the step themselves (slices of scanned tensors, as Mamba's `h = decay * h + drive`) with the state's
    exact type (same axes in the same order, same dtype), else None. A backend may then read every a_t and b_t
    straight from the scanned tensors instead of evaluating the step to find them."""
    if not affine_state(step):
        return None
    state = step.inputs[0]
    new = step.nodes[step.outputs[0]]
    mul = next(step.nodes[i] for i in new.inputs if step.nodes[i].op == "mul" and state in step.nodes[i].inputs)
    a = next(i for i in mul.inputs if i != state)
    b = next((i for i in new.inputs if i != mul.name), mul.name)
    want = step.nodes[state].type
    if any(i not in step.inputs[1:] or step.nodes[i].type != want for i in (a, b)):
        return None
    return step.inputs.index(a), step.inputs.index(b)
