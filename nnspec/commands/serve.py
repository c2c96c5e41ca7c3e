"""`nnspec serve [SPEC]`: the live playground (`nnspec.web.app`) on a local web server.

Needs the `web` extra (Starlette and uvicorn); without it, says what to install (exit 2, a usage error, as
cli.py's exit codes have it). Binds 127.0.0.1 unless `--host` names another address, and warns when it does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

EXIT_USAGE = 2      # as nnspec.cli: 1 a mistake in the spec, 2 a usage error, 3 a bug in nnspec

STARTER = """nnspec: 1
name: mlp
doc: A two-layer perceptron. Edit me and the diagrams follow.

dims:
  d_in: 64
  d_hidden: 256
  d_out: 10

inputs:
  x: float32[B, d_in]
outputs:
  y: float32[B, d_out]

blocks:
  mlp(x): |
    h = relu(linear(x, d_hidden, name=fc1))
    return linear(h, d_out, name=fc2)

body: |
  y = mlp(x, name=mlp)
"""


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        spec: Annotated[Path | None, typer.Argument(help="the spec to start from (YAML); a small MLP if left out")]
        = None,
        host: Annotated[str, typer.Option("--host", metavar="HOST",
                                          help="the address to listen on; anything but loopback lets "
                                               "other machines reach the playground")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="the port (0: any free one)")] = 8000,
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE",
                                                       help="a dim override the page starts with: "
                                                            "name=value")] = None,
        time_limit: Annotated[float, typer.Option("--time-limit", help="seconds one check may take before it "
                                                  "is stopped")] = 10.0,
    ) -> None:
        """Start the live playground: edit a spec in the browser and see the check, table and diagrams update."""
        try:
            import uvicorn

            from nnspec.web.app import create_app
        except ImportError as err:
            print(f"nnspec: error: `nnspec serve` needs the web extra ({err.name} is missing): "
                  "pip install 'nnspec[web]'", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE) from None
        if time_limit <= 0:
            print(f"nnspec: error: --time-limit takes a number of seconds above 0, got {time_limit}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE)
        if not 0 <= port <= 65535:
            print(f"nnspec: error: --port takes 0 to 65535, got {port}", file=sys.stderr)
            raise typer.Exit(EXIT_USAGE)
        text = STARTER
        if spec is not None:
            try:
                text = spec.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                print(f"nnspec: error: cannot read {spec}: {err}", file=sys.stderr)
                raise typer.Exit(EXIT_USAGE) from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"nnspec: warning: serving on {host}: other machines can reach this playground", file=sys.stderr)
        loopback = host in ("127.0.0.1", "localhost", "::1")
        app = create_app(text, spec_path=spec, sets=" ".join(set_ or []), limit_s=time_limit,
                         allowed_hosts=None if loopback else ["*"])   # any name reaches a non-loopback server
        print(f"nnspec playground on http://{'[' + host + ']' if ':' in host else host}:{port}/ (Ctrl-C stops it)")
        uvicorn.run(app, host=host, port=port, log_level="warning")
