"""``skewless publish``: upload one version of a local Triton model directory so that a half-upload is
invisible to every server syncing from the registry.

Order: ``config.pbtxt``, then the version's files, then ``<model>/<N>.manifest.json`` last. Servers treat a
version without its manifest as incomplete, so a publish that dies midway is never loaded, and a published
version is immutable (publishing the same number again is refused unless forced).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from .fsspec_source import S3_OPTIONS, redact_url
from .manifest import build_manifest, dump_manifest
from .source import MANIFEST_SUFFIX


class PublishError(Exception):
    """A publish refused before anything was uploaded (bad directory, version already published)."""


@dataclass(frozen=True)
class Published:
    model: str
    version: int
    files: int
    bytes: int
    manifest_url: str


def local_versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def _put(fs, local: Path, target: str) -> None:
    fs.makedirs(posixpath.dirname(target), exist_ok=True)  # a no-op on object stores; local needs it
    fs.put_file(str(local), target)


def publish(model_dir: Path, url: str, version: int | None = None, name: str | None = None,
            force: bool = False, storage_options: dict | None = None) -> Published:
    import fsspec

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PublishError(f"{model_dir} is not a directory")
    available = local_versions(model_dir)
    if not available:
        raise PublishError(f"{model_dir} has no version directories (1/, 2/, …): it must be a Triton model "
                           "directory")
    version = available[-1] if version is None else version
    if version not in available:
        raise PublishError(f"{model_dir} has no version {version}; it has {available}")
    name = name or model_dir.resolve().name
    if not name or "/" in name or name.startswith("."):
        raise PublishError(f"'{name}' is not a model name")
    vdir = model_dir / str(version)
    manifest = build_manifest(vdir, name, version)
    options = dict(S3_OPTIONS) if url.startswith(("s3://", "s3a://")) else {}
    options.update(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"), **options)
    model_root = posixpath.join(root.rstrip("/"), name)
    manifest_path = posixpath.join(model_root, f"{version}{MANIFEST_SUFFIX}")
    if not force and fs.exists(manifest_path):
        raise PublishError(f"version {version} of '{name}' is already published at {redact_url(url)}; "
                           "published versions are immutable: publish a new version number (or --force)")
    config = model_dir / "config.pbtxt"
    if config.is_file():
        _put(fs, config, posixpath.join(model_root, "config.pbtxt"))
    total = 0
    for rel, entry in manifest["files"].items():
        _put(fs, vdir / rel, posixpath.join(model_root, str(version), rel))
        total += entry["size"]
    fs.pipe_file(manifest_path, dump_manifest(manifest))  # last: the version becomes visible only now
    return Published(name, version, len(manifest["files"]), total,
                     f"{redact_url(url).rstrip('/')}/{name}/{version}{MANIFEST_SUFFIX}")
