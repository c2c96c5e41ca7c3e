"""Graph structure: inputs, parameters, constants, block calls, repeats and tuple access."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.ir import Axis, TensorType, Type
from nnspec.compiler.ops.registry import Effect, op
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


@op("input", "source", doc="A graph input (a model input or a block parameter); an optional model input has the "
    "`default` value it is filled with when not given.", attrs={"name": str, "type": TensorType,
                                                                "default": (int, float, bool)},
    optional=("default",), arity=0, glyph="", effect=Effect.LEAF, traits=("source",))
def _input(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return attrs["type"]


@op("param", "source", doc="A learned parameter at path `path`, initialised by `init` "
    "(`('normal', std)`, `('zeros',)`, `('ones',)`); `trainable=false` (set by transforms such as LoRA) freezes it.",
    attrs={"path": str, "type": TensorType, "init": tuple, "trainable": bool}, optional=("trainable",),
    arity=0, glyph="", effect=Effect.LEAF, traits=("source", "state"))
def _param(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return attrs["type"]


@op("const", "source", doc="A scalar constant (no axes) of dtype `type.dtype`.",
    attrs={"value": (int, float, bool), "type": TensorType}, arity=0, glyph="", traits=("source",))
def _const(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return attrs["type"]


def _check_args(what: str, ins: list[Type], params: tuple[TensorType, ...], sizes: Sizes) -> None:
    if len(ins) != len(params):
        raise SpecError("E019", f"{what} takes {len(params)} tensor arguments, got {len(ins)}")
    for got, want in zip(ins, params, strict=True):
        if got != want:
            raise SpecError("E012", f"{what} expects {want}, got {got}")


@op("call", "structure", doc="Apply block template `block` with its parameters under scope `scope`.",
    attrs={"block": str, "scope": str, "params": tuple, "result": (TensorType, tuple)}, glyph="",
    effect=Effect.OWNS_STATE, traits=("structure",))
def _call(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    _check_args(f"block {attrs['block']}", ins, attrs["params"], sizes)
    return attrs["result"]


@op("repeat", "structure", doc="Apply block template `block` `count` times, feeding the output back as the first "
    "argument (a tuple `result`: its k members back as the first k arguments, the carried state); weights under "
    "`scope.0`, `scope.1`, ... or, when `shared`, one set under `scope`. `variants` ((index, block) pairs: those "
    "iterations run another template of the same type) come from `repeat(..., index=i)` or from transforms; "
    "`groups` (consecutive runs of count/groups iterations share the weights under `scope.0` ... "
    "`scope.{groups-1}`) from transforms.",
    attrs={"block": str, "scope": str, "count": int, "shared": bool, "params": tuple,
           "result": (TensorType, tuple), "variants": tuple, "groups": int}, optional=("variants", "groups"),
    glyph="×N", effect=Effect.OWNS_STATE, traits=("structure",))
def _repeat(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    _check_args(f"repeat of {attrs['block']}", ins, attrs["params"], sizes)
    groups = attrs.get("groups")
    if groups is not None and (attrs["shared"] or groups < 1 or attrs["count"] % groups):
        raise SpecError("E015", f"repeat {attrs['scope']}: {groups} weight groups do not divide {attrs['count']} "
                        "separate iterations")
    if any(not 0 <= i < attrs["count"] for i, _ in attrs.get("variants", ())):
        raise SpecError("E015", f"repeat {attrs['scope']}: a variant names an iteration outside "
                        f"0..{attrs['count'] - 1}")
    result = attrs["result"]
    carried = tuple(attrs["params"][:len(result)]) if isinstance(result, tuple) else attrs["params"][0]
    if result != carried:
        raise SpecError("E025", f"repeated block {attrs['block']} takes {carried} but returns {result}")
    return result


@op("getitem", "structure", doc="Member `index` of a tuple-valued call.", attrs={"index": int}, arity=1, glyph="",
    traits=("view", "structure"))
def _getitem(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    t = ins[0]
    if not isinstance(t, tuple) or not 0 <= attrs["index"] < len(t):
        raise SpecError("E019", f"cannot take member {attrs['index']} of {t}")
    return t[attrs["index"]]


@op("buffer", "source", doc="Non-learned state at path `path` (running statistics); `persistent` buffers are "
    "saved in the state dict.", attrs={"path": str, "type": TensorType, "init": tuple, "persistent": bool},
    arity=0, glyph="", effect=Effect.LEAF, traits=("source", "state"))
def _buffer(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return attrs["type"]


@op("scan", "structure", doc="A sequential recurrence: for each index along axis `axis` of the inputs after the "
    "first, apply block `block` to (state, slices...) -> (new state, output); returns (final state, outputs "
    "stacked along `axis` at position `position`). One set of weights under `scope`.",
    attrs={"block": str, "scope": str, "axis": Axis, "position": int, "params": tuple, "result": tuple},
    glyph="scan", effect=Effect.OWNS_STATE, traits=("structure",))
def _scan(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    if len(ins) < 2:
        raise SpecError("E019", "scan needs an initial state and at least one sequence")
    return attrs["result"]
