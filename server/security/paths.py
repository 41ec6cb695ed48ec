"""A model's files never come from outside its repository: no ``..``, absolute paths or symlinks out of it.

Triton resolves ``default_model_filename`` (from config.pbtxt or RepositoryModelLoad's JSON override) against
the version folder as given, so ``/etc/passwd`` or ``../../other/model.onnx`` would be read; a symlinked model
folder or file can point anywhere. Every path a load reads is checked here after symlinks are resolved.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError


def plain_file_name(name: str, what: str) -> str:
    """``name`` itself, if it names a file directly inside a folder (no separators, not '.' or '..')."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ModelLoadError(f"{what} '{name}' must be a file name inside the version folder, not a path")
    return name


def contained(path: Path, root: Path, what: str) -> Path:
    """``path`` with symlinks resolved, if it stays inside ``root`` (also resolved); else ModelLoadError."""
    real, real_root = Path(path).resolve(), Path(root).resolve()
    if real != real_root and real_root not in real.parents:
        raise ModelLoadError(f"{what} {path} resolves outside {root}: model files must stay inside the "
                             "model repository (no symlinks or '..' out of it)")
    return real


__all__ = ["contained", "plain_file_name"]
