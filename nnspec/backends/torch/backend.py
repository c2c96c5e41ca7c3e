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
    """The generator writes a repeat as one block class applied to every weight set in turn: a repeat whose
    iterations differ (`--drop`, `--lora` on some iterations) or share weights in groups (`--share`) would come
    out as the untransformed model, so it is refused rather than generated wrong."""
    for graph in model.graphs():
        for node in graph:
            if node.op == "repeat" and (node.attrs.get("variants") or node.attrs.get("groups")):
                what = "iterations that differ" if node.attrs.get("variants") else "weights shared in groups"
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
