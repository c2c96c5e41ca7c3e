"""The decoding step the compiler derives (`nnspec.compiler.decode`), run on a model's parameters.

`DecodeStep(module, model, plan, batch=, length=)` holds a static cache - one key and one value buffer per execution of
a causal attention, each shaped like the keys/values it caches with the key axis `length` long, in their dtype (before
an exact widening cast: `cached_values`) - and its `forward(input_ids, cache_position, key_mask, **inputs)` runs the
model's graph on the new tokens only: position-wise nodes as the reference interpreter runs them, position sources at
the absolute positions `cache_position`, and each cache site writing its new keys and values at `cache_position` and
attending over the whole cache with the causal and padding mask. The buffers are updated in place (`index_copy_`), so
`torch.export` exports a step with the cache as mutated buffers and `torch.compile` traces one graph for every decoding
step of the same shape.

It is the reference the step written into a generated file (`decode_codegen`: `<Model>Decoder`, same constructor
arguments after the module, same `forward`) is tested against, and what `nnspec.generate` runs for a module without
one (an `Interpreter`, a wrapped module, a scan's recurrent state).
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
from torch import nn

from nnspec.backends.torch import runtime
from nnspec.backends.torch.dtypes import TORCH_DTYPES
from nnspec.backends.torch.frame import Frame, RuntimeShapeError
from nnspec.backends.torch.layout import align_tensor, input_types
from nnspec.backends.torch.ops import LOWERINGS
from nnspec.compiler.decode import DecodePlan, cache_shape
from nnspec.compiler.ir import Axis, DType, Graph, Model, Node, TensorType
from nnspec.compiler.ops.attention import attention_types
from nnspec.compiler.ops.contract import einsum_string


class DecodeStep(nn.Module):
    """One decoding step over a static cache (see the module's docstring). `module` holds the parameters by the
    spec's paths: a generated module or an `Interpreter`."""

    def __init__(self, module: nn.Module, model: Model, plan: DecodePlan, *, batch: int, length: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.module = module
        self.model = model
        self.plan = plan
        self.batch = batch
        self.length = length
        params = module.root if hasattr(module, "root") else module
        self._params = [params]    # not a submodule twice over (state dicts keep the module's own keys)
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else "cpu"
        check_length(model, plan, length)
        values = plan.values
        self.cache_names: list[tuple[str, str]] = []
        for i, site in enumerate(plan.sites):
            for kind, t in (("k", site.k_type), ("v", site.v_type)):
                shape = cache_shape(plan, t, site.key, values, batch, length)
                self.register_buffer(f"{kind}{i}", torch.zeros(shape, dtype=TORCH_DTYPES[t.dtype], device=device),
                                     persistent=False)
            self.cache_names.append((f"k{i}", f"v{i}"))
        self.state_names: list[str] = []
        for i, state in enumerate(plan.states):   # a scan's carried state (retention, SSM): the cache of its site
            shape = cache_shape(plan, state.type, "", values, batch, length)
            self.register_buffer(f"state{i}", torch.zeros(shape, dtype=TORCH_DTYPES[state.type.dtype], device=device),
                                 persistent=False)
            self.state_names.append(f"state{i}")
        self._windows = {(s.graph, s.node) for s in plan.states if s.kind == "window"}
        self._state: dict[str, Any] = {}

    def cache_bytes(self) -> int:
        """Bytes the cache buffers hold (what the cost model's KV-cache bytes count for this batch and length)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n in self._cache_set())

    def _cache_set(self) -> set[str]:
        return {n for pair in self.cache_names for n in pair}

    def reset(self) -> None:
        for name in [*self._cache_set(), *self.state_names]:
            getattr(self, name).zero_()

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor, key_mask: torch.Tensor,
                last_only: bool = False, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the new tokens `input_ids` [B, t] at cache positions `cache_position` [t] (`last_only`: of
        the last one); `key_mask` [B, length] (1 = token, 0 = padding or not yet written) is the padding mask over
        the whole cache. Other model inputs (`position_ids`, ...) are for the new tokens; `attention_mask` is read
        from `key_mask`."""
        model = self.model
        first = next(iter(model.inputs))
        given = {first: input_ids, **inputs}
        if self.plan.mask_input is not None:
            given["attention_mask"] = key_mask.index_select(1, cache_position).to(torch.int64)
        sizes = self._bind(given)
        args = []
        for name, node_name in model.inputs.items():
            if name in given:
                args.append(given[name])
                continue
            t = model.graph[node_name].tensor_type
            shape = [int(sympy.sympify(a.size).xreplace(sizes)) for a in t.axes]
            args.append(torch.full(shape, model.graph[node_name].attrs["default"], dtype=TORCH_DTYPES[t.dtype],
                                   device=input_ids.device))
        self._state = {"position": cache_position, "keys": key_mask.to(torch.bool), "slot": 0, "scan": 0}
        try:
            outs = self.run_graph(model.graph, self._params[0], args, sizes)
        finally:
            self._state = {}
        if not last_only:
            return outs[0]
        out_t = model.graph[model.graph.outputs[0]].tensor_type
        values = self.plan.values
        axis = next(i for i, a in enumerate(out_t.axes) if sympy.sympify(a.size).xreplace(values) == self.plan.seq)
        return outs[0].narrow(axis, outs[0].shape[axis] - 1, 1)

    def _bind(self, given: dict[str, torch.Tensor]) -> dict[sympy.Symbol, sympy.Integer]:
        sizes = dict(self.model.dims.values)
        for name, x in given.items():
            t = self.model.graph[self.model.inputs[name]].tensor_type
            for a, n in zip(t.axes, x.shape, strict=True):
                size = sympy.sympify(a.size).xreplace(sizes)
                if isinstance(size, sympy.Symbol):
                    sizes[size] = sympy.Integer(n)
        return sizes

    # -- the Runner protocol the lowerings see (`Frame.interp`) --
    def run_graph(self, graph: Graph, module: nn.Module, args: list[Any],
                  sizes: dict[sympy.Symbol, sympy.Integer]) -> list[Any]:
        frame = Frame(self, graph, module, args, sizes, args[0].device if args else "cpu")
        env: dict[str, Any] = {}
        for node in graph:
            env[node.name] = self.run_node(frame, node, [env[i] for i in node.inputs])
        return [env[o] for o in graph.outputs]

    def run_node(self, frame: Frame, node: Node, ins: list[Any]) -> Any:
        role = self.plan.positions.get((frame.graph.name, node.name))
        if role == "positions":
            return self._state["position"]
        if role == "rotary" and len(ins) == 1:
            return self._rotary(frame, node, ins[0])
        if role == "table":
            table = runtime.sinusoidal_table(self.length, frame.size(node.attrs["dim"].size), node.attrs["base"],
                                              frame.device)
            return table.index_select(0, self._state["position"])
        if node.op == "attention" and node.attrs["causal"] and \
                node.attrs["key"] in self.plan.sequence_axes[frame.graph.name]:
            return self._attend(frame, node, ins)
        if node.op == "scan" and node.attrs["axis"].name in self.plan.sequence_axes[frame.graph.name]:
            return self._scan(frame, node, ins)
        if (frame.graph.name, node.name) in self._windows:
            return self._window(frame, node, ins)
        return LOWERINGS[node.op](frame, node, ins)

    def _window(self, frame: Frame, node: Node, ins: list[Any]) -> Any:
        """A causal convolution's window: the new tokens after the last K-1 inputs the previous step saw (the
        spec's prefix when the step starts at position 0); the last K-1 positions are kept for the next step."""
        slot = self._state["scan"]
        self._state["scan"] = slot + 1
        kept = getattr(self, self.state_names[slot])
        start = self._state["position"][0] == 0
        out = LOWERINGS[node.op](frame, node, [torch.where(start, ins[0], kept.to(ins[0].dtype)), ins[1]])
        prefix_t = input_types(frame, node)[0]
        axis, into = node.attrs["axis"], node.attrs["into"].name
        names = [axis if n == into else n for n in node.tensor_type.names]
        dim, width = names.index(axis), kept.shape[prefix_t.index(axis)]
        tail = out.narrow(dim, out.shape[dim] - width, width)
        kept.copy_(tail.permute([names.index(n) for n in prefix_t.names]))
        return out

    def _scan(self, frame: Frame, node: Node, ins: list[Any]) -> Any:
        """The recurrence over the new tokens, from the state the last step left (the spec's initial state when
        the step starts at position 0); its final state is kept for the next step."""
        slot = self._state["scan"]
        self._state["scan"] = slot + 1
        kept = getattr(self, self.state_names[slot])
        start = self._state["position"][0] == 0
        state = torch.where(start, ins[0], kept.to(ins[0].dtype))
        final, ys = LOWERINGS[node.op](frame, node, [state, *ins[1:]])
        kept.copy_(final)
        return final, ys

    def _rotary(self, frame: Frame, node: Node, x: torch.Tensor) -> torch.Tensor:
        t = input_types(frame, node)[0]
        pos, dim = node.attrs["pos"], node.attrs["dim"]
        cos, sin = runtime.rotary_tables(x.shape[t.index(pos)], x.shape[t.index(dim)], node.attrs["base"],
                                         self._state["position"], x.device, x.dtype)
        table_t = TensorType((t.axis(pos), t.axis(dim)), t.dtype)  # type: ignore[arg-type]
        cos, sin = align_tensor(cos, table_t, t.names), align_tensor(sin, table_t, t.names)
        apply = runtime.apply_rotary if node.attrs["style"] == "half" else runtime.apply_rotary_interleaved
        return apply(x, cos, sin, t.index(dim))

    def _attend(self, frame: Frame, node: Node, ins: list[Any]) -> torch.Tensor:
        """Write the new keys and values at their positions, then attend over the whole cache."""
        a = node.attrs
        types = input_types(frame, node)
        q_t, k_t, v_t = types[:3]
        scores_t, out_t = attention_types(types, a, self.model.dims)
        slot = self._state["slot"]
        self._state["slot"] = slot + 1
        k_name, v_name = self.cache_names[slot]
        k_cache, v_cache = getattr(self, k_name), getattr(self, v_name)
        position = self._state["position"]
        # a cache narrower than what the attention reads (`cached_values`) stores the value before an exact
        # widening cast: narrowing back is exact too; it is widened on read
        k_cache.index_copy_(k_t.index(a["key"]), position, ins[1].to(k_cache.dtype))
        v_cache.index_copy_(v_t.index(a["key"]), position, ins[2].to(v_cache.dtype))
        keys, values = k_cache.to(ins[1].dtype), v_cache.to(ins[2].dtype)
        allowed, allowed_t = self._mask(scores_t, a["query"], a["key"])
        fused = _sdpa(ins[0], keys, values, q_t, k_t, v_t, out_t, a, allowed, allowed_t)
        if fused is not None:
            return fused
        s = torch.einsum(einsum_string([q_t, k_t], scores_t), ins[0], keys) * a["scale"]
        s = s.masked_fill(~align_tensor(allowed, allowed_t, scores_t.names), float("-inf"))
        p = torch.softmax(s, dim=scores_t.index(a["key"]))
        return torch.einsum(einsum_string([scores_t, v_t], out_t), p, values)

    def _mask(self, scores_t: TensorType, query: str, key: str) -> tuple[torch.Tensor, TensorType]:
        """[B, t, length]: key j is visible to the query at position p when j <= p and j is a token; a padding
        query sees its own position too, so no row is empty (as the spec's mask does in the full forward)."""
        position = self._state["position"]
        slots = torch.arange(self.length, device=position.device)
        causal = slots[None, :] <= position[:, None]
        own = slots[None, :] == position[:, None]
        q_axis, k_axis = scores_t.axis(query), scores_t.axis(key)
        assert q_axis is not None and k_axis is not None
        batch = next((ax for ax in scores_t.axes if self.plan.batch is not None and
                      sympy.sympify(ax.size) == self.plan.batch), None)
        if batch is None or self.plan.mask_input is None:
            return causal, TensorType((q_axis, k_axis), DType.bool)
        keys = self._state["keys"]
        allowed = causal[None] & (keys[:, None, :] | own[None])
        return allowed, TensorType((batch, q_axis, Axis(k_axis.name, k_axis.size)), DType.bool)


def check_length(model: Model, plan: DecodePlan, length: int) -> None:
    """A cache of `length` positions must keep the spec's requirements on the sequence (`T <= n_positions`)."""
    sizes = dict(model.dims.values)
    sizes[plan.seq] = sympy.Integer(length)
    for guard in model.guards:
        value = sympy.sympify(guard.expr).xreplace(sizes)
        if value is sympy.false:
            raise RuntimeShapeError(f"{model.name}: a cache of {length} positions breaks the requirement {guard.text}")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_t: TensorType, k_t: TensorType, v_t: TensorType,
          out_t: TensorType, a: dict[str, Any], allowed: torch.Tensor, allowed_t: TensorType) -> torch.Tensor | None:
    """`F.scaled_dot_product_attention` over the cache when q, k and v are [batch, heads, ...] with one shared
    batch and one head axis (grouped query heads as `enable_gqa`: q's heads kv-major), else None (the einsum
    form). No row is empty (a query sees its own position), so SDPA and the spelled-out form agree."""
    key, dim, query = a["key"], a["dim"], a["query"]
    shared = [n for n in k_t.names if n not in (key, dim)]
    group = [n for n in q_t.names if n not in shared and n not in (query, dim)]
    value = [n for n in v_t.names if n not in shared and n != key]
    batch = [n for n in allowed_t.names if n not in (query, key)]
    if len(shared) != 2 or len(group) > 1 or len(value) != 1 or sorted(v_t.names) != sorted([*shared, key, *value]) \
            or batch not in ([], shared[:1]) or sorted(out_t.names) != sorted([*shared, *group, query, *value]):
        return None
    order = [*shared, *group, query, dim]
    qq = q.permute([q_t.index(n) for n in order])
    if group:
        qq = qq.flatten(1, 2)
    kk = k.permute([k_t.index(n) for n in (*shared, key, dim)])
    vv = v.permute([v_t.index(n) for n in (*shared, key, *value)])
    mask = allowed[:, None] if batch else allowed
    y = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=a["scale"],
                                                         enable_gqa=bool(group))
    if group:
        y = y.unflatten(1, (q.shape[q_t.index(shared[1])], q.shape[q_t.index(group[0])]))
    names = [*shared, *group, query, *value]
    return y.permute([names.index(n) for n in out_t.names])
