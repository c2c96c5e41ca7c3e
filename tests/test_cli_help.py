"""`--help` reads like a well-kept click CLI (issue 19), for every command `nnspec --help` lists: the usage line
names arguments in capitals (`SPEC`, `[SPEC]`, `SPECS...`), flags show no type tag, value options show a metavar
(`--set NAME=VALUE`), never typer's `<bool>` / `<list[str]>` tags, and the help fits 80 columns without a word
broken or cut short.

Expected names come from the commands' declarations (click's parameter objects) and from the metavars written
here by hand, not from the help output itself."""

from __future__ import annotations

import functools
import re

import pytest
import typer
from typer.testing import CliRunner

from nnspec.backends.base import names as backend_names
from nnspec.cli import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)          # type: ignore[attr-defined]
TYPE_TAGS = ("<bool>", "<str>", "<path>", "<int>", "<float>", "<list[", "<Path>")
BOX = "│╭╮╰╯─"


@functools.cache     # one rendering per command and width, shared by the tests below
def _help(args: tuple[str, ...], width: int) -> str:
    run = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(width), "TERMINAL_WIDTH": str(width)})
    assert run.exit_code == 0, run.output
    return run.stdout


def _words(text: str) -> set[str]:
    return {w for w in re.split(rf"[\s{BOX}]+", text) if w}


def _params(name: str | None) -> list:
    command = GROUP if name is None else GROUP.commands[name]   # type: ignore[attr-defined]
    return [*command.params, command.get_help_option(typer.Context(command))]


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_has_no_type_tags_and_names_arguments_in_capitals(name: str | None, width: int) -> None:
    text = _help((name,) if name else (), width)
    assert not [tag for tag in TYPE_TAGS if tag in text], text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    for param in _params(name):
        if param.param_type_name == "argument":
            assert param.name.upper() in usage, usage
            assert re.search(rf"\b{param.name.upper()}\b", text.split("Usage:", 1)[1].split("\n", 1)[1])
        elif param.is_flag:
            # the flag's row goes straight from the flag to its help: nothing between them
            flag = max(param.opts, key=len)
            row = next(line for line in text.splitlines() if re.search(rf"(?<![\w-]){re.escape(flag)}\s", line))
            after = [w for w in re.split(rf"[\s{BOX}]+", row.split(flag, 1)[1]) if w and w not in param.secondary_opts]
            assert param.help and after[0] == param.help.split()[0], row
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_at_80_columns_breaks_no_word(name: str | None) -> None:
    args = (name,) if name else ()
    narrow, wide = _help(args, 80), _help(args, 400)
    assert "…" not in narrow
    broken = _words(narrow) - _words(wide)   # a word cut in two leaves pieces the unwrapped help does not have
    assert not broken, broken


@pytest.mark.parametrize(("command", "flag", "metavar"), [
    ("check", "--set", "NAME=VALUE"),
    ("check", "--config", "FILE"),
    ("check", "--max-memory", "SIZE"),
    ("check", "--dtype", "[bf16|fp16]"),
    ("check", "--slice", "WIDTH"),
    ("compile", "--output", "DIR"),
    ("compile", "--target", f"[{'|'.join(backend_names())}]"),
    ("compile", "--opt", "[0|1|2]"),
    ("render", "--format", "[svg|png|dot|html]"),
    ("render", "--scale", "NUMBER"),
    ("export", "--hf", "DIR"),
    ("serve", "--port", "INTEGER"),
    ("generate", "--prompt", "TEXT"),
    ("generate", "--weights", "PATH"),
])
def test_value_options_show_their_metavar(command: str, flag: str, metavar: str) -> None:
    text = _help((command,), 400)
    row = next(line for line in text.splitlines() if re.search(rf"(?<![\w-]){re.escape(flag)}\s", line))
    assert metavar in row.split(), row


def test_missing_argument_error_names_it_in_capitals() -> None:
    run = CliRunner().invoke(app, ["check"])
    assert run.exit_code == 2
    assert "SPEC" in run.output and "{spec}" not in run.output
