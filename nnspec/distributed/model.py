"""A spec's generated module, built privately for one process's share of a distributed run.

`nnspec.build` registers the generated module in `sys.modules`, shared by every model built from the same source.
Tensor parallelism must make the module's head counts local (its reshapes read module constants such as `N_HEAD`),
which would leak into any other model of that source; so distributed models execute the same generated source into
a module object of their own, whose constants `localize` may then rewrite.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nnspec.backends.loading import load_source
from nnspec.compiler.ir import Model
from nnspec.pipeline import Pipeline


def build_model(spec: str | os.PathLike[str], *, seed: int = 0, opt: int | None = None,
                transforms: Mapping[str, Any] | None = None, **dims: Any) -> nn.Module:
    """The spec's module (generated torch code at level `opt`), parameters initialised from `torch.manual_seed(seed)`
    so every rank starts from the same weights, its class in a module object no other model shares."""
    pipeline = Pipeline(spec, overrides=dims, transforms=transforms)
    compiled = pipeline.artifact("torch", opt, None)
    module = load_source(compiled.source, compiled.result.model.name, private=True)
    module.__dict__["__nnspec_private__"] = True
    torch.manual_seed(seed)
    model = getattr(module, compiled.class_name)()
    model.spec_model = compiled.result.model
    return model


def spec_model(model: nn.Module) -> Model:
    found = getattr(model, "spec_model", None)
    if found is None:
        raise ValueError("not a model built from a spec: build it with nnspec.distributed.build_model")
    return found


def localize(model: nn.Module, local_dims: Mapping[str, int]) -> dict[str, int]:
    """Rewrite the generated module's size constants (`N_HEAD = 12`) to their per-rank values, after the parameters
    were made at full size. Returns the constants changed. Refuses a module shared through `sys.modules`."""
    constants = type(model).forward.__globals__
    if not constants.get("__nnspec_private__"):
        raise ValueError("tensor parallelism rewrites the module's head counts: build the model with "
                         "nnspec.distributed.build_model, not nnspec.build")
    changed = {}
    for dim, value in local_dims.items():
        name = dim.upper()
        if isinstance(constants.get(name), int):
            constants[name] = changed[name] = value
    return changed
