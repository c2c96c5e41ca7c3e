"""CLI commands that live in their own modules; `nnspec.cli.COMMAND_MODULES` lists them in help order."""
