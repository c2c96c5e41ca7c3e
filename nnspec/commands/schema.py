"""`nnspec schema`: the JSON Schema of the spec format, made from the pydantic models that validate specs
(`nnspec.spec.schema.SpecDoc`), with their descriptions, for editors:

    nnspec schema > nnspec.schema.json

and, as the first line of a spec, `# yaml-language-server: $schema=./nnspec.schema.json` (the path to the file,
relative to the spec, or a URL): editors using the YAML language server then complete keys and flag unknown ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

SCHEMA_ID = "https://nnspec.dev/schema/nnspec-1.json"


def json_schema() -> dict[str, Any]:
    from nnspec.spec.schema import SpecDoc

    schema = SpecDoc.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def register(app: typer.Typer) -> None:
    @app.command("schema")
    def schema_cmd(
        output: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE",
                                                    help="write it to this file (atomically) "
                                                         "instead of printing it")] = None,
    ) -> None:
        """Print the JSON Schema of the spec format (for editors: yaml-language-server, VS Code)."""
        text = json.dumps(json_schema(), indent=2) + "\n"
        if output is None:
            sys.stdout.write(text)
            return
        from nnspec.atomic import write_atomic
        try:
            write_atomic(output, text.encode())
        except OSError as e:
            print(f"nnspec: error: cannot write {output}: {e.strerror}", file=sys.stderr)
            raise typer.Exit(2) from None
        print(f"wrote {output}")
