"""Where an MLflow model version's files are, and how to list and copy them.

A version's artifact URI (``get-download-uri``) is either on the tracking server's artifact proxy
(``mlflow-artifacts:/…``, the default of ``mlflow server`` since 2.0: read through the same server and
credentials) or a store the clients write to directly (``s3://…``, ``gs://…``, ``file://…`` or a path, when the
server runs with ``--no-serve-artifacts``), read with fsspec and that store's own credentials, exactly as a
Triton-layout bucket is.

OSS MLflow records no per-file content hash (an artifact listing carries a path, ``is_dir`` and a size), so
what integrity a version gets is: the ``sha256`` manifest if its artifacts carry one, else the sizes, the
proxy's ETag (an opaque change tag) or the store's own checksums (an S3 ETag that is an MD5), and the cache's
second listing after the download.
"""

from __future__ import annotations

import abc
import posixpath
import urllib.parse
from pathlib import Path

from .mlflow_rest import MlflowNotFound, MlflowRest
from .redact import redact
from .source import RemoteFile, SourceError

MANIFEST_NAME = "skewless.manifest.json"  # at the root of a version's artifacts (skewless publish's format)
MAX_FILES = 10_000  # a model directory, not a data lake: a runaway listing is refused, not followed


class ArtifactDir(abc.ABC):
    """One version's artifact directory. Blocking; paths are relative to the directory, '/'-separated."""

    @abc.abstractmethod
    def files(self) -> dict[str, RemoteFile]:
        """Every file below the directory with what the store reports about it."""

    @abc.abstractmethod
    def read(self, rel: str) -> bytes | None:
        """A small file's bytes, or None when it does not exist."""

    @abc.abstractmethod
    def fetch(self, rel: str, dest: Path) -> None:
        """Copy one file to the local path ``dest``."""


class ProxiedArtifacts(ArtifactDir):
    """``mlflow-artifacts:/PATH``: read through the tracking server's ``/api/2.0/mlflow-artifacts`` routes."""

    def __init__(self, rest: MlflowRest, path: str):
        self.rest, self.path = rest, path.strip("/")

    def files(self) -> dict[str, RemoteFile]:
        out: dict[str, RemoteFile] = {}
        pending = [""]
        while pending:
            sub = pending.pop()
            for entry in self.rest.list_artifacts(posixpath.join(self.path, sub) if sub else self.path):
                base = posixpath.basename(str(entry.get("path", "")).rstrip("/"))
                if base in ("", ".", ".."):  # a listing must not lead the cache outside the version directory
                    raise SourceError(f"artifacts at mlflow-artifacts:/{self.path}: the listing names '{base}'")
                rel = posixpath.join(sub, base)
                if entry.get("is_dir"):
                    pending.append(rel)
                    continue
                size = entry.get("file_size")
                out[rel] = RemoteFile(rel, int(size) if size is not None else None)
                if len(out) > MAX_FILES:
                    raise SourceError(f"artifacts at mlflow-artifacts:/{self.path} hold more than {MAX_FILES} files")
        # The proxy's ETag per file: an opaque tag (not a content hash) that the cache compares between its two
        # listings, so a file rewritten in place during a download is caught even when its size is unchanged.
        return {rel: RemoteFile(rel, f.size, _tag(self.rest.artifact_tag(posixpath.join(self.path, rel))))
                for rel, f in out.items()}

    def read(self, rel: str) -> bytes | None:
        try:
            return self.rest.read_artifact(posixpath.join(self.path, rel))
        except MlflowNotFound:
            return None

    def fetch(self, rel: str, dest: Path) -> None:
        self.rest.download_artifact(posixpath.join(self.path, rel), dest)


class FsspecArtifacts(ArtifactDir):
    """Artifacts in a store the server does not proxy (``s3://``, ``gs://``, ``file://``, a local path)."""

    def __init__(self, url: str):
        import fsspec

        from .fsspec_source import S3_OPTIONS

        scheme = urllib.parse.urlsplit(url).scheme
        options = dict(S3_OPTIONS) if scheme in ("s3", "s3a") else {}
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise SourceError(f"no filesystem for {redact(url)}: {exc}") from None
        self.root = root.rstrip("/")

    def files(self) -> dict[str, RemoteFile]:
        from .fsspec_source import list_files

        return list_files(self.fs, self.root)

    def read(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(posixpath.join(self.root, rel))
        except FileNotFoundError:
            return None

    def fetch(self, rel: str, dest: Path) -> None:
        self.fs.get_file(posixpath.join(self.root, rel), str(dest))


def open_artifacts(rest: MlflowRest, uri: str) -> ArtifactDir:
    """The artifact directory an artifact URI names; ValueError for a kind of store we cannot read."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "mlflow-artifacts":
        # mlflow-artifacts://HOST/PATH names another proxy; ours is the one whose credentials we hold, and the
        # URI's path is the same on every proxy of one artifact destination.
        return ProxiedArtifacts(rest, urllib.parse.unquote(parts.path))
    if parts.scheme in ("", "file", "s3", "s3a", "gs", "gcs", "abfs", "az") and (parts.scheme or uri.startswith("/")):
        return FsspecArtifacts(uri)
    raise ValueError(f"artifact location '{redact(uri)}' ({parts.scheme or 'relative path'}:) cannot be read by "
                     "skewless: serve artifacts through the tracking server (mlflow server's default), or store "
                     "them on s3://, gs://, file:// or a shared path")


def _tag(tag: str) -> dict[str, str]:
    return {"etag": tag} if tag else {}


__all__ = ["MANIFEST_NAME", "ArtifactDir", "FsspecArtifacts", "ProxiedArtifacts", "open_artifacts"]
