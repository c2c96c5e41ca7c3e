"""Backends: lower a checked model (`nnspec.compiler.ir.Model`) to something that runs. Never read specs."""
