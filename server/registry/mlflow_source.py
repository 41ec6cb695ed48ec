"""The MLflow Model Registry as a registry source: each served model follows one registered model's alias.

``--registry mlflow://HOST:PORT`` with ``--registry-model NAME[=REGISTERED_MODEL][@ALIAS]`` (repeatable) serves
registered model ``REGISTERED_MODEL`` (default: ``NAME``) as ``NAME``, at the version its alias (default
``champion``) points to; without any ``--registry-model``, every registered model that has a ``champion`` alias is
served under its own name. The version number a reply carries is MLflow's.

One poll costs two GETs per model: ``registered-models/get`` (every alias of the model in one answer, so the
``challenger`` alias is known at no extra cost) and ``model-versions/get`` for the version the followed alias
names. The version's token is its run id, source and last-updated time, so an unchanged alias costs nothing
more; moving an alias changes the wanted version, and the next poll swaps it in. Where the version's files
are is asked once per token (``get-download-uri``, then the run or logged model it names).

A version's artifacts are a Triton version directory: ``model.onnx`` (the name ``mlflow.onnx.log_model``
writes), optionally ``features.json``, ``validation.json``; a ``config.pbtxt`` at their root is the model's
config (else ONNX auto-completion), and ``skewless.manifest.json`` at their root, if present, lists every file's
sha256 and size (the format ``skewless publish`` writes) and is then required to match.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import RejectedVersion
from .manifest import ManifestError, parse_manifest
from .mlflow_artifacts import MANIFEST_NAME, ArtifactDir, open_artifacts
from .mlflow_rest import MlflowNotFound, MlflowRefused, MlflowRest, tracking_uri
from .source import (
    SHADOW_ALIAS,
    Source,
    SourceError,
    VersionChoice,
    VersionListing,
    VersionPolicy,
    VersionRef,
)

DEFAULT_ALIAS = "champion"
_ALIAS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_RESOLVED_FRESH_S = 10.0  # how long model_config's answer is reused by the versions() call that follows it
SEARCH_PAGE = 500


@dataclass(frozen=True)
class Target:
    """What one served model follows: a registered model and one of its aliases."""

    registered: str
    alias: str = DEFAULT_ALIAS


def parse_model_spec(spec: str) -> tuple[str, Target]:
    """``NAME[=REGISTERED_MODEL][@ALIAS]`` -> (served name, target); ValueError saying what is wrong."""
    text = spec.strip()
    head, eq, ref = text.partition("=")
    if not eq:
        ref = text
    registered, at, alias = ref.rpartition("@")
    if not at:
        registered, alias = ref, DEFAULT_ALIAS
    name = head if eq else registered
    name, registered, alias = name.strip(), registered.strip(), alias.strip()
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--registry-model '{spec}': '{name}' is not a model name (no '/', not starting with '.')")
    if not registered:
        raise ValueError(f"--registry-model '{spec}': the registered model name is empty")
    if not _ALIAS.match(alias):
        raise ValueError(f"--registry-model '{spec}': '{alias}' is not an MLflow alias (letters, digits, '_', '-')")
    return name, Target(registered, alias)


def parse_model_specs(specs: list[str]) -> dict[str, Target]:
    """Every ``--registry-model``; a served name given twice is an error, not a silent override."""
    out: dict[str, Target] = {}
    for spec in specs:
        name, target = parse_model_spec(spec)
        if name in out and out[name] != target:
            raise ValueError(f"--registry-model: '{name}' is given twice ({out[name].registered}@{out[name].alias} "
                             f"and {target.registered}@{target.alias})")
        out[name] = target
    return out


@dataclass(frozen=True)
class _Resolved:
    """One model's registry state as one poll saw it."""

    version: int | None  # the followed alias's version; None with ``reason`` when there is none to serve
    token: str
    status: str  # MLflow's model version status: READY, PENDING_REGISTRATION, FAILED_REGISTRATION
    aliases: dict[str, int]
    reason: str = ""


