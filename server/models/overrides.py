"""Triton's load-time file overrides: a load request's ``file:<version>/<name>`` parameters (with its ``config``)
are a whole model directory, which is loaded instead of the repository's.

The files go into a private temporary directory owned by the repository manager; it lives as long as the model
serves from it (replaced by the next load, removed by an unload or at shutdown), so the repository itself is
never written to.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import InvalidArgument

FILE_PREFIX = "file:"


def check_relative(name: str, rel: str) -> tuple[str, ...]:
    """The components of a ``file:`` parameter's path, which must stay inside the model directory."""
    parts = tuple(rel.split("/"))
    if not rel or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise InvalidArgument(f"failed to load '{name}': load parameter '{FILE_PREFIX}{rel}' must name a file "
                              "inside the model directory, such as 'file:1/model.onnx'")
    return parts


def write_override(name: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` (path inside the model directory -> content) into a fresh temporary directory; return the
    model directory in it (``<tmp>/<name>``). The caller removes ``model_dir.parent`` with ``remove_override``."""
    checked = {rel: check_relative(name, rel) for rel in files}
    root = Path(tempfile.mkdtemp(prefix="skewless-override-"))
    model_dir = root / name
    try:
        for rel, parts in checked.items():
            path = model_dir.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[rel])
    except OSError as exc:  # e.g. a component longer than the file system allows
        remove_override(model_dir)
        raise InvalidArgument(f"failed to load '{name}', failed to poll from model repository: cannot write "
                              f"override files: {exc.strerror or exc}") from None
    return model_dir


def read_override(model_dir: Path) -> dict[str, bytes]:
    """The files of an override model directory, as ``write_override`` takes them (for a restarted worker)."""
    return {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


def remove_override(model_dir: Path | None) -> None:
    """Remove an override model directory written by ``write_override`` (and its temporary parent)."""
    if model_dir is not None:
        shutil.rmtree(model_dir.parent, ignore_errors=True)


__all__ = ["FILE_PREFIX", "check_relative", "read_override", "remove_override", "write_override"]
