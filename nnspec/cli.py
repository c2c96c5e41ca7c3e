"""The `nnspec` command line.

Exit codes: 0 success, 1 a mistake in the spec (or config) or a model over --max-memory, 2 a usage error, 3 an
internal error in nnspec.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Annotated, Any

import sympy
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperGroup, TyperOption

from nnspec import __version__
from nnspec import cli_transforms as T
from nnspec.backends.base import names as backend_names
from nnspec.commands.backend_options import Flag as BackendOptionFlag
from nnspec.commands.backend_options import parse as parse_backend_options
from nnspec.compiler.analysis import check_memory, format_bytes, parse_size
from nnspec.compiler.check import CheckResult
from nnspec.compiler.elaborate import UsageError
from nnspec.compiler.printer import print_model
from nnspec.compiler.sizes import expand
from nnspec.errors import ResourceError, SpecError, errors_to_json, visible
from nnspec.pipeline import Pipeline

EXIT_SPEC, EXIT_USAGE, EXIT_INTERNAL = 1, 2, 3

# What an option's value is called in help when its declaration names no metavar (click's own words)
_TYPE_METAVARS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


class _HelpArgument(TyperArgument):
    """An argument as click writes it in help: `SPEC` (`[SPEC]` when optional, `SPECS...` for several), no type
    tag. Typer 0.29 writes `{spec}` in the usage line and `<path>` beside it."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _HelpOption(TyperOption):
    """An option as click writes it in help: a flag has no value to name; a value option shows its declared
    metavar (`--set NAME=VALUE`, `--dtype [bf16|fp16]`) or its type's word (`TEXT`), never `<list[str]>`."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        if self.metavar:
            return self.metavar
        kind = self.type_descriptor.annotation
        kind = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        return _TYPE_METAVARS.get(kind, "PATH" if self.type_descriptor.is_path else "VALUE")


class _HelpGroup(TyperGroup):
    """The one place help is styled: every command's parameters (those of nnspec/commands/ too) and the group's
    own are re-classed as the `_Help*` kinds above once typer has built them. Only help methods differ, so the
    swap is safe: parsing and values are the parent class's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in [self, *self.commands.values()]:
            _restyle(command)

    def add_command(self, cmd: Any, name: str | None = None) -> None:
        super().add_command(cmd, name)
        _restyle(cmd)