class MlflowSource(Source):
    """Versions from an MLflow tracking server's Model Registry (REST, standard library only)."""

    has_aliases = True

    def __init__(self, registry: str, models: dict[str, Target] | None = None, default_alias: str = DEFAULT_ALIAS,
                 environ: dict[str, str] | None = None):
        self.rest = MlflowRest(tracking_uri(registry, environ), environ=environ)
        self.targets = dict(models or {})
        self.default_alias = default_alias
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[float, _Resolved]] = {}
        self._dirs: dict[tuple[str, int], tuple[str, ArtifactDir]] = {}  # (model, version) -> (token, dir)
        self._configs: dict[str, tuple[str, str | None]] = {}  # model -> (token, its config.pbtxt text)
        self._tokens: dict[tuple[str, int], str] = {}

    def describe(self) -> str:
        return self.rest.describe()

    def target(self, model: str) -> Target:
        """What ``model`` follows: its ``--registry-model`` entry, else the registered model of that name."""
        return self.targets.get(model) or Target(model, self.default_alias)

    # -- which models ---------------------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        if self.targets:
            return sorted(self.targets)
        names, token = [], None
        while True:
            page = self.rest.get("registered-models/search", max_results=SEARCH_PAGE, page_token=token)
            for rm in page.get("registered_models", []):
                name = str(rm.get("name", ""))
                aliases = {a.get("alias") for a in rm.get("aliases", []) or []}
                if self.default_alias in aliases and name and "/" not in name and not name.startswith("."):
                    names.append(name)
            token = page.get("next_page_token")
            if not token:
                return sorted(names)

    # -- which version ------------------------------------------------------------------------------------------
    def _resolve(self, model: str) -> _Resolved:
        t = self.target(model)
        where = f"registered model '{t.registered}'"
        try:
            rm = self.rest.get("registered-models/get", name=t.registered).get("registered_model", {})
        except MlflowNotFound:
            return _Resolved(None, "", "", {}, f"{where} does not exist in {self.describe()}")
        aliases = {}
        for a in rm.get("aliases", []) or []:
            try:
                aliases[str(a["alias"])] = int(a["version"])
            except (KeyError, TypeError, ValueError):
                continue
        version = aliases.get(t.alias)
        if version is None:
            return _Resolved(None, "", "", aliases, f"{where} has no alias '{t.alias}' (set it in MLflow to serve a "
                                                    "version)")
        try:
            mv = self.rest.get("model-versions/get", name=t.registered, version=str(version)).get("model_version", {})
        except MlflowRefused as exc:
            return _Resolved(None, "", "", aliases, f"{where} version {version} ('{t.alias}'): {exc}")
        token = f"{mv.get('run_id', '')}:{mv.get('last_updated_timestamp', '')}:{mv.get('source', '')}"
        return _Resolved(version, token, str(mv.get("status", "READY")), aliases)

    def _fresh(self, model: str) -> _Resolved:
        """The registry's state for ``model`` as model_config() just saw it (so a config and its version are
        always read from one state, even if the alias moves between the two calls), else as it is now."""
        with self._lock:
            seen = self._resolved.pop(model, None)
        if seen is not None and time.monotonic() - seen[0] < _RESOLVED_FRESH_S:
            return seen[1]
        return self._resolve(model)

    def model_config(self, model: str) -> str | None:
        r = self._resolve(model)
        with self._lock:
            self._resolved[model] = (time.monotonic(), r)
        if r.version is None or r.status != "READY":
            return None
        cached = self._configs.get(model)
        if cached is not None and cached[0] == r.token:
            return cached[1]
        try:
            data = self._dir(model, r.version, r.token).read("config.pbtxt")
        except RejectedVersion:
            return None  # an unreadable location: listing() rejects the version, with its reason, in its place
        # Not UTF-8: the replacement characters make the config fail to parse, a rejection with its reason.
        text = data.decode(errors="replace") if data is not None else None
        self._configs[model] = (r.token, text)
        return text

    def versions(self, model: str, policy: VersionPolicy) -> VersionChoice:
        """The one version the alias names (the version policy does not apply: the alias is the policy)."""
        r = self._fresh(model)
        if r.version is None:
            return VersionChoice([], reason=r.reason, aliases=r.aliases)
        if r.status != "READY":
            why = f"incomplete: MLflow reports the version as {r.status} (registration not finished or failed)"
            return VersionChoice([], {r.version: why}, aliases=r.aliases)
        self._tokens[(model, r.version)] = r.token
        return VersionChoice([VersionRef(r.version, r.token)], aliases=r.aliases)

    def alias_version(self, model: str, alias: str = SHADOW_ALIAS) -> int | None:
        """The version ``alias`` of ``model``'s registered model points to now (one request), or None."""
        return self._resolve(model).aliases.get(alias)

    # -- one version's files ------------------------------------------------------------------------------------
    def _dir(self, model: str, version: int, token: str) -> ArtifactDir:
        cached = self._dirs.get((model, version))
        if cached is not None and cached[0] == token:
            return cached[1]
        registered = self.target(model).registered
        uri = str(self.rest.get("model-versions/get-download-uri", name=registered, version=str(version))
                  .get("artifact_uri", ""))
        if uri.startswith("runs:/"):
            run_id, _, sub = uri[len("runs:/"):].partition("/")
            info = self.rest.get("runs/get", run_id=run_id).get("run", {}).get("info", {})
            uri = str(info.get("artifact_uri", "")).rstrip("/") + (f"/{sub}" if sub else "")
        elif uri.startswith("models:/m-"):  # an MLflow 3 logged model that the server did not resolve itself
            info = self.rest.get(f"logged-models/{uri[len('models:/'):].strip('/')}").get("model", {}).get("info", {})
            uri = str(info.get("artifact_uri", ""))
        if not uri:
            raise RejectedVersion("incomplete", f"version {version}: MLflow gives no artifact location")
        try:
            d = open_artifacts(self.rest, uri)
        except ValueError as exc:
            raise RejectedVersion("incomplete", f"version {version}: {exc}") from None
        self._dirs[(model, version)] = (token, d)
        return d

    def listing(self, model: str, version: int) -> VersionListing:
        d = self._dir(model, version, self._tokens.get((model, version), ""))
        files = d.files()
        manifest, error = None, ""
        if MANIFEST_NAME in files:
            del files[MANIFEST_NAME]
            data = d.read(MANIFEST_NAME)
            try:
                manifest = parse_manifest(data or b"", None, None)
            except ManifestError as exc:
                error = str(exc)
        return VersionListing(files, manifest, error)

    def fetch(self, model: str, version: int, path: str, dest: Path) -> None:
        try:
            self._dir(model, version, self._tokens.get((model, version), "")).fetch(path, dest)
        except MlflowNotFound as exc:
            raise SourceError(f"version {version}: '{path}' vanished during the download: {exc}") from None


__all__ = ["DEFAULT_ALIAS", "SHADOW_ALIAS", "MlflowSource", "Target", "parse_model_spec", "parse_model_specs"]
