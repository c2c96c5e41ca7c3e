"""The torch backend behind the backend contract (`nnspec.backends.base.Backend`): one standalone PyTorch file
per model (`codegen.ModuleGen`), loaded as a module."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from nnspec.backends.base import Generated, Option
from nnspec.backends.loading import load_source
from nnspec.backends.torch.codegen import ModuleGen
from nnspec.backends.torch.options import HELP, TorchOptions
from nnspec.compiler.ir import Model

OPTIONS = tuple(Option(name, getattr(TorchOptions(), name), help) for name, help in HELP.items())


def refuse_repeat_variants(model: Model) -> str | None:
    """The generator writes a repeat as a loop over its weight sets: a separately weighted repeat whose iterations
    differ (`repeat(..., index=i)`, `--drop`, `--lora` on some iterations) is a list of instances of each
    iteration's class; a shared one is one instance applied N times, so its iterations cannot differ, and weights
    shared in groups (`--share`) have no loop of that shape yet: those are refused rather than generated wrong."""
    for graph in model.graphs():
        for node in graph:
            variants = node.attrs.get("variants") if node.op == "repeat" and node.attrs["shared"] else None
            if node.op == "repeat" and (variants or node.attrs.get("groups")):
                what = "shared weights and iterations that differ" if variants else "weights shared in groups"
                return (f"code generation does not support a repeat with {what} yet (repeat "
                        f"'{node.attrs['scope']}' after the transforms); the reference interpreter "
                        "(nnspec.backends.torch.Interpreter) runs the transformed model")
    return None


class TorchBackend:
    name = "torch"
    description = "a standalone PyTorch module (imports only torch)"
    options: tuple[Option, ...] = OPTIONS
    generator: type[ModuleGen] = ModuleGen

    def refuses(self, model: Model) -> str | None:
        return refuse_repeat_variants(model)

    def generate(self, model: Model, *, spec_text: str, doc: str | None, label: str,
                 options: Mapping[str, Any]) -> Generated:
        gen = self.generator(model, spec_text=spec_text, doc=doc, label=label,
                             options=TorchOptions.from_mapping(options))
        source = gen.generate()
        return Generated(source, gen.model_class, list(gen.explain))

    def load(self, generated: Generated, name: str) -> ModuleType:
        return load_source(generated.source, name)


BACKEND = TorchBackend()
