"""The ``sha256`` manifest ``skewless publish`` writes beside a version: ``<model>/<N>.manifest.json``.

It lists every file of the version with its size and SHA-256. Published last, its presence is what makes a
version complete: a version directory without one is an upload in progress (or abandoned) and is never
loaded, and every downloaded byte is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT = "skewless.manifest/1"
CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be used: not JSON, wrong format, or a bad entry."""


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file in one read: md5 is what an S3 ETag of a single-part upload is."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def version_files(version_dir: Path) -> list[str]:
    """Every file under a version directory, '/'-separated and relative to it, sorted."""
    out = []
    for dirpath, _, files in os.walk(version_dir):
        for f in files:
            out.append((Path(dirpath) / f).relative_to(version_dir).as_posix())
    return sorted(out)


def build_manifest(version_dir: Path, model: str, version: int) -> dict:
    files = {}
    for rel in version_files(version_dir):
        sha, _ = file_digests(version_dir / rel)
        files[rel] = {"sha256": sha, "size": (version_dir / rel).stat().st_size}
    return {"format": FORMAT, "model": model, "version": version, "files": files}


def dump_manifest(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes, model: str | None, version: int | None) -> dict:
    """The manifest's content, checked: it must list sane entries and name this model and version (unless
    ``model`` is None: an MLflow version's number is assigned after its artifacts, manifest included, were
    logged, so there only the files are checked)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"manifest format is not '{FORMAT}'")
    if model is not None and (doc.get("model") != model or doc.get("version") != version):
        raise ManifestError(f"manifest is for model '{doc.get('model')}' version {doc.get('version')}, "
                            f"not '{model}' version {version}")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError("manifest lists no files")
    for rel, entry in files.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ManifestError(f"manifest entry '{rel}' is not a relative path inside the version")
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not (isinstance(sha, str) and len(sha) == 64 and isinstance(size, int) and size >= 0):
            raise ManifestError(f"manifest entry '{rel}' needs a sha256 (64 hex digits) and a size")
    return doc
