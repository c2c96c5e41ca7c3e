"""The reference interpreter: runs a checked model node by node with plain torch ops.

It is the definition of what a spec computes: generated code and optimised graphs are tested against it.
Parameters live in an `nn.Module` tree whose paths are the spec's (`h.3.attn.c_attn.weight`).
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
from torch import nn

from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame, RuntimeShapeError
from nnspec.backends.torch.ops import LOWERINGS
from nnspec.backends.torch.source import owns_block
from nnspec.compiler.analysis import MEMORY_FRACTION, check_memory, default_max_memory
from nnspec.compiler.ir import Graph, Model, Node, TensorType, repeat_weight_sets


def _default_limit(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory * MEMORY_FRACTION)
    return default_max_memory()


class Scope(nn.Module):
    """A parameter container; nested by dotted path.

    Entries go straight into `_parameters`, `_buffers` and `_modules` and are read back from there
    (`get_submodule`, `get_parameter`, `get_buffer`), never through attributes: a spec's path component may be any
    identifier, even one naming an `nn.Module` attribute (`training`, `forward`, `state_dict`), and
    `named_parameters()` and `state_dict()` keys are still the spec's paths.
    """

    def add_param(self, path: str, param: nn.Parameter) -> None:
        head, _, rest = path.partition(".")
        if rest:
            self.child(head).add_param(rest, param)
        else:
            self._parameters[head] = param

    def add_state(self, path: str, tensor: torch.Tensor, persistent: bool) -> None:
        head, _, rest = path.partition(".")
        if rest:
            self.child(head).add_state(rest, tensor, persistent)
            return
        self._buffers[head] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(head)
        else:
            self._non_persistent_buffers_set.add(head)

    def child(self, name: str) -> Scope:
        child = self._modules.get(name)
        if child is None:
            child = Scope()
            self._modules[name] = child
        assert isinstance(child, Scope)
        return child

    def get_submodule(self, target: str) -> nn.Module:
        module: nn.Module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"no scope {part!r} in {target!r}")
            module = module._modules[part]  # type: ignore[assignment]
        return module

    def get_parameter(self, target: str) -> nn.Parameter:
        scope, _, name = target.rpartition(".")
        params = self.get_submodule(scope)._parameters
        if name not in params:
            raise AttributeError(f"no parameter {target!r}")
        return params[name]  # type: ignore[return-value]

    def get_buffer(self, target: str) -> torch.Tensor:
        scope, _, name = target.rpartition(".")
        buffers = self.get_submodule(scope)._buffers
        if name not in buffers:
            raise AttributeError(f"no buffer {target!r}")
        return buffers[name]  # type: ignore[return-value]


def _init(t: TensorType, init: tuple[Any, ...], shape: list[int], device: torch.device | str,
          generator: torch.Generator | None) -> torch.Tensor:
    dtype = TORCH_DTYPES[t.dtype]
    data = torch.empty(shape, dtype=dtype, device=device)
    if data.device.type != "meta" and not dtype.is_floating_point:
        data.zero_()
    elif data.device.type != "meta":
        kind = init[0]
        if kind == "normal":
            data.normal_(0.0, init[1], generator=generator)
        elif kind == "zeros":
            data.zero_()
        elif kind == "ones":
            data.fill_(1.0)
        else:
            raise ValueError(f"unknown init {init}")
    return data


class Interpreter(nn.Module):
    """`Interpreter(model)(input_ids=...)` -> dict of outputs by spec name."""

    def __init__(self, model: Model, *, device: torch.device | str = "cpu", seed: int | None = 0,
                 max_memory: int | None = None) -> None:
        """Build the parameters (seeded), after refusing with `nnspec.ResourceError`, before allocating anything,
        a model whose parameters and buffers need more than `max_memory` bytes (default: half of the physical
        memory, or of a GPU's memory on a CUDA device). The meta device allocates nothing and is not limited."""
        super().__init__()
        if torch.device(device).type != "meta":
            check_memory(model, max_memory if max_memory is not None else _default_limit(torch.device(device)))
        self.model = model
        self.device = device
        gen = None
        if seed is not None and torch.device(device).type != "meta":
            gen = torch.Generator(device=device).manual_seed(seed)
        self.root = Scope()
        self._build(model.graph, self.root, gen)

    def _build(self, graph: Graph, scope: Scope, gen: torch.Generator | None) -> None:
        sizes = self.model.dims
        for node in graph:
            if node.op == "param":
                t = node.attrs["type"]
                shape = [int(sizes.concrete(s)) for s in t.sizes]
                data = _init(t, node.attrs["init"], shape, self.device, gen)
                frozen = node.attrs.get("trainable", True) is False  # e.g. a base weight under LoRA
                scope.add_param(node.attrs["path"], nn.Parameter(data, requires_grad=False) if frozen else
                                nn.Parameter(data))
            elif node.op == "buffer":
                t = node.attrs["type"]
                shape = [int(sizes.concrete(s)) for s in t.sizes]
                value = _init(t, node.attrs["init"], shape, self.device, gen)
                scope.add_state(node.attrs["path"], value, node.attrs["persistent"])
            elif node.op == "repeat":
                outer = scope.child(node.attrs["scope"])
                for sub, block in repeat_weight_sets(node.attrs):  # per layer, per group, or one shared set
                    self._build(self.model.templates[block], outer.child(sub) if sub else outer, gen)
            elif owns_block(node):   # call, scan: one weight set
                self._build(self.model.templates[node.attrs["block"]], scope.child(node.attrs["scope"]), gen)
        for node in graph:   # an embedding's padding row starts at zero, as torch's and Hugging Face's do
            weight = graph[node.inputs[1]] if node.op == "embedding" else None
            if weight is not None and weight.op == "param" and node.attrs.get("padding_idx") is not None:
                with torch.no_grad():
                    scope.get_parameter(weight.attrs["path"])[node.attrs["padding_idx"]].zero_()

    def named_spec_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.root.named_parameters())

    def bind_sizes(self, inputs: dict[str, torch.Tensor]) -> dict[sympy.Symbol, sympy.Integer]:
        """Free dims from the inputs' shapes; checks ranks, dtypes, sizes and guards."""
        model = self.model
        sizes = dict(model.dims.values)
        missing = [n for n in model.inputs if n not in inputs and "default" not in model.graph[model.inputs[n]].attrs]
        extra = [n for n in inputs if n not in model.inputs]
        if missing or extra:
            raise RuntimeShapeError(f"{model.name} takes inputs {', '.join(model.inputs)}; "
                                    f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        for name, node_name in model.inputs.items():
            t = model.graph[node_name].type
            assert isinstance(t, TensorType)
            if name not in inputs:
                continue
            x = inputs[name]
            if x.dim() != t.rank:
                raise RuntimeShapeError(f"input {name} must be {t} ({t.rank} axes), got shape {tuple(x.shape)}")
            if x.dtype != TORCH_DTYPES[t.dtype]:
                raise RuntimeShapeError(f"input {name} must have dtype {t.dtype}, got {x.dtype}")
            for axis, n in zip(t.axes, x.shape, strict=True):
                value = sympy.sympify(axis.size).xreplace(sizes)
                if isinstance(value, sympy.Symbol):
                    sizes[value] = sympy.Integer(n)
                elif value.is_Integer and int(value) != n:
                    raise RuntimeShapeError(f"input {name} axis {axis.name} must have size {value}, got {n}")
        for guard in model.guards:
            if sympy.sympify(guard.expr).xreplace(sizes) is not sympy.true:
                bound = ", ".join(f"{s}={v}" for s, v in sizes.items() if s.name in model.dims.free)
                raise RuntimeShapeError(f"{model.name}: requirement {guard.text} does not hold for {bound}")
        return sizes

    def fill_defaults(self, inputs: dict[str, torch.Tensor], sizes: dict[sympy.Symbol, sympy.Integer]
                      ) -> dict[str, torch.Tensor]:
        """Optional inputs that were not given, filled with their declared default."""
        out = dict(inputs)
        for name, node_name in self.model.inputs.items():
            node = self.model.graph[node_name]
            if name in out:
                continue
            t = node.type
            assert isinstance(t, TensorType)
            shape = []
            for a in t.axes:
                value = sympy.sympify(a.size).xreplace(sizes)
                if not value.is_Integer:
                    raise RuntimeShapeError(f"input {name} was not given and its axis {a.name} is not bound by the "
                                            "other inputs")
                shape.append(int(value))
            out[name] = torch.full(shape, node.attrs["default"], dtype=TORCH_DTYPES[t.dtype], device=self.device)
        return out

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = self.bind_sizes(inputs)
        inputs = self.fill_defaults(inputs, sizes)
        graph = self.model.graph
        args = [inputs[self.model.graph[n].attrs["name"]] for n in graph.inputs]
        outs = self.run_graph(graph, self.root, args, sizes)
        return dict(zip(self.model.outputs, outs, strict=True))

    def run_graph(self, graph: Graph, module: nn.Module, args: list[Any],
                  sizes: dict[sympy.Symbol, sympy.Integer]) -> list[Any]:
        """Run one graph (the model's or a block's) on `args`, node by node through `run_node`."""
        frame = Frame(self, graph, module, args, sizes, self.device)
        env: dict[str, Any] = {}
        for node in graph:
            env[node.name] = self.run_node(frame, node, [env[i] for i in node.inputs])
        return [env[o] for o in graph.outputs]

    def run_node(self, frame: Frame, node: Node, ins: list[Any]) -> Any:
        """The value of one node from its inputs' values: the op's lowering. A subclass may override it to watch
        or record values as they are computed (as `torch.fx.Interpreter.run_node`), e.g. `calibrate.py`."""
        return LOWERINGS[node.op](frame, node, ins)


def interpret(model: Model, inputs: dict[str, torch.Tensor], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Build parameters (seeded) and run once in eval mode."""
    interp = Interpreter(model, seed=seed).eval()
    with torch.no_grad():
        return interp(**inputs)
