"""`export_onnx(model, PATH)`: a generated module as an ONNX file, through `torch.onnx.export(dynamo=True)`.

The spec's free dims stay dynamic: the module's own `dynamic_shapes()` (each free dim a `torch.export.Dim`,
bounded as the spec requires) is what the exporter gets, so a model exported with batch 2 and 5 tokens runs on
any batch and length the spec allows. The example inputs are made from the spec's input types (distinct sizes
for distinct free dims, so none is specialised away; integer inputs 0, valid for any embedding table). The file
is checked with `onnx.checker` and, when onnxruntime is installed, run and compared with the module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nnspec.compiler.elaborate import UsageError

ONNX_HINT = 'ONNX export needs the onnx extra: pip install "nnspec[onnx]"'


def example_inputs(model: Any, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """One tensor per required input of an `nnspec.build` module, keyed by the forward's argument names."""
    import torch

    from nnspec.compiler.ir import DType

    spec_model = getattr(model, "spec_model", None)
    if spec_model is None:
        raise UsageError("export_onnx needs a module made by nnspec.build (it reads the spec's input types)")
    chosen = dict(sizes or {})
    out = {}
    for name, node_name in spec_model.inputs.items():
        node = spec_model.graph[node_name]
        if "default" in node.attrs:
            continue   # optional: the exported graph keeps its default
        t = node.tensor_type
        shape = []
        for a in t.axes:
            value = spec_model.dims.value(a.size)
            if value is None:   # a free dim: 2, 3, 4... in order of appearance (an expression of them: evaluated)
                for sym in sorted(spec_model.dims.concrete(a.size).free_symbols, key=lambda s: s.name):
                    chosen.setdefault(sym.name, 2 + len(chosen))
                value = int(spec_model.dims.concrete(a.size).subs({s: chosen[s.name] for s in
                                                                    spec_model.dims.concrete(a.size).free_symbols}))
            shape.append(value)
        dtype = getattr(torch, t.dtype.value)
        if t.dtype == DType.bool:
            out[name] = torch.ones(shape, dtype=dtype)
        elif t.dtype.is_float:
            out[name] = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        else:
            out[name] = torch.zeros(shape, dtype=dtype)
    return out


def export_onnx(model: Any, path: str | os.PathLike[str], *, check: bool = True, opset: int | None = None
                ) -> dict[str, Any]:
    """Write `model` (an `nnspec.build` module) to `path` as ONNX with its free dims dynamic; returns what was
    done: the inputs, the dynamic axes, and (when onnxruntime is installed) the largest difference from torch."""
    import torch

    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise UsageError(ONNX_HINT) from None
    from nnspec.atomic import staged

    model = model.eval()
    inputs = example_inputs(model)
    shapes_of = getattr(model, "dynamic_shapes", None)
    dynamic = {k: v for k, v in (shapes_of() if shapes_of else {}).items() if k in inputs}
    path = Path(path)
    with torch.no_grad():
        program = torch.onnx.export(model, (), kwargs=inputs, dynamic_shapes=dynamic or None, dynamo=True,
                                    opset_version=opset, verbose=False)
    with staged([path]) as (tmp,):
        program.save(tmp)
    info: dict[str, Any] = {"path": str(path), "inputs": {k: list(v.shape) for k, v in inputs.items()},
                            "dynamic": {k: sorted(str(d) for d in v.values()) for k, v in dynamic.items()}}
    if check:
        onnx.checker.check_model(str(path), full_check=True)
        info["checked"] = True
        info["max_abs_diff"] = _compare(model, path, inputs)
    return info


def _compare(model: Any, path: Path, inputs: dict[str, Any]) -> float | None:
    """The largest absolute difference between onnxruntime's outputs and the module's; None without it."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feed)
    with torch.no_grad():
        want = model(**inputs)
    wants = list(want.values()) if isinstance(want, dict) else [want] if torch.is_tensor(want) else list(want)
    return max(float((torch.from_numpy(g) - w.float()).abs().max()) for g, w in zip(got, wants, strict=True))
