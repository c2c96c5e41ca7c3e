"""The shape of a spec document, as pydantic models, and pydantic errors mapped back to YAML spans."""

from __future__ import annotations

import difflib
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from nnspec.errors import SpecError
from nnspec.spec.yaml_loader import YNode

Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HfOption(_Strict):
    """How an option reads a Hugging Face config.json."""

    key: str | None = Field(None, description="the config key it reads, when not the option's own name; a dotted "
                            "path reads inside a mapping or list (rope_parameters.rope_theta, depths.0)")
    values: dict[str, Scalar] | None = Field(None, description="config value -> option value, for keys whose "
                                             "values are spelled differently (gelu_new: gelu_tanh)")


class OptionDoc(_Strict):
    """An option written out: its default and what it may be."""

    default: Scalar | list[Scalar] = Field(description="the value; a list has one entry per layer (layer_types), "
                                           "read by xs[i] and i in xs")
    choices: list[Scalar] | None = Field(None, description="the only values allowed")
    doc: str | None = Field(None, description="what the option means")
    hf: HfOption | None = Field(None, description="how it is read from a Hugging Face config.json")


class InputDoc(_Strict):
    """A model input written out: its type and, for an optional input, the value it takes when left out."""

    type: str = Field(description="the input's type: dtype[axes], e.g. int64[B, T]")
    default: Scalar | None = Field(None, description="makes the input optional: the value it is filled with")
    doc: str | None = Field(None, description="what the input holds")


class HfConfigDoc(_Strict):
    """How the spec reads (and `nnspec export --hf` writes) a Hugging Face config.json."""

    ignore: list[str] = Field(default_factory=list, description="config keys that do not change the computation")
    require: dict[str, Scalar | list[Scalar] | None] = Field(  # `mlp_only_layers: []`
        default_factory=dict, description="config keys the spec implements at one value only: key -> that value")
    defaults: dict[str, Scalar] = Field(default_factory=dict, description="what Hugging Face uses when config.json "
                                        "omits a key: key -> value")
    export: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="keys `nnspec export --hf` writes into config.json as they are "
        "(model_type, architectures: they choose the Hugging Face class)")


class SpecDoc(_Strict):
    """An nnspec model spec (docs/language.md)."""

    nnspec: int = Field(description="the spec format's version: 1")
    name: str = Field(description="the model's name (an identifier): the generated class and file are named after it")
    doc: str | None = Field(None, description="what the model is; the generated class's docstring")
    dims: dict[str, int | str] = Field(default_factory=dict, description="named sizes: a number, or a formula over "
                                       "other dims (hidden_size / num_attention_heads)")
    options: dict[str, Scalar | list[Scalar] | OptionDoc] = Field(
        default_factory=dict, description="named settings (activation, eps, flags): a value, or {default, choices, "
        "doc, hf}")
    require: list[str] = Field(default_factory=list, description="conditions on dims, checked when the spec is "
                               "checked or, over free dims, at run time (T <= max_position_embeddings)")
    inputs: dict[str, str | InputDoc] = Field(description="the model's inputs: name -> type (int64[B, T]) or "
                                              "{type, default, doc}")
    outputs: dict[str, str] = Field(description="the model's outputs: name -> type")
    blocks: dict[str, str] = Field(default_factory=dict, description="reusable blocks: 'name(args)' -> body "
                                   "statements")
    include: list[str] = Field(default_factory=list, description="files of blocks to include (paths relative to "
                               "this spec, or stdlib names)")
    body: str = Field(description="the model's statements, computing every output from the inputs")
    hf_config: HfConfigDoc | None = Field(None, description="how a Hugging Face config.json maps onto the spec")
    weights: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="checkpoint key mappings by source (hf): parameter path -> key, with "
        "`| transform` and `| optional`")


def validate(root: YNode) -> SpecDoc:
    if not isinstance(root.value, dict):
        raise SpecError("E004", "a spec must be a YAML mapping of keys (nnspec, name, inputs, ...)", root.span)
    try:
        return SpecDoc.model_validate(root.plain())
    except pydantic.ValidationError as e:
        raise _to_spec_error(e, root) from None


