"""The shape of each area's ``skewless serve`` settings: a dataclass that adds its own flags to an argument
group and reads them back, checked, from the parsed namespace. ``frontend/options.py`` composes them.

Settings modules stay light (argparse, dataclasses, pathlib): ``skewless --help`` imports every one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, Protocol

# argparse's parser.error: prints the usage and the message, exits 2.
ErrorFn = Callable[[str], NoReturn]


class ServeSettings(Protocol):
    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        """Add this area's flags (names, defaults, help and metavars are what users and scripts rely on)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> ServeSettings:
        """This area's settings from the parsed flags; a bad value or combination calls ``error``."""
