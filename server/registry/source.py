"""Where a registry's models come from: the one interface every registry backend implements.

The sync loop (``registry/sync.py``) asks a :class:`Source` three questions, in this order, and nothing else:

1. :meth:`Source.model_names` and :meth:`Source.model_config`: which models exist, and each one's
   ``config.pbtxt`` text (None when the model has none: ONNX auto-completion applies, as for a local repository).
2. :meth:`Source.versions`: which versions the model's version policy wants *now*, plus the newer versions
   that exist but are not complete yet (shown in RepositoryIndex with their reason). An implementation asks
   the store only what the policy needs: a Triton-layout bucket lists one prefix (the model's), never the
   files of versions it will not load; a registry with aliases (MLflow: registered model + alias ->
   version number) resolves the alias and ignores the policy. Each version carries a ``token`` that changes
   whenever the version's content may have changed (an S3 manifest's ETag, an MLflow version's run id and
   last-updated time), so an unchanged version costs no further request.
3. :meth:`Source.listing` then :meth:`Source.fetch`: one version's files with the checksums the store
   records for them (S3 ETag / ``x-amz-checksum-*``, MLflow's recorded file hashes) and, if the version has one,
   its ``sha256`` manifest (written by ``skewless publish``); then each file copied to a local path.

The source never decides whether a copy can be trusted: the cache (``registry/cache.py``) hashes every byte
it downloads and checks it against the manifest and the store's checksums, and lists the version again after
the download to catch a copy that changed underneath it. A source only reports faithfully what the store
says. Every method is blocking and is called on a worker thread, never on the event loop; a failure to reach
the store raises :class:`SourceError` (or any ``OSError``), whose message must never carry credentials.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_SUFFIX = ".manifest.json"  # beside version N: <model>/N.manifest.json (see registry/manifest.py)
SHADOW_ALIAS = "challenger"  # the alias that names a model's shadow target (MLflow's convention beside champion)


class SourceError(Exception):
    """The store could not be reached or answered with an error; the message is safe to log."""


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version_policy, as the source needs it: ``latest`` N, ``all``, or ``specific`` versions."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return sorted(v for v in set(self.specific) if v in available)
        return available[-max(1, self.latest):]


@dataclass(frozen=True)
class VersionRef:
    """One version the policy wants: its number, and a token that changes whenever its content may have."""

    version: int
    token: str


@dataclass(frozen=True)
class VersionChoice:
    """What :meth:`Source.versions` answers: the wanted versions, and versions seen but not usable yet
    (number -> reason, e.g. "incomplete: no manifest yet (upload in progress or abandoned)"). ``reason`` says
    why nothing is wanted when ``wanted`` is empty (e.g. "no alias 'champion'"); ``aliases`` is what a registry
    with aliases says each alias points to (MLflow: ``{"champion": 3, "challenger": 4}``), for the shadow target."""

    wanted: list[VersionRef]
    incomplete: dict[int, str] = field(default_factory=dict)
    reason: str = ""
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a version, as the store describes it. ``path`` is relative to the version, '/'-separated.

    ``checksums`` maps an algorithm to the store's value for the whole file: ``md5`` (an S3 ETag of a
    single-part upload), ``sha256`` (``x-amz-checksum-sha256`` or MLflow's recorded hash, hex), ``etag``
    (opaque: compared between two listings to detect a change, never against the bytes)."""

    path: str
    size: int | None
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionListing:
    """One version's files and, when the version was published with one, its manifest's parsed content
    (``manifest_error`` says why a manifest that is there could not be used: the version is then rejected)."""

    files: dict[str, RemoteFile]
    manifest: dict | None = None
    manifest_error: str = ""


class Source(abc.ABC):
    """A registry backend. Implementations: :class:`~skewless.server.registry.fsspec_source.FsspecSource`
    (any fsspec URL laid out like a Triton repository) and
    :class:`~skewless.server.registry.mlflow_source.MlflowSource` (an MLflow Model Registry, a registered model's
    alias per served model). All methods block; call them off the event loop."""

    has_aliases = False  # True when versions() reports the registry's aliases (VersionChoice.aliases)

    @abc.abstractmethod
    def describe(self) -> str:
        """The source for logs and errors, without credentials (no user info, no query string)."""

    @abc.abstractmethod
    def model_names(self) -> list[str]:
        """Every model the registry holds (one listing)."""

    @abc.abstractmethod
    def model_config(self, model: str) -> str | None:
        """The model's ``config.pbtxt`` text, or None when it has none."""

    @abc.abstractmethod
    def versions(self, model: str, policy: VersionPolicy) -> VersionChoice:
        """The versions ``policy`` selects among the complete ones, and newer incomplete ones."""

    @abc.abstractmethod
    def listing(self, model: str, version: int) -> VersionListing:
        """One version's files with the store's checksums, and its manifest if it has one."""

    @abc.abstractmethod
    def fetch(self, model: str, version: int, path: str, dest: Path) -> None:
        """Copy one file of a version (``path`` as in :meth:`listing`) to the local file ``dest``."""

    def close(self) -> None:  # noqa: B027 - optional: most sources hold nothing to release
        """Release connections; the default holds none."""


__all__ = ["MANIFEST_SUFFIX", "SHADOW_ALIAS", "RemoteFile", "Source", "SourceError", "VersionChoice", "VersionListing",
           "VersionPolicy", "VersionRef"]
