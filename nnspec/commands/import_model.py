"""`nnspec import MODEL -o spec.yaml`: an existing Hugging Face config.json or `module:callable` as a spec.

The spec is checked before it is written (atomically); a model part that cannot be lifted is reported with its
aten op and module path, exit 1, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_cmd(
        model: Annotated[str, typer.Argument(help="a Hugging Face config.json, or module:callable returning "
                                                  "(nn.Module, example inputs dict[, config dict])")],
        out: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="where to write the spec")],
        name: Annotated[str | None, typer.Option("--name", metavar="NAME",
                                                 help="the spec's name (default: model_type)")] = None,
    ) -> None:
        """Import a PyTorch / Hugging Face model as a readable spec (torch.export, lifted to named axes)."""
        from nnspec.errors import SpecError
        from nnspec.importer import ImportFailure, import_model, write_spec

        try:
            imported = import_model(model, name=name)
        except ImportFailure as exc:
            typer.echo(f"{model}: error: cannot import: {exc}", err=True)
            raise typer.Exit(1) from None
        from nnspec.compiler.check import check

        try:
            check(imported.text)
        except SpecError as exc:                   # the importer wrote something the checker refuses: our bug
            typer.echo(f"{model}: internal error: the imported spec does not check:\n{exc}", err=True)
            raise typer.Exit(3) from None
        write_spec(imported.text, out)
        typer.echo(f"wrote {out} ({len(imported.text.splitlines())} lines)")
