"""Triton's load-time file overrides: a load request's ``file:<version>/<name>`` parameters (with its ``config``)
are a whole model directory, which is loaded instead of the repository's.

The files go into a private temporary directory owned by the repository manager; it lives as long as the model
serves from it (replaced by the next load, removed by an unload or at shutdown), so the repository itself is
never written to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import InvalidArgument
from .onnx_external_data import MalformedModel, external_data_locations

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


def check_external_data(name: str, model_dir: Path, model_files: list[Path]) -> None:
    """Refuse uploaded ONNX models whose external data (tensors stored in other files) would be read from
    anywhere but the files uploaded with them, whatever onnxruntime version loads them: a location must be
    relative, without ``..``, one of the uploaded files, and inside the override folder once symlinks are
    resolved. A model file that is not well-formed protobuf is refused too."""
    root = os.path.realpath(model_dir.parent)
    uploaded = {os.path.realpath(p) for p in model_dir.rglob("*") if p.is_file()}
    for model_file in model_files:
        shown = model_file.relative_to(model_dir).as_posix()
        try:
            locations = external_data_locations(model_file.read_bytes())
        except MalformedModel as exc:
            raise InvalidArgument(f"failed to load '{name}', model file '{shown}' is not a valid ONNX model: "
                                  f"{exc}") from None
        except OSError as exc:
            raise InvalidArgument(f"failed to load '{name}', cannot read model file '{shown}': "
                                  f"{exc.strerror or exc}") from None
        for location in locations:
            problem = _location_problem(location, model_file.parent, root, uploaded)
            if problem:
                raise InvalidArgument(f"failed to load '{name}', model file '{shown}' names external data "
                                      f"location '{location}' that {problem}; external data must be uploaded "
                                      "with the model as 'file:' parameters beside it")


def _location_problem(location: str, folder: Path, root: str, uploaded: set[str]) -> str:
    """Why ``location`` (relative to the model file's ``folder``) may not be read; empty when it may."""
    if not location or "\x00" in location:
        return "is empty or holds a NUL"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        return "is absolute"
    if ".." in location.replace("\\", "/").split("/"):
        return "climbs out with '..'"
    path = os.path.realpath(folder / location)
    if os.path.commonpath([root, path]) != root:
        return "resolves outside the model directory"
    if path not in uploaded:
        return "is not one of the uploaded files"
    return ""


def read_override(model_dir: Path) -> dict[str, bytes]:
    """The files of an override model directory, as ``write_override`` takes them (for a restarted worker)."""
    return {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


def remove_override(model_dir: Path | None) -> None:
    """Remove an override model directory written by ``write_override`` (and its temporary parent)."""
    if model_dir is not None:
        shutil.rmtree(model_dir.parent, ignore_errors=True)


__all__ = ["FILE_PREFIX", "check_external_data", "check_relative", "read_override", "remove_override", "write_override"]
