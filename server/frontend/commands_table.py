"""The ``skewless`` subcommands as a Markdown table, read from the CLI's own parser for the docs site.

The docs hook (docs/hooks/generated.py) calls ``commands_markdown()`` wherever a page holds the line
``<!-- generated: skewless.server.frontend.commands_table:commands_markdown -->``, so the table lists exactly
the subcommands that ``build_parser()`` registers, with the help line each gives in ``skewless --help``.
"""

from __future__ import annotations

import argparse


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(name, help) of each subcommand of ``parser``, in the order ``--help`` lists them."""
    found: list[tuple[str, str]] = []
    for action in parser._actions:  # argparse offers no public view of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            found.extend((choice.dest, choice.help or "") for choice in action._choices_actions)
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def commands_markdown() -> str:
    """One row per ``skewless`` subcommand: the command and what it does (its ``--help`` line)."""
    from .cli import build_parser

    rows = subcommands(build_parser())
    if not rows:
        raise RuntimeError("build_parser() registers no subcommands")
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| `skewless {name}` | {_cell(help_text)} |" for name, help_text in rows]
    return "\n".join(lines) + "\n"
