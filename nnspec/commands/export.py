"""`nnspec export SPEC --hf DIR` / `--onnx FILE`: the model a spec describes, written for other tools.

`--hf DIR`: a Hugging Face directory (config.json from the spec's `hf_config` mapping and the bound dims and
options, safetensors weights, sharded above `--max-shard-size`) that `AutoModel*.from_pretrained(DIR)` loads.
`--onnx FILE`: ONNX through `torch.onnx.export(dynamo=True)`, free dims dynamic, checked with `onnx.checker`
(and against onnxruntime when installed). Weights come from `--weights` (a checkpoint in Hugging Face names)
or are the spec's random initialisation (`--seed`). Exit codes as cli.py's: 1 spec, 2 usage, 3 internal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nnspec.commands.backend_options import Flag as BackendOptionFlag
from nnspec.commands.backend_options import parse as parse_backend_options

EXIT_SPEC, EXIT_USAGE = 1, 2


def _usage(message: str) -> None:
    print(f"nnspec: error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_USAGE)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        spec: Annotated[Path, typer.Argument(help="the spec file (YAML)")],
        hf: Annotated[Path | None, typer.Option("--hf", metavar="DIR",
                                                help="write a Hugging Face model directory here")] = None,
        onnx: Annotated[Path | None, typer.Option("--onnx", metavar="FILE", help="write an ONNX file here")] = None,
        weights: Annotated[Path | None, typer.Option("--weights", help="a checkpoint (safetensors file or "
                                                     "directory, Hugging Face names); random weights if left out")]
        = None,
        config: Annotated[Path | None, typer.Option("--config", metavar="FILE",
                                                    help="a Hugging Face config.json to map onto "
                                                         "the spec")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE",
                                                       help="override a dim/option: name=value")] = None,
        opt: Annotated[int, typer.Option("-O", "--opt", metavar="[0|1|2]",
                                         help="optimisation level of the exported module "
                                              "(the weights are the same at every level)")] = 0,
        seed: Annotated[int, typer.Option("--seed", help="torch seed of the random initialisation")] = 0,
        max_shard_size: Annotated[str, typer.Option("--max-shard-size", metavar="SIZE",
                                                    help="--hf: largest safetensors file "
                                                         "(5GB, 200MiB, bytes)")] = "5GB",
        as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
        backend_option: BackendOptionFlag = None,
    ) -> None:
        """Export a spec's model: a Hugging Face directory (--hf) and/or an ONNX file (--onnx)."""
        from nnspec.cli import parse_sets
        from nnspec.compiler.elaborate import UsageError
        from nnspec.errors import SpecError

        if hf is None and onnx is None:
            _usage("say what to write: --hf DIR and/or --onnx FILE")
        try:
            import torch
        except ImportError:
            _usage('export needs PyTorch: pip install "nnspec[torch]"')
        report: dict[str, Any] = {"spec": str(spec)}
        try:
            import nnspec
            from nnspec.generated import build

            overrides = parse_sets(set_ or [])
            torch.manual_seed(seed)
            model = build(spec, opt=opt, config=config,
                          backend_options=parse_backend_options(backend_option, "torch"), **overrides)
            if weights is not None:
                loaded = nnspec.load_weights(model, weights)
                report["weights"] = {"from": str(weights), "loaded": len(loaded.loaded)}
            if hf is not None:
                from nnspec.export.hf import save_pretrained
                files = save_pretrained(model, hf, max_shard_size=max_shard_size)
                report["hf"] = [str(f) for f in files]
            if onnx is not None:
                from nnspec.export.onnx import export_onnx
                report["onnx"] = export_onnx(model, onnx)
        except SpecError as err:
            print(err.render(), file=sys.stderr)
            raise typer.Exit(EXIT_SPEC) from None
        except (UsageError, FileNotFoundError, ValueError) as err:
            _usage(str(err))
        if as_json:
            print(json.dumps(report, indent=2))
            return
        for f in report.get("hf", []):
            print(f"wrote {f}")
        if "onnx" in report:
            info = report["onnx"]
            diff = info.get("max_abs_diff")
            checked = "checked" + ("" if diff is None else f", onnxruntime vs torch max |diff| {diff:.2e}")
            print(f"wrote {info['path']} ({checked}; dynamic: {json.dumps(info['dynamic'])})")
