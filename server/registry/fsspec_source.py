"""A Triton-layout repository at any fsspec URL (``s3://``, ``gs://``, ``file://``, a local path).

Credentials and endpoints come from each store's own standard configuration (for S3: the AWS variables,
profiles and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which botocore reads itself), so there is
nothing of ours to learn. One poll costs one listing of the repository root and one of each model's prefix:
the model prefix shows the version directories and the manifests beside them (with their ETags, which are
the versions' tokens), so a version's files are listed only when the policy wants it and it changed.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .manifest import ManifestError, parse_manifest
from .source import (
    MANIFEST_SUFFIX,
    RemoteFile,
    Source,
    SourceError,
    VersionChoice,
    VersionListing,
    VersionPolicy,
    VersionRef,
)

_MD5 = re.compile(r"^[0-9a-f]{32}$")
# Fail fast against a dead or slow store: the sync loop has its own backoff, and a request to S3 that
# hangs for botocore's default 60 s would only delay noticing the outage.
S3_OPTIONS = {"use_listings_cache": False, "skip_instance_cache": True,
              "config_kwargs": {"connect_timeout": 3, "read_timeout": 15, "retries": {"max_attempts": 2}}}


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (where credentials could hide)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_remote_url(repository: str) -> bool:
    """True for a URL with a scheme (``s3://…``, ``file://…``): the repository is synced, not read in place."""
    return "://" in repository


def _etag(info: dict) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
    return str(tag).strip('"')


def _token(info: dict) -> str:
    """What identifies this content as the store sees it: the ETag, else size and modification time."""
    tag = _etag(info)
    if tag:
        return tag
    return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('updated') or ''}"


def list_files(fs, top: str) -> dict[str, RemoteFile]:
    """Every file under ``top`` (relative, '/'-separated) with the checksums the store reports for it."""
    files = {}
    for name, info in fs.find(top, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(name, top)
        checksums = {"etag": _token(info)}
        tag = _etag(info)
        if _MD5.match(tag):  # a single-part S3 upload's ETag is the MD5 of its bytes
            checksums["md5"] = tag
        files[rel] = RemoteFile(rel, info.get("size"), checksums)
    return files


class FsspecSource(Source):
    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec

        self.url = url.rstrip("/")
        protocol = urlsplit(url).scheme
        options = dict(S3_OPTIONS) if protocol in ("s3", "s3a") else {}
        options.update(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            raise SourceError(f"no filesystem for {redact_url(url)}: {exc} (pip install 'skewless[s3]' for "
                              "s3://)") from None
        self.root = self.root.rstrip("/")

    def describe(self) -> str:
        return redact_url(self.url)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _ls(self, path: str) -> list[dict]:
        try:
            return self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []

    def model_names(self) -> list[str]:
        entries = self._ls(self.root)
        if not entries and not self.fs.exists(self.root):
            raise SourceError(f"repository {self.describe()} does not exist")
        names = []
        for e in entries:
            base = posixpath.basename(e["name"].rstrip("/"))
            if e.get("type") == "directory" and base and not base.startswith("."):
                names.append(base)
        return sorted(names)

    def model_config(self, model: str) -> str | None:
        try:
            return self.fs.cat_file(self._path(model, "config.pbtxt")).decode()
        except FileNotFoundError:
            return None

    def versions(self, model: str, policy: VersionPolicy) -> VersionChoice:
        dirs: dict[int, dict] = {}
        manifests: dict[int, dict] = {}
        for e in self._ls(self._path(model)):
            base = posixpath.basename(e["name"].rstrip("/"))
            if e.get("type") == "directory" and base.isdigit() and not base.startswith("0"):
                dirs[int(base)] = e
            elif base.endswith(MANIFEST_SUFFIX):
                stem = base[: -len(MANIFEST_SUFFIX)]
                if stem.isdigit() and not stem.startswith("0"):
                    manifests[int(stem)] = e
        if manifests:
            # Published with manifests: only versions whose manifest is there are complete.
            complete = [v for v in dirs if v in manifests]
            newest = max(complete, default=0)
            incomplete = {v: "incomplete: no manifest yet (upload in progress or abandoned)"
                          for v in dirs if v not in manifests and v > newest}
            return VersionChoice([VersionRef(v, "manifest:" + _token(manifests[v]))
                                  for v in policy.select(complete)], incomplete)
        # A plain Triton repository (no manifests): the token is the wanted versions' own listing.
        return VersionChoice([VersionRef(v, "files:" + self._files_token(model, v))
                              for v in policy.select(list(dirs))])

    def _files(self, model: str, version: int) -> dict[str, RemoteFile]:
        return list_files(self.fs, self._path(model, str(version)))

    def _files_token(self, model: str, version: int) -> str:
        files = self._files(model, version)
        text = "\n".join(f"{p}\t{f.size}\t{f.checksums['etag']}" for p, f in sorted(files.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def listing(self, model: str, version: int) -> VersionListing:
        files = self._files(model, version)
        manifest, error = None, ""
        try:
            data = self.fs.cat_file(self._path(model, f"{version}{MANIFEST_SUFFIX}"))
        except FileNotFoundError:
            data = None
        if data is not None:
            try:
                manifest = parse_manifest(data, model, version)
            except ManifestError as exc:
                error = str(exc)
        return VersionListing(files, manifest, error)

    def fetch(self, model: str, version: int, path: str, dest: Path) -> None:
        self.fs.get_file(self._path(model, str(version), path), str(dest))


__all__ = ["FsspecSource", "is_remote_url", "list_files", "redact_url"]
