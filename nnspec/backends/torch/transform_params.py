"""Parameters through the transforms: the tensor side of `nnspec.compiler.transforms`.

The compiler says, as plain data, where each parameter of a transformed model comes from (`run_steps`,
`share_sources`, `param_specs`, `slicegpt.plan`, `lora.plan_merge`); this module applies that to a dict
`path -> tensor` (e.g. `Interpreter(model).named_spec_parameters()`):

    params = convert_params(model, params, drop=["h.5.attn"], lora=["*.c_attn:8"], dtype="bf16")
    load_params(Interpreter(apply(model, ...)[0]), params)
    merged_model, merged_params = merge(adapted_model, trained_params)

Folding and rotating are computed in float64 and cast back to each parameter's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.compiler.ir import Model
from nnspec.compiler.transforms import TransformError, run_steps
from nnspec.compiler.transforms.lora import plan_merge
from nnspec.compiler.transforms.params import param_specs, share_sources
from nnspec.compiler.transforms.slicegpt import plan

__all__ = ["convert_params", "load_params", "merge", "randlora_delta", "slice_params"]


def convert_params(model: Model, params: dict[str, Any], *, dtype: str | None = None, drop: Any = (),
                   slice_width: int | None = None, rotation: Any = None, lora: Any = (), share: Any = (),
                   fp32_outputs: bool = True, seed: int = 0) -> dict[str, Any]:
    """The parameters of `apply(model, ...)`'s model from `model`'s `params` (a dict path -> tensor).

    Dropped branches' parameters go; a shared group starts from its first iteration's weights; slicing
    rotates with `rotation` (required); new adapter parameters are initialised as their spec says (seeded);
    every tensor is cast to its new dtype.
    """
    out = dict(params)
    for step in run_steps(model, dtype=dtype, drop=drop, slice_width=slice_width, lora=lora, share=share,
                          fp32_outputs=fp32_outputs):
        if step.kind == "share":
            out = {**out, **{path: out[source] for path, source in share_sources(step.after).items()}}
        elif step.kind == "slice":
            if rotation is None:
                raise TransformError("converting weights for --slice needs the rotation (see compute_rotation)")
            out = slice_params(step.before, out, rotation, step.arg)
        model = step.after
    gen = torch.Generator().manual_seed(seed)
    result = {}
    for spec in param_specs(model):
        dtype_ = TORCH_DTYPES[spec.dtype]
        if spec.path in out:
            result[spec.path] = out[spec.path].detach().to(dtype_)
        else:
            result[spec.path] = _init(spec.init, spec.shape, dtype_, gen)
    return result


def _init(init: tuple[Any, ...], shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A new parameter as its spec's init says; normal draws in float64 first, so a dtype does not change them."""
    if init[0] == "normal":
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * init[1]).to(dtype)
    return (torch.ones if init[0] == "ones" else torch.zeros)(shape, dtype=dtype)


def load_params(interp: Any, params: dict[str, Any]) -> None:
    """Copy `params` into an `Interpreter`'s parameters (every parameter must be given, and only those)."""
    own = interp.named_spec_parameters()
    missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    if missing or extra:
        raise ValueError(f"parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for path, p in own.items():
            p.copy_(params[path])


# ---- adapters ----
def merge(model: Model, params: dict[str, Any]) -> tuple[Model, dict[str, Any]]:
    """Fold every adapter into its linear's weight: the model without adapters (parameters unfrozen) and its
    parameters, computing what `model` computes with `params`."""
    p = plan_merge(model)
    new = dict(params)
    for fold in p.folds:
        if fold.kind == "randlora":
            delta = randlora_delta(params, fold.scope)
        else:
            delta = params[f"{fold.scope}.lora_B"].double() @ params[f"{fold.scope}.lora_A"].double()
        w = params[f"{fold.scope}.weight"]
        with torch.no_grad():
            new[f"{fold.scope}.weight"] = (w.double() + fold.scale * delta).to(w.dtype)
    return p.model, {k: v for k, v in new.items() if p.keeps(k)}


def randlora_delta(params: dict[str, Any], base: str) -> torch.Tensor:
    """delta_W (before `scale`) of the RandLoRA adapter at `base` (e.g. `h.3.attn.c_attn`), in float64."""
    a, b = params[f"{base}.randlora_A"].double(), params[f"{base}.randlora_B"].double()
    lam, gamma = params[f"{base}.randlora_lambda"].double(), params[f"{base}.randlora_gamma"].double()
    return torch.einsum("onr,nr,nri,ni->oi", b, lam, a, gamma)


# ---- slicing ----
def slice_params(model: Model, params: dict[str, Any], rotation: Any, width: int) -> dict[str, Any]:
    """The weights of `slice_model(model, width)` from `model`'s `params` and the orthogonal `rotation` Q
    ([D, D], columns ordered by importance, e.g. from `compute_rotation`), as `slicegpt.plan` places them.
    Computed in float64."""
    p = plan(model)
    full = int(model.dims.concrete(p.axis.size))
    Q = torch.as_tensor(rotation, dtype=torch.float64)
    if tuple(Q.shape) != (full, full):
        raise TransformError(f"--slice: the rotation must be {full} x {full}, got {tuple(Q.shape)}")
    if not torch.allclose(Q.T @ Q, torch.eye(full, dtype=torch.float64), atol=1e-6):
        raise TransformError("--slice: the rotation is not orthogonal (Q^T Q != I)")
    Qk = Q[:, :width]
    c = math.sqrt(full / width)
    out = dict(params)
    f64 = {k: v.detach().double() for k, v in params.items()}

    def put(path: str, value: torch.Tensor, like: str) -> None:
        out[path] = value.to(params[like].dtype)

    def fold(norm: tuple[str, str | None] | None, w: torch.Tensor, b: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if norm is None:
            return w, b
        if norm[1]:     # a LayerNorm's bias: b + W beta
            b = (b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)) + w @ f64[norm[1]]
        return w * f64[norm[0]], b

    def center(w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if p.layer_norm:
            w = w - w.mean(0, keepdim=True)
            b = b - b.mean() if b is not None else None
        return w, b

    for action, paths, norm in p.instances:
        if action == "embed":
            e = f64[paths["table"]]
            e = e - e.mean(1, keepdim=True) if p.layer_norm else e
            put(paths["table"], e @ Qk, paths["table"])
        elif action == "norm":
            out[paths["weight"]] = torch.ones(width, dtype=params[paths["weight"]].dtype)
            if paths["bias"]:
                out.pop(paths["bias"], None)
        elif action in ("read", "write", "read_write"):
            wp, bp = paths["weight"], paths["bias"]
            w, b = f64[wp], f64.get(bp) if bp else None
            if action != "write":
                w, b = fold(norm, w, b)
                w = w @ Qk * c
            if action != "read":
                w, b = center(w, b)
                w = Qk.T @ w
                b = Qk.T @ b if b is not None else None
            put(wp, w, wp)
            if b is not None:
                bias_path = bp or wp.rpartition(".")[0] + ".bias"
                out[bias_path] = b.to(params[wp].dtype)
        elif action == "head":
            w, b = fold(norm, f64[paths["table"]], None)
            out[f"{paths['head']}.weight"] = (w @ Qk * c).to(params[paths["table"]].dtype)
            if b is not None:
                out[f"{paths['head']}.bias"] = b.to(params[paths["table"]].dtype)
    return out