def _restyle(command: Any) -> None:
    # `--help` is made on first use and cached: make it now, from the command's own context settings, to restyle it
    help_option = command.get_help_option(typer.Context(command, **(command.context_settings or {})))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if type(param) is TyperArgument:
            param.__class__ = _HelpArgument
        elif type(param) is TyperOption:
            param.__class__ = _HelpOption


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_HelpGroup,
                  help="nnspec: check, compile and render model specs.")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set n_layer=2 --set tie_word_embeddings=false` -> typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set takes name=value, got {item!r}")
        raw = raw.strip()
        value: Any
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        out[key] = value
    return out


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_flops(expr: sympy.Expr) -> str:
    """`3.8e+04·B·T² + 2.48e+08·B·T`: a polynomial in the free dims with short coefficients."""
    expr = expand(expr)      # kept factored past a bound on its terms (issue 22)
    if expr.is_Number:
        return f"{float(expr):.4g}"
    terms = []
    for term in sympy.Add.make_args(expr):
        coeff, rest = term.as_coeff_Mul()
        if rest == 1:   # the constant term: a number, not `1.18e+06·1`
            terms.append(f"{float(coeff):.4g}")
            continue
        factors = []
        for base, exp in sorted(rest.as_powers_dict().items(), key=lambda kv: str(kv[0])):
            name = f"{base}" if base.is_Atom else f"({base})"      # a factored sum past the term bound
            factors.append(name + ("" if exp == 1 else "²" if exp == 2 else f"^{exp}"))
        terms.append((f"{float(coeff):.4g}·" if coeff != 1 else "") + "·".join(factors))
    return " + ".join(sorted(terms, key=len, reverse=True))


def _report(result: CheckResult, console: Console) -> None:
    model = result.model
    # user strings (file names, spec names, axis names) are text, never rich markup: `[/x].yaml` is a file name
    table = Table(title=Text(f"{model.name} ({result.spec.source.name})"), title_justify="left")
    for col, justify in [("name", "left"), ("block / op", "left"), ("shape", "left"), ("concrete", "left"),
                         ("params", "right"), ("FLOPs", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        table.add_row(Text(row.name), Text(row.kind), Text(row.shape), Text(row.concrete), _fmt_int(row.params),
                      Text(_fmt_flops(row.flops)))
    table.add_section()
    table.add_row("total", "", "", "", _fmt_int(result.params), Text(_fmt_flops(result.flops)))
    console.print(table)
    ins = ", ".join(f"{k}: {model.graph[v].type}" for k, v in model.inputs.items())
    outs = ", ".join(f"{k}: {model.graph[v].type}" for k, v in model.outputs.items())
    # markup=False: rich would take `[nodes, M]` (a lowercase name in brackets) for a style tag and drop it
    console.print(f"inputs   {ins}", highlight=False, markup=False)
    console.print(f"outputs  {outs}", highlight=False, markup=False)
    console.print(f"params   {_fmt_int(result.params)}", highlight=False)
    if result.free_dims:
        console.print(f"free     {', '.join(result.free_dims)} (FLOPs per forward pass are a formula in these)",
                      highlight=False, markup=False)
    for g in model.guards:
        console.print(f"guard    {g.text}  (checked at run time)", highlight=False, markup=False)


def _fail(err: SpecError, as_json: bool, warnings: list[Any] | None = None) -> None:
    if as_json:
        print(errors_to_json(err, warnings or []))
    else:
        for w in warnings or []:
            print(w.render(), file=sys.stderr)
        print(err.render(), file=sys.stderr)
    raise typer.Exit(EXIT_SPEC)


def _parse_max_memory(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise UsageError(f"--max-memory: {e}") from None


def _fail_resource(err: ResourceError, spec: Path, as_json: bool) -> None:
    """A valid model over --max-memory: exit 1, like a spec error, with code R001 and no location."""
    if as_json:
        print(json.dumps({"version": 1, "ok": False, "diagnostics": [err.to_json()]}, indent=2))
    else:
        print(f"{spec}: error[R001]: {err}", file=sys.stderr)
    raise typer.Exit(EXIT_SPEC)


@app.command("check")
@T.transform_flags
def check_cmd(
    spec: Annotated[Path, typer.Argument(help="the spec file (YAML)")],
    set_: Annotated[list[str] | None,
                    typer.Option("--set", metavar="NAME=VALUE",
                                 help="override a dim/option or bind a free dim: name=value")] = None,
    config: Annotated[Path | None,
                      typer.Option("--config", metavar="FILE",
                                   help="a Hugging Face config.json to map onto the spec")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output (schema in docs/cli.md)")] = False,
    emit: Annotated[str | None, typer.Option("--emit", metavar="[ir]", help="also print an artefact: the IR")] = None,
    cost: Annotated[bool, typer.Option("--cost", help="also print the cost model: FLOPs (head apart), activation "
                                       "memory, KV cache, fused vs unfused memory traffic")] = False,
    transforms: T.Requested = None,
    explain: T.ExplainOpt = False,
    max_memory: Annotated[str | None, typer.Option("--max-memory", metavar="SIZE", help="fail (exit 1) when the "
                                                   "parameters and buffers would need more than this: 4GiB, 512MiB, "
                                                   "2GB, 1e9")]
    = None,
) -> None:
    """Check a spec: shapes, dtypes and constraints; print blocks, shapes, parameters and FLOPs."""
    try:
        if emit not in (None, "ir"):
            raise UsageError(f"--emit takes 'ir', got {emit!r}")
        limit = _parse_max_memory(max_memory)
        pipeline = Pipeline(spec, config=config, overrides=parse_sets(set_ or []), transforms=transforms)
        result, transform_lines = pipeline.transformed, pipeline.transform_lines
        needed = check_memory(result.model, limit) if limit is not None else None
    except SpecError as err:
        _fail(err, as_json, getattr(err, "warnings", None))  # a config's unused keys, found before the error
        return
    except ResourceError as err:
        _fail_resource(err, spec, as_json)
        return
    except (UsageError, FileNotFoundError) as err:
        print(f"nnspec: error: {visible(str(err))}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        payload = json.loads(errors_to_json(None, result.warnings))
        payload["model"] = result.to_json()
        if needed is not None:
            payload["memory"] = {"bytes": needed, "limit": limit}
        if explain:
            payload["transforms"] = transform_lines
        if cost:
            from nnspec.compiler.cost import estimate
            payload["cost"] = estimate(result.model).to_json()
        if emit == "ir":
            payload["ir"] = print_model(result.model)
        print(json.dumps(payload, indent=2))
        return
    # a terminal's own width (80 columns too: rich wraps the cells); piped output keeps 120 columns unless COLUMNS says
    probe = Console()
    console = Console(highlight=False, width=None if probe.is_terminal or os.environ.get("COLUMNS") else 120)
    for w in result.warnings:
        print(w.render(), file=sys.stderr)
    _report(result, console)
    if needed is not None:
        console.print(f"memory   {format_bytes(needed)} for parameters and buffers (limit {format_bytes(limit or 0)})",
                      highlight=False)
    if explain:
        T.print_explain(transform_lines)
    if cost:
        from nnspec.compiler.cost import estimate, print_cost
        print_cost(estimate(result.model), console)
    if emit == "ir":
        print(print_model(result.model))


def _write_atomic(path: Path, data: bytes) -> None:
    from nnspec.atomic import write_atomic

    write_atomic(path, data)


MAX_SCALE = 16.0   # PNG pixels per SVG unit; cairo refuses images wider or taller than 32,767 pixels anyway


def _write_or_exit(path: Path, data: bytes) -> None:
    """Write `path` atomically; a directory, a read-only place or a full disk is a usage error (exit 2), as in
    compile."""
    try:
        _write_atomic(path, data)
    except OSError as e:
        print(f"nnspec: error: cannot write {visible(str(path))}: {e.strerror or e}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


def _png(svg_to_png: Any, svg: str, scale: float) -> bytes:
    """The PNG, or ToolMissing when cairo cannot draw it (an image past its 32,767-pixel limit): the SVG is written
    instead."""
    from nnspec.compiler.diagrams import ToolMissing
    try:
        return bytes(svg_to_png(svg, scale))
    except ToolMissing:
        raise
    except (MemoryError, ValueError, OSError, RuntimeError) as e:
        raise ToolMissing(f"cannot draw this diagram as PNG at --scale {scale:g} ({type(e).__name__}: "
                          f"{str(e)[:200]}); try a smaller --scale") from None
    except Exception as e:   # cairo's own errors (CairoError INVALID_SIZE) have no base nnspec can name
        if "cairo" not in type(e).__module__.lower() and "Cairo" not in type(e).__name__:
            raise
        raise ToolMissing(f"cannot draw this diagram as PNG at --scale {scale:g} ({type(e).__name__}: "
                          f"{str(e)[:200]}); try a smaller --scale") from None


@app.command("render")
@T.transform_flags
def render_cmd(
    spec: Annotated[Path, typer.Argument(help="the spec file (YAML)")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", help="the file to write")],
    style: Annotated[str, typer.Option("--style", metavar="[graph|circuit]",
                                       help="'graph' (block graph) or 'circuit' (neural circuit diagram)")]
    = "graph",
    fmt: Annotated[str | None, typer.Option("--format", metavar="[svg|png|dot|html]",
                                            help="svg, png, dot (graph only) or html (an interactive page of both, "
                                            "no network); default: from -o")] = None,
    expand: Annotated[int, typer.Option("--expand", metavar="LEVELS",
                                        help="inline block calls and repeats this many levels deep")] = 0,
    block: Annotated[str | None, typer.Option("--block", metavar="NAME",
                                              help="draw this block instead of the whole model")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="override a dim/option")] = None,
    scale: Annotated[float, typer.Option("--scale", help="PNG pixels per SVG unit")] = 2.0,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE",
                                                help="a Hugging Face config.json to map onto the spec")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON (docs/cli.md)")] = False,
    wrap: Annotated[bool, typer.Option("--wrap/--no-wrap", help="circuit: cut the strip into rows that read at "
                                       "900 px wide (docs/diagrams.md); --no-wrap draws one strip")] = True,
    transforms: T.Requested = None,
    explain: T.ExplainOpt = False,
) -> None:
    """Draw a checked spec: its block graph (graphviz) or its neural circuit diagram (SVG), as SVG, PNG or DOT.
    With transform flags, the transformed model, what the transforms made or changed marked."""
    from nnspec.compiler.diagrams import ToolMissing, block_graph, circuit_svg, dot_to_svg, svg_to_png

    fmt = fmt or (output.suffix.lstrip(".").lower() or "svg")
    try:
        if style not in ("graph", "circuit"):
            raise UsageError(f"--style takes 'graph' or 'circuit', got {style!r}")
        if fmt not in ("svg", "png", "dot", "html") or (fmt == "dot" and style != "graph"):
            raise UsageError(f"--format takes svg, png{', dot' if style == 'graph' else ''} or html for --style "
                             f"{style}, got {fmt!r}")
        if expand < 0:
            raise UsageError(f"--expand takes a level of 0 or more, got {expand}")
        if not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):
            raise UsageError(f"--scale takes PNG pixels per SVG unit above 0 and at most {MAX_SCALE:g}, got {scale}")
        if output.is_dir():
            raise UsageError(f"cannot write {output}: it is a directory")
        if not output.parent.is_dir():
            raise UsageError(f"cannot write {output}: no directory {output.parent}")
        pipeline = Pipeline(spec, config=config, overrides=parse_sets(set_ or []), transforms=transforms)
        result, transform_lines = pipeline.transformed, pipeline.transform_lines
        if fmt == "html":   # one self-contained page: block graph, circuit diagrams, summary (nnspec.web.page)
            from nnspec.web.page import page_html, payload
            source = page_html(payload(result))
            fallback, fallback_data = output, source
        elif style == "graph":
            source = block_graph(result.model, expand=expand, block=block)
            fallback, fallback_data = output.with_suffix(".dot"), source
        else:
            source = circuit_svg(result.model, expand=expand, block=block, wrap=wrap)
            fallback, fallback_data = output.with_suffix(".svg"), source
    except SpecError as err:
        _fail(err, as_json)
        return
    except (UsageError, FileNotFoundError) as err:
        print(f"nnspec: error: {visible(str(err))}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    report = {"version": 1, "spec": str(spec), "model": result.model.name, "style": style, "format": fmt,
              "transforms": transform_lines}
    try:
        if fmt in ("dot", "html") or (fmt == "svg" and style == "circuit"):
            data = source.encode()
        else:
            svg = dot_to_svg(source) if style == "graph" else source
            if fmt == "png":
                fallback, fallback_data = output.with_suffix(".svg"), svg
            data = svg.encode() if fmt == "svg" else _png(svg_to_png, svg, scale)
    except ToolMissing as err:
        _write_or_exit(fallback, fallback_data.encode())
        if as_json:
            print(json.dumps({**report, "ok": False, "written": [str(fallback)], "error": str(err)}, indent=2))
        print(f"nnspec: error: {err}; wrote {fallback} instead", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    _write_or_exit(output, data)
    if as_json:
        print(json.dumps({**report, "ok": True, "written": [str(output)], "bytes": len(data)}, indent=2))
        return
    if explain:
        T.print_explain(transform_lines)
    print(f"wrote {output}")


@app.command("compile")
@T.transform_flags
def compile_cmd(
    specs: Annotated[list[Path], typer.Argument(help="spec files (YAML); one Python file is written per spec")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                        help="the directory to write into (made if missing)")],
    target: Annotated[str, typer.Option("--target", metavar=f"[{'|'.join(backend_names())}]",
                                        help=f"code to generate: {', '.join(backend_names())}")]
    = "torch",
    opt: Annotated[int | None, typer.Option("-O", "--opt", metavar="[0|1|2]",
                                            help="optimisation level 0, 1 or 2 (the passes of nnspec.compiler.passes; "
                                            "the state dict is the same)")]
    = None,
    passes: Annotated[str | None, typer.Option("--passes", metavar="PASS,...", help="run exactly these passes, "
                                               "comma-separated (e.g. attention,dce), instead of the level's; fused "
                                               "ops are emitted as at -O2 unless -O says otherwise")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="print each transform, each rewrite, each fusion group "
                                          "formed and each fusion refused, with its reason")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="override a dim/option")] = None,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE",
                                                help="a Hugging Face config.json to map onto the spec")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print what was written, the passes run, kernels and "
                                          "fallbacks as JSON (docs/cli.md)")] = False,
    backend_option: BackendOptionFlag = None,
    transforms: T.Requested = None,
) -> None:
    """Generate standalone PyTorch code: OUT/<name>.py per spec, all files or none."""
    from nnspec.compiler.passes import pipeline
    from nnspec.generated import write_outputs

    try:
        if target not in backend_names():
            raise UsageError(f"--target takes {', '.join(backend_names())}, got {target!r}")
        if opt not in (None, 0, 1, 2):
            raise UsageError(f"-O takes 0, 1 or 2, got {opt}")
        level = opt if opt is not None else 2 if passes is not None else 0
        ran = [p.name for p in pipeline(level, passes)]     # an unknown pass is a usage error before any work
        sets = parse_sets(set_ or [])
        chosen = parse_backend_options(backend_option, target)
        compiled = [Pipeline(spec, config=config, overrides=sets, transforms=transforms,
                             backend_options=chosen).artifact(target, level, passes)
                    for spec in specs]
        if explain and not as_json:
            for spec, c in zip(specs, compiled, strict=True):
                _print_compile_explain(spec, c, level, ran, passes is not None, bool(transforms))
        written = write_outputs(compiled, output)
    except SpecError as err:
        _fail(err, as_json)
        return
    except (UsageError, FileNotFoundError, OSError) as err:  # not ValueError: that would relabel a bug as usage
        print(f"nnspec: error: {visible(str(err))}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        models = [{"spec": str(spec), "path": str(path), "opt": level, "passes": ran, **c.to_json()}
                  for spec, c, path in zip(specs, compiled, written, strict=True)]
        print(json.dumps({"version": 1, "ok": True, "written": [str(p) for p in written], "models": models},
                         indent=2))
        return
    for path in written:
        print(f"wrote {path}")


def _print_compile_explain(spec: Path, compiled: Any, level: int, ran: list[str], explicit: bool,
                           transformed: bool) -> None:
    """`nnspec compile --explain` for one spec: its transforms, the passes run, then each pass's lines."""
    print(f"{compiled.result.model.name} ({spec}):")
    if transformed:
        T.print_explain(compiled.transforms)
    how = "--passes" if explicit else f"-O{level}"
    print(f"passes ({how}): {', '.join(ran) if ran else 'none'}")
    for line in compiled.explain:
        print(f"  {line}")
    if ran and not compiled.explain:
        print("  nothing to rewrite, group or refuse")


def _version(value: bool) -> None:
    if value:
        print(f"nnspec {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                      help="print the version and exit")] = False) -> None:
    """nnspec: a declarative model-spec compiler."""


# Commands that live in their own modules under nnspec/commands/ (each defines `register(app)`), in help order.
COMMAND_MODULES: tuple[str, ...] = ("serve", "import_model", "generate", "export", "plan", "schema")


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"nnspec.commands.{name}").register(app)


_register_commands()


# optional packages -> the extra of pyproject.toml that installs them
EXTRAS = {"torch": "torch", "numpy": "torch", "triton": "triton", "transformers": "hf", "safetensors": "hf",
          "cairosvg": "render", "onnx": "onnx", "onnxscript": "onnx", "starlette": "web", "uvicorn": "web"}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The extra to install when `err` is an optional package missing (not a module of nnspec's own)."""
    return EXTRAS.get((err.name or "").partition(".")[0])


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    # Only these typed errors are the user's (a command that let one through still exits as documented); anything
    # else is nnspec's own bug, never relabelled as the user's mistake.
    except SpecError as err:
        print(err.render(), file=sys.stderr)
        sys.exit(EXIT_SPEC)
    except ResourceError as err:
        print(f"nnspec: error[R001]: {err}", file=sys.stderr)
        sys.exit(EXIT_SPEC)
    except UsageError as err:
        print(f"nnspec: error: {visible(str(err))}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except ModuleNotFoundError as err:
        extra = missing_extra(err)
        if extra is None:
            raise
        print(f"nnspec: error: this needs {err.name}, which is not installed: pip install \"nnspec[{extra}]\"",
              file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Exception:  # a bug in nnspec, never the user's mistake: say so, with the trace to report
        print("nnspec: internal error (this is a bug in nnspec; please report it with the spec and this trace):",
              file=sys.stderr)
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
