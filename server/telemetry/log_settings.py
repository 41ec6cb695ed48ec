"""Triton's logging extension (``LogSettings``, ``/v2/logging``): the server's log levels and format, changed
at run time on the process's root logger.

Triton's switches are independent (info off, warnings on, errors on, ...), Python's levels a threshold: the
root logger's level is the lowest level switched on, and a filter on its handlers drops the levels switched
off above it. ``log_verbose_level`` > 0 turns on DEBUG. ``log_format`` is ``default`` (local time) or
``ISO8601`` (UTC, ``2026-12-07T03:40:00Z``). ``log_file`` is reported but, as in Triton, not changed over
the network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidArgument, Unimplemented

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("default", "ISO8601")
SWITCHES = {"log_info": logging.INFO, "log_warning": logging.WARNING, "log_error": logging.ERROR}
SETTINGS = ("log_file", *SWITCHES, "log_verbose_level", "log_format")


class _Switches(logging.Filter):
    """Drops the records of the levels switched off (ERROR's switch covers CRITICAL too)."""

    def __init__(self) -> None:
        super().__init__("skewless-log-settings")
        self.off: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        level = min(record.levelno, logging.ERROR) if record.levelno >= logging.INFO else record.levelno
        return level not in self.off


class _Iso8601(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + "Z"


class LogSettings:
    """The root logger's switches and format; starts from the level the server was started with."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger()
        level = self.logger.getEffectiveLevel()
        self.values: dict[str, Any] = {
            "log_file": "", "log_info": level <= logging.INFO, "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR, "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default"}
        self._filter = _Switches()

    def get(self) -> dict[str, Any]:
        return dict(self.values)

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (None leaves a setting as it is); everything is checked before anything changes."""
        new = dict(self.values)
        for key, value in changes.items():
            if key not in SETTINGS:
                raise InvalidArgument(f"unknown log setting '{key}': expected one of {', '.join(SETTINGS)}")
            if value is None:
                continue
            if key == "log_file":
                if value != self.values["log_file"]:
                    raise Unimplemented("log file location can not be updated through network protocol")
            elif key in SWITCHES:
                if not isinstance(value, bool):
                    raise InvalidArgument(f"log setting '{key}' must be a boolean, got {value!r}")
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidArgument(f"log setting 'log_verbose_level' must be a non-negative integer, "
                                          f"got {value!r}")
            elif value not in FORMATS:
                raise InvalidArgument(f"invalid argument for --log_format, got: {value}")
            new[key] = value
        self.values = new
        self._apply()
        return self.get()

    def _apply(self) -> None:
        v = self.values
        on = [lvl for key, lvl in SWITCHES.items() if v[key]]
        if v["log_verbose_level"] > 0:
            on.insert(0, logging.DEBUG)
        self.logger.setLevel(min(on) if on else logging.CRITICAL + 1)
        self._filter.off = {lvl for key, lvl in SWITCHES.items() if not v[key]}
        formatter = _Iso8601(FORMAT) if v["log_format"] == "ISO8601" else logging.Formatter(FORMAT)
        for handler in self.logger.handlers:
            if self._filter not in handler.filters:
                handler.addFilter(self._filter)
            handler.setFormatter(formatter)


__all__ = ["LogSettings"]
