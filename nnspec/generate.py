"""`generate`: text generation with a built or generated decoder, Hugging Face's argument names and semantics.

    module = nnspec.build("examples/gpt2.yaml", config="cfg.json")
    nnspec.load_weights(module, "weights_dir")
    ids = nnspec.generate.generate(module, input_ids, attention_mask=mask, max_new_tokens=32)

The step the compiler derives (`nnspec.compiler.decode`: keys and values cached per causal attention, positions
absolute, everything else on the new tokens) runs over a static cache sized for the prompt plus `max_new_tokens`:
the generated file's `<Model>Decoder` (the step written as code, `backends.torch.decode_codegen`) when the module is
a generated one that has it, else the node-by-node reference `backends.torch.decode.DecodeStep`. As
`GenerationMixin.generate`: left-padded prompts (`attention_mask` 0 at padding) take positions `cumsum(mask) - 1` (1
at padding); greedy unless `do_sample`; sampling applies `temperature`, then `top_k`, then `top_p` to float32 logits
and draws with `generator`; a sequence that emitted `eos_token_id` continues with `pad_token_id`, and generation
stops early once every sequence has; the result is `[B, T + new]` (new <= max_new_tokens).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nnspec.backends.torch.decode import DecodeStep, check_length
from nnspec.backends.torch.decode_codegen import METHOD
from nnspec.backends.torch.decode_runtime import LAYOUT_KINDS
from nnspec.compiler.decode import DecodePlan, derive
from nnspec.compiler.ir import Model
from nnspec.compiler.passes import optimize

__all__ = ["WEIGHT_LAYOUTS", "Decoder", "decode_model", "generate"]

# what `Decoder(weight_layout=...)` takes: "auto" or one layout for every weight
WEIGHT_LAYOUTS = ("auto", *LAYOUT_KINDS)


def decode_model(model: Model) -> tuple[Model, DecodePlan]:
    """The model with its attention recognised (the form the derivation reads; dropout off, as for inference)
    and its decoding plan, or a located E015."""
    recognised = optimize(model, passes=["attention", "dce"], training=False)
    return recognised, derive(recognised)


class Decoder:
    """A module (generated, built or an Interpreter: anything holding the spec's parameters by path) and the
    checked model it was built from (`module.spec_model` when built by `nnspec.build`)."""

    def __init__(self, module: nn.Module, model: Model | None = None, *, weight_layout: str = "auto") -> None:
        """`weight_layout`: how the generated step reads the weights it multiplies the new rows by: "auto" (per
        weight the fastest of the layouts below that a one-time measurement at its shape finds, a copy only where
        it is 5% faster than the parameter itself; the memory `step.layout_bytes`), or one for every weight:
        "given" (no copies), "transposed" (an [in, out] copy), "split" (a copy in one part per thread) or
        "split-given" (the parameter viewed as one part per thread); see docs/generate.md."""
        if weight_layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"weight_layout must be one of {', '.join(WEIGHT_LAYOUTS)}, got {weight_layout!r}")
        self.weight_layout = weight_layout
        model = model if model is not None else getattr(module, "spec_model", None) or getattr(module, "model", None)
        if not isinstance(model, Model):
            raise ValueError("generate needs the checked model: pass model=, or build the module with nnspec.build")
        self.module = module
        self.model, self.plan = decode_model(model)

    def step(self, batch: int, length: int) -> nn.Module:
        """A decoding step with a fresh static cache of `length` positions for `batch` sequences: the generated
        file's `<Model>Decoder` when there is one, else the reference step."""
        emitted = emitted_decoder(self.module)
        if emitted is None:
            return self.reference_step(batch, length)
        check_length(self.model, self.plan, length)
        if "weight_layout" in inspect.signature(emitted).parameters:   # the step multiplies by weights itself
            return emitted(self.module, batch, length, weight_layout=self.weight_layout)
        return emitted(self.module, batch, length)

    def reference_step(self, batch: int, length: int) -> DecodeStep:
        """The node-by-node step (`DecodeStep`), which runs any module holding the spec's parameters."""
        return DecodeStep(self.module, self.model, self.plan, batch=batch, length=length)

    def compiled(self, step: nn.Module, backend: str = "inductor", **options: Any) -> Any:
        """A callable running `step` with the one-token steps `torch.export`ed (the interpreter's Python and
        sympy traced away, the cache as mutated buffers shared with `step`) and `torch.compile`d once: every
        decoding step reuses that graph, the cache position being a tensor input. The prefill runs eagerly."""
        compiled: dict[str, Any] = {}

        def run(input_ids: torch.Tensor, cache_position: torch.Tensor, key_mask: torch.Tensor,
                **inputs: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] != 1:
                return step(input_ids, cache_position, key_mask, **inputs)
            if "fn" not in compiled:
                program = torch.export.export(step, (input_ids, cache_position, key_mask), inputs)
                module = program.module()
                for name, buffer in step.named_buffers():  # the exported module holds the same cache
                    assert module.get_buffer(name).data_ptr() == buffer.data_ptr()
                compiled["fn"] = torch.compile(module, backend=backend, dynamic=False, **options)
            return compiled["fn"](input_ids, cache_position, key_mask, **inputs)
        return run

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, generator: torch.Generator | None = None,
                 step: nn.Module | None = None, step_fn: Any = None,
                 output_logits: list[torch.Tensor] | None = None) -> torch.Tensor:
        """See the module's docstring. `step`/`step_fn`: a prepared step (and a callable running it, e.g. its
        `torch.compile`d forward), to reuse one cache and one compiled graph across calls. `output_logits`: a
        list to append each step's next-token logits [B, vocab] to (Hugging Face's `output_logits`)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        batch, prompt = input_ids.shape
        device = input_ids.device
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(torch.int64)
        eos = _eos_list(eos_token_id)
        if pad_token_id is None and eos:
            pad_token_id = eos[0]    # what Hugging Face does (with a warning)
        length = prompt + max_new_tokens
        if step is None:
            step = self.step(batch, length)
        else:
            if step.batch != batch or step.length < length:
                raise ValueError(f"the step's cache is [{step.batch} x {step.length}], needs [{batch} x {length}]")
            step.reset()
        run = step_fn if step_fn is not None else step
        keys = torch.zeros(batch, step.length, dtype=torch.int64, device=device)
        keys[:, :prompt] = mask
        # made once, not per token: the cache positions (each step reads a view), the output ids, the eos ids, and
        # each row's next position (its count of real tokens, +1 per step: HF's cumsum(mask) - 1 at the new token)
        slots = torch.arange(length, device=device)
        out = torch.empty(batch, length, dtype=input_ids.dtype, device=device)
        out[:, :prompt] = input_ids
        eos_ids = torch.tensor(eos, device=device) if eos else None
        position = mask.sum(-1, keepdim=True)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        extra = {"position_ids": positions} if self.plan.position_input is not None else {}
        # the prefill's logits at the last position only (the step skips the others where it can)
        logits = run(input_ids, slots[:prompt], keys, last_only=True, **extra)[:, -1, :]
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        made = 0
        for i in range(max_new_tokens):
            if output_logits is not None:
                output_logits.append(logits)
            token = _choose(logits.float(), do_sample, temperature, top_k, top_p, generator)
            if eos_ids is not None:
                assert pad_token_id is not None
                token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
                unfinished &= ~torch.isin(token, eos_ids)
            out[:, prompt + i] = token
            made = i + 1
            # the only host sync per token: whether every row has finished (with an eos id)
            if (eos_ids is not None and not bool(unfinished.any())) or i == max_new_tokens - 1:
                break
            cur = prompt + i
            keys[:, cur] = 1
            if self.plan.position_input is not None:
                extra = {"position_ids": position}
            logits = run(token[:, None], slots[cur:cur + 1], keys, **extra)[:, -1, :]
            position = position + 1
        return out[:, :prompt + made]


def emitted_decoder(module: nn.Module) -> type[nn.Module] | None:
    """The `<Model>Decoder` class of a generated module's file (defined beside its `decode_step`), else None."""
    step = getattr(type(module), METHOD, None)
    found = getattr(step, "__globals__", {}).get(type(module).__name__ + "Decoder")
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None


def _eos_list(eos: int | Sequence[int] | None) -> list[int]:
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = filter_logits(logits, temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Hugging Face's warpers in their order: divide by `temperature`; keep the `top_k` largest (ties at the k-th
    kept); keep the smallest set of most likely tokens whose probability reaches `top_p` (at least one). Removed
    tokens get -inf, so they are never drawn."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, index = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, index, remove), float("-inf"))
    return logits


def generate(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             model: Model | None = None, **kwargs: Any) -> torch.Tensor:
    """`Decoder(module, model).generate(input_ids, attention_mask, **kwargs)`: see the module's docstring."""
    return Decoder(module, model).generate(input_ids, attention_mask, **kwargs)