def _to_spec_error(e: pydantic.ValidationError, root: YNode, model: type[BaseModel] = SpecDoc) -> SpecError:
    # pydantic reports every alternative of a union: unknown/missing keys are clearest, and otherwise the
    # alternative that got furthest into the value explains the mistake best.
    errors = e.errors()
    _clean = _cleaner(root.plain())
    rank = {"extra_forbidden": 0, "missing": 1}
    errors.sort(key=lambda err: (rank.get(err["type"], 2), -len(_clean(err["loc"]))))
    err = errors[0]
    loc = _clean(err["loc"])
    if err["type"] == "extra_forbidden":
        parent, _ = root.at(loc[:-1])
        key = loc[-1]
        node = _node_at(root, loc[:-1])
        span = node.key_spans.get(str(key), parent) if node is not None else parent
        allowed = _allowed_keys(loc[:-1]) if model is SpecDoc else list(model.model_fields)
        hint = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        where = f" in '{'.'.join(map(str, loc[:-1]))}'" if loc[:-1] else ""
        message = f"unknown key '{key}'{where}"
        if hint:
            message += f"; did you mean '{hint[0]}'?"
        elif allowed:
            message += f"; allowed keys are {', '.join(allowed)}"
        return SpecError("E003", message, span)
    if err["type"] == "missing":
        span, _ = root.at(loc[:-1])
        where = f" in '{'.'.join(map(str, loc[:-1]))}'" if loc[:-1] else ""
        return SpecError("E008", f"missing required key '{loc[-1]}'{where}", span)
    span, _ = root.at(loc)
    got = _node_at(root, loc)
    value = got.plain() if got is not None else None
    what = ".".join(map(str, loc)) or "spec"
    order = ["must be an integer", "must be a number", "must be a string", "must be true or false"]
    alternatives = sorted({_expected(x) for x in errors if _clean(x["loc"]) == loc},
                          key=lambda a: order.index(a) if a in order else len(order))
    expected = alternatives[0] if len(alternatives) == 1 else (
        "must be " + ", ".join(a.removeprefix("must be ") for a in alternatives[:-1]) + " or " +
        alternatives[-1].removeprefix("must be "))
    return SpecError("E004", f"'{what}' {expected}, got {_kind(value)} {value!r}"[:300], span)


def _cleaner(data: Any) -> Any:
    """`clean(loc)`: pydantic's loc without the names of union alternatives (`str`, `OptionDoc`, `list[str]`).

    The loc is walked along the document, so a user's key that looks like such a name (`Name`, `x[B, T]`,
    `str`) is kept: only a part that is not a key or index of the value reached so far may be dropped.
    """
    def clean(loc: tuple[Any, ...]) -> tuple[Any, ...]:
        out: list[Any] = []
        node, walking = data, True
        for p in loc:
            in_dict = isinstance(node, dict) and isinstance(p, str) and p in node
            in_list = isinstance(node, list) and isinstance(p, int) and not isinstance(p, bool) and 0 <= p < len(node)
            if walking and (in_dict or in_list):
                node = node[p]
            elif (isinstance(p, str) and p[:1].isupper()) or "[" in str(p) or \
                    p in ("str", "int", "bool", "float", "function-after"):
                continue
            else:
                walking = False  # a missing key: nothing below it is in the document
            out.append(p)
        return tuple(out)
    return clean


def _node_at(root: YNode, loc: tuple[Any, ...]) -> YNode | None:
    node = root
    for key in loc:
        in_dict = isinstance(node.value, dict) and key in node.value
        in_list = isinstance(node.value, list) and isinstance(key, int) and key < len(node.value)
        if in_dict or in_list:
            node = node.value[key]
        else:
            return None
    return node


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    if not loc:
        return list(SpecDoc.model_fields)
    if loc[0] == "hf_config":
        return list(HfConfigDoc.model_fields) if len(loc) == 1 else []
    if loc[0] == "options":
        return list(OptionDoc.model_fields) if len(loc) == 2 else list(HfOption.model_fields)
    if loc[0] == "inputs" and len(loc) == 2:  # an input written as a mapping: {type, default, doc}
        return list(InputDoc.model_fields)
    return []


def _expected(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind.startswith("int"):
        return "must be an integer"
    if kind.startswith("string"):
        return "must be a string"
    if kind.startswith("bool"):
        return "must be true or false"
    if kind.startswith("dict") or kind == "model_type":
        return "must be a mapping"
    if kind.startswith("list"):
        return "must be a list"
    if kind.startswith("float"):
        return "must be a number"
    return "is invalid: " + err["msg"].lower()


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "the string", bool: "the boolean",
            int: "the integer", float: "the number", type(None): "nothing"}.get(type(value), "")


class LibraryDoc(_Strict):
    """An included file: blocks (and its own includes) only."""

    nnspec: int
    doc: str | None = None
    include: list[str] = Field(default_factory=list)
    blocks: dict[str, str] = Field(default_factory=dict)


def validate_library(root: YNode) -> LibraryDoc:
    if not isinstance(root.value, dict):
        raise SpecError("E004", "an included file must be a YAML mapping (nnspec, blocks, include)", root.span)
    try:
        return LibraryDoc.model_validate(root.plain())
    except pydantic.ValidationError as e:
        raise _to_spec_error(e, root, LibraryDoc) from None
