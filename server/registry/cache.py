"""The local cache of registry versions: content-addressed, verified before use, bounded, LRU-evicted.

Layout under the cache directory::

    blobs/<sha256>                      each distinct file once, read-only, named by its verified hash
    versions/<model>/<N>-<digest16>/    one version as a Triton version directory of hard links to blobs
    tmp/                                downloads and directories being assembled (emptied at start)

A file enters ``blobs/`` only after its bytes matched the manifest's SHA-256 and the store's own checksum
(an S3 ETag that is an MD5), so a blob is trusted by its name; a version directory appears by one rename,
once all its files are there and the version was listed again unchanged. Disk use counts each blob once
(versions share their unchanged files); eviction removes least recently used version directories that are
not protected (serving, or kept for rollback), then blobs no directory links any more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .manifest import file_digests
from .source import Source, VersionListing

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/skewless/registry`` (``~/.cache/skewless/registry``): one per server process."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skewless" / "registry"


class RejectedVersion(Exception):
    """A version that must not load; ``event`` names the metric event (incomplete, corrupt, changed)."""

    def __init__(self, event: str, reason: str):
        super().__init__(reason)
        self.event = event


@dataclass(frozen=True)
class StagedVersion:
    model: str
    version: int
    path: Path  # a complete, verified local version directory
    digest: str  # content hash of the version (paths and file hashes)


class VersionCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs = self.root / "blobs"
        self.versions = self.root / "versions"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.versions):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of an interrupted run are never trusted
        self.tmp.mkdir(parents=True)

    # -- staging ---------------------------------------------------------------------------------------
    def stage(self, source: Source, model: str, version: int, listing: VersionListing,
              protected: set[Path] = frozenset()) -> StagedVersion:
        """Download (or reuse) and verify every file of a version; blocking. Raises RejectedVersion for a
        copy that must not load, and lets the source's errors (unreachable store) through."""
        wanted = self._expected(model, version, listing)
        self.evict(protected, need=sum(size or 0 for size, _, _ in wanted.values()))
        hashes: dict[str, str] = {}
        for rel, (size, sha, md5) in sorted(wanted.items()):
            hashes[rel] = self._blob(source, model, version, rel, size, sha, md5)
        again = source.listing(model, version)
        if not self._same(listing, again, wanted):
            raise RejectedVersion("changed", f"version {version} changed while it was being downloaded; "
                                             "it is tried again once it is stable")
        digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
        final = self.versions / model / f"{version}-{digest[:16]}"
        if not final.is_dir():
            build = self.tmp / f"v-{uuid.uuid4().hex}"
            for rel, sha in hashes.items():
                (build / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blobs / sha, build / rel)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                build.rename(final)
            except OSError:  # assembled concurrently by another sync of the same content: same bytes
                shutil.rmtree(build, ignore_errors=True)
        self.touch(final)
        return StagedVersion(model, version, final, digest)

    def _expected(self, model: str, version: int, listing: VersionListing
                  ) -> dict[str, tuple[int | None, str | None, str | None]]:
        """path -> (size, sha256, md5) that the copy must have; checks that the listing can be complete."""
        if listing.manifest_error:
            raise RejectedVersion("corrupt", f"version {version}: unusable manifest: {listing.manifest_error}")
        if listing.manifest is None:
            if not listing.files:
                raise RejectedVersion("incomplete", f"version {version} has no files")
            return {rel: (f.size, f.checksums.get("sha256"), f.checksums.get("md5"))
                    for rel, f in listing.files.items()}
        out = {}
        for rel, entry in listing.manifest["files"].items():
            remote = listing.files.get(rel)
            if remote is None:
                raise RejectedVersion("incomplete", f"version {version}: '{rel}' is in the manifest but not in "
                                                    "the store (partial upload)")
            if remote.size is not None and remote.size != entry["size"]:
                raise RejectedVersion("corrupt", f"version {version}: '{rel}' has {remote.size} bytes in the "
                                                 f"store, the manifest says {entry['size']}")
            out[rel] = (entry["size"], entry["sha256"], remote.checksums.get("md5"))
        return out

    def _blob(self, source: Source, model: str, version: int, rel: str, size: int | None, sha: str | None,
              md5: str | None) -> str:
        if sha is not None and (self.blobs / sha).is_file():
            return sha  # content-addressed: already downloaded and verified once
        tmp = self.tmp / f"f-{uuid.uuid4().hex}"
        try:
            source.fetch(model, version, rel, tmp)
            got_size = tmp.stat().st_size
            got_sha, got_md5 = file_digests(tmp)
            if size is not None and got_size != size:
                raise RejectedVersion("corrupt", f"version {version}: '{rel}' downloaded {got_size} bytes, "
                                                 f"expected {size}")
            if md5 is not None and got_md5 != md5:
                raise RejectedVersion("corrupt", f"version {version}: '{rel}' does not match the store's "
                                                 "checksum (ETag MD5)")
            if sha is not None and got_sha != sha:
                raise RejectedVersion("corrupt", f"version {version}: '{rel}' sha256 {got_sha[:12]}… does not "
                                                 f"match the manifest's {sha[:12]}…")
            tmp.chmod(0o444)
            os.replace(tmp, self.blobs / got_sha)
            return got_sha
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _same(before: VersionListing, after: VersionListing, wanted: dict) -> bool:
        if (before.manifest, before.manifest_error) != (after.manifest, after.manifest_error):
            return False
        for rel in wanted:
            a, b = before.files.get(rel), after.files.get(rel)
            if a is None or b is None or (a.size, a.checksums.get("etag")) != (b.size, b.checksums.get("etag")):
                return False
        return True

    # -- bookkeeping -------------------------------------------------------------------------------------
    def touch(self, path: Path) -> None:
        """Mark a version directory used now (LRU order is the directories' modification times)."""
        now = time.time()
        os.utime(path, (now, now))

    def disk_bytes(self) -> int:
        """Bytes the cache holds: each blob once, plus downloads in progress."""
        total = 0
        for d in (self.blobs, self.tmp):
            for entry in os.scandir(d):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def cached_versions(self) -> list[Path]:
        return [p for m in self.versions.iterdir() if m.is_dir() for p in m.iterdir() if p.is_dir()]

    def evict(self, protected: set[Path] = frozenset(), need: int = 0) -> int:
        """Remove least recently used, unprotected versions until ``need`` more bytes fit; returns bytes freed."""
        before = self.disk_bytes()
        if before + need <= self.max_bytes:
            return 0
        keep = {Path(p).resolve() for p in protected}
        candidates = sorted((p for p in self.cached_versions() if p.resolve() not in keep),
                            key=lambda p: p.stat().st_mtime)
        total = before
        for path in candidates:
            if total + need <= self.max_bytes:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= self._collect_blobs()
        freed = before - self.disk_bytes()
        if freed:
            log.info("registry cache: evicted %d bytes (now %d of %d)", freed, before - freed, self.max_bytes)
        return freed

    def _collect_blobs(self) -> int:
        """Delete blobs no version directory links (link count 1); returns the bytes freed."""
        freed = 0
        for entry in os.scandir(self.blobs):
            st = entry.stat(follow_symlinks=False)
            if st.st_nlink <= 1:
                os.unlink(entry.path)
                freed += st.st_size
        return freed


__all__ = ["RejectedVersion", "StagedVersion", "VersionCache"]
