"""`nnspec generate SPEC --config cfg.json --weights DIR --prompt-ids 1,2,3 --max-new-tokens N`: token ids in, token
ids out (one line of comma-separated ids per prompt), with the decoding step the compiler derives.

`--prompt "text"` is accepted when the `tokenizers` package is installed and DIR holds a `tokenizer.json`; the
generated text is printed after the ids. A spec outside what decoding derives is a located E015 (exit 1); bad
arguments exit 2.
"""

from __future__ import annotations

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


def _parse_ids(text: str) -> list[list[int]]:
    """`1,2,3` or several prompts separated by `;` (`1,2,3;4,5`), left-padded into one batch by the caller."""
    rows = []
    for part in text.split(";"):
        try:
            row = [int(x) for x in part.replace(" ", "").split(",") if x]
        except ValueError:
            _usage(f"--prompt-ids takes comma-separated integers (';' between prompts), got {text!r}")
        if not row or any(i < 0 for i in row):
            _usage(f"--prompt-ids: each prompt needs at least one non-negative id, got {text!r}")
        rows.append(row)
    return rows


def _tokenizer(weights: Path | None) -> Any:
    try:
        import tokenizers
    except ImportError:
        _usage("--prompt needs the `tokenizers` package (pip install tokenizers); or pass --prompt-ids")
    path = None if weights is None else (weights if weights.is_file() else weights / "tokenizer.json")
    if path is None or not path.is_file():
        _usage("--prompt needs a tokenizer.json in the --weights directory; or pass --prompt-ids")
    return tokenizers.Tokenizer.from_file(str(path))


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        spec: Annotated[Path, typer.Argument(help="the decoder's spec file (YAML)")],
        config: Annotated[Path | None, typer.Option("--config", metavar="FILE",
                                                    help="a Hugging Face config.json")] = None,
        weights: Annotated[Path | None, typer.Option("--weights", help="a checkpoint: safetensors file or directory "
                                                     "(Hugging Face names); random weights when left out")] = None,
        prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", metavar="IDS",
                                                       help="token ids, comma-separated; several "
                                                            "prompts separated by ';' (left-padded)")] = None,
        prompt: Annotated[str | None, typer.Option("--prompt", help="text, tokenized with DIR/tokenizer.json "
                                                   "(needs the tokenizers package)")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate")] = 20,
        do_sample: Annotated[bool, typer.Option("--sample", help="sample instead of greedy decoding")] = False,
        temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
        top_k: Annotated[int | None, typer.Option("--top-k")] = None,
        top_p: Annotated[float | None, typer.Option("--top-p")] = None,
        seed: Annotated[int, typer.Option("--seed", help="seed of the sampling generator")] = 0,
        eos: Annotated[int | None, typer.Option("--eos-token-id")] = None,
        pad: Annotated[int | None, typer.Option("--pad-token-id", help="the id of left padding (default 0) and of "
                                                    "rows after their eos (default: the eos id, as HF)")]
        = None,
        opt: Annotated[int, typer.Option("-O", "--opt", metavar="[0|1|2]",
                                         help="optimisation level of the module")] = 0,
        dtype: Annotated[str | None, typer.Option("--dtype", metavar="[bf16|fp16]", help="bf16 or fp16")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE",
                                                       help="override a dim/option: name=value")] = None,
        backend_option: BackendOptionFlag = None,
        weight_layout: Annotated[str, typer.Option("--weight-layout", metavar="LAYOUT",
                                                   help="how the -O2 step reads its weights: auto (the fastest "
                                                        "measured per weight) or one layout for all: given, "
                                                        "transposed, ... (docs/generate.md)")] = "auto",
    ) -> None:
        """Generate token ids with a decoder spec (KV cache derived by the compiler); prints one line per prompt."""
        import torch

        import nnspec
        from nnspec.cli import parse_sets
        from nnspec.compiler.elaborate import UsageError
        from nnspec.errors import SpecError
        from nnspec.generate import WEIGHT_LAYOUTS, Decoder

        if weight_layout not in WEIGHT_LAYOUTS:
            _usage(f"--weight-layout takes one of {', '.join(WEIGHT_LAYOUTS)}, got {weight_layout!r}")
        if (prompt_ids is None) == (prompt is None):
            _usage("give exactly one of --prompt-ids and --prompt")
        if max_new_tokens < 0:
            _usage(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
        tok = _tokenizer(weights) if prompt is not None else None
        rows = [tok.encode(prompt).ids] if tok is not None else _parse_ids(prompt_ids or "")
        pad_id = pad if pad is not None else 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        try:
            module = nnspec.build(spec, opt=opt, config=config, transforms={"dtype": dtype} if dtype else None,
                                  backend_options=parse_backend_options(backend_option, "torch"),
                                  **parse_sets(set_ or []))
            module.eval()
            if weights is not None:
                nnspec.load_weights(module, weights)
            decoder = Decoder(module, weight_layout=weight_layout)
        except SpecError as err:
            print(err.render(), file=sys.stderr)
            raise typer.Exit(EXIT_SPEC) from None
        except (UsageError, FileNotFoundError) as err:
            _usage(str(err))
        except ValueError as err:                  # a checkpoint that does not fit the spec (WeightError)
            print(f"{spec}: error: {err}", file=sys.stderr)
            raise typer.Exit(EXIT_SPEC) from None
        generator = torch.Generator().manual_seed(seed)
        try:
            out = decoder.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos,
                                   pad_token_id=pad, generator=generator)   # None: the eos id, as HF
        except (ValueError, IndexError) as err:
            _usage(str(err))
        for i, row in enumerate(rows):
            new = out[i, width:].tolist()
            typer.echo(",".join(str(t) for t in [*row, *new]))
            if tok is not None:
                typer.echo(tok.decode(new))
