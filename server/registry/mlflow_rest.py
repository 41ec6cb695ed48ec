"""A small blocking client for the MLflow tracking server's REST API (``/api/2.0/mlflow/…``) and its artifact
proxy (``/api/2.0/mlflow-artifacts/…``), on the standard library alone.

Why not the ``mlflow`` package: the server needs five GET endpoints, and the full package weighs ~850 MB with its
dependencies (``mlflow-skinny`` still brings a few dozen packages); urllib adds nothing to the install.

Authentication follows MLflow's own client variables, so nothing new to learn: ``MLFLOW_TRACKING_TOKEN``
(bearer), ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or user info in the URI (basic),
``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA bundle) and ``MLFLOW_TRACKING_INSECURE_TLS=true``. No error message
ever carries them: the URI is kept without user info, and every message passes through ``redact``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .redact import redact
from .source import SourceError

CONNECT_TIMEOUT_S = 10.0  # per socket operation: a dead or hung server fails the call, the sync loop backs off
CHUNK = 1 << 20
_SCHEMES = {"mlflow": "http", "mlflow+http": "http", "mlflow+https": "https", "http": "http", "https": "https"}


class MlflowRefused(SourceError):
    """The server answered, and refused the request with an MLflow error code (e.g. an alias that is not set):
    a fact about the registry's content, not an outage."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class MlflowNotFound(MlflowRefused):
    """The thing asked for (a registered model, a version, an artifact) does not exist."""


def tracking_uri(registry: str, environ: dict[str, str] | None = None) -> str:
    """The tracking server's base URL for ``--registry``.

    ``mlflow://HOST[:PORT][/PATH]`` is plain HTTP, ``mlflow+https://…`` TLS; ``http(s)://…`` is taken as it is;
    ``mlflow`` alone means ``$MLFLOW_TRACKING_URI``, which must then be an ``http(s)://`` URI (a local
    ``file:``/``sqlite:`` store has no registry server to poll)."""
    env = os.environ if environ is None else environ
    value = registry.strip()
    if value == "mlflow":
        value = env.get("MLFLOW_TRACKING_URI", "").strip()
        if not value:
            raise ValueError("--registry mlflow takes the server from MLFLOW_TRACKING_URI, which is not set")
    parts = urllib.parse.urlsplit(value)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        shown = redact(value) if "://" in value else value
        raise ValueError(f"'{shown}' is not an MLflow tracking server: expected mlflow://HOST:PORT, "
                         "mlflow+https://HOST[:PORT], http(s)://HOST[:PORT], or 'mlflow' with MLFLOW_TRACKING_URI "
                         "set to an http(s) URI")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"'{redact(value)}': the port is not a number") from None
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class MlflowRest:
    """GET/HEAD against one tracking server; errors become :class:`SourceError` with redacted messages."""

    def __init__(self, uri: str, timeout: float = CONNECT_TIMEOUT_S, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        self.base = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self._headers = {"User-Agent": "skewless-registry"}
        user = urllib.parse.unquote(parts.username or "") or env.get("MLFLOW_TRACKING_USERNAME", "")
        password = urllib.parse.unquote(parts.password or "") or env.get("MLFLOW_TRACKING_PASSWORD", "")
        token = env.get("MLFLOW_TRACKING_TOKEN", "")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        self._secrets = [s for s in (token, password) if len(s) >= 4]
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            cafile = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
            self._ssl = ssl.create_default_context(cafile=cafile)
            if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    def describe(self) -> str:
        return f"mlflow {self.base}"

    def _safe(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return redact(text)

    def _open(self, url: str, method: str = "GET"):
        req = urllib.request.Request(url, headers=self._headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            code, message = _error_detail(exc)
            where = url[len(self.base):].split("?")[0]
            if code == "RESOURCE_DOES_NOT_EXIST" or (exc.code == 404 and "/mlflow-artifacts/" in where):
                raise MlflowNotFound(self._safe(message or f"{where} not found"), code) from None
            if code and 400 <= exc.code < 500 and exc.code not in (401, 403, 429):
                raise MlflowRefused(self._safe(message), code) from None
            hint = " (check MLFLOW_TRACKING_TOKEN or the credentials)" if exc.code in (401, 403) else ""
            text = f"{self.describe()}{where}: HTTP {exc.code} {code + ': ' if code else ''}{message}{hint}"
            raise SourceError(self._safe(text.rstrip())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(self._safe(f"{self.describe()} unreachable: {reason}")) from None

    def get(self, endpoint: str, **params: Any) -> dict:
        """``GET /api/2.0/mlflow/<endpoint>?params`` as JSON."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.base}/api/2.0/mlflow/{endpoint}" + (f"?{query}" if query else "")
        with self._open(url) as resp:
            body = resp.read()
        try:
            return json.loads(body or b"{}")
        except ValueError:
            raise SourceError(f"{self.describe()}: /{endpoint} did not answer JSON") from None

    # -- the artifact proxy (mlflow-artifacts:/ URIs) ---------------------------------------------------------
    def _artifact_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path.strip('/'))}"

    def list_artifacts(self, path: str) -> list[dict]:
        """One directory of the proxied store: [{path, is_dir, file_size}], paths relative to ``path``."""
        query = urllib.parse.urlencode({"path": path.strip("/")})
        with self._open(f"{self.base}/api/2.0/mlflow-artifacts/artifacts?{query}") as resp:
            body = resp.read()
        try:
            return list(json.loads(body or b"{}").get("files", []))
        except (ValueError, AttributeError):
            raise SourceError(f"{self.describe()}: the artifact listing is not JSON") from None

    def artifact_tag(self, path: str) -> str:
        """What the proxy says identifies a file's current content (ETag, else Last-Modified), or ''."""
        try:
            with self._open(self._artifact_url(path), method="HEAD") as resp:
                return (resp.headers.get("ETag") or resp.headers.get("Last-Modified") or "").strip('"')
        except MlflowNotFound:
            raise
        except SourceError:
            return ""  # a proxy that refuses HEAD: the listing check falls back to sizes

    def read_artifact(self, path: str) -> bytes:
        with self._open(self._artifact_url(path)) as resp:
            return resp.read()

    def download_artifact(self, path: str, dest: Path) -> None:
        try:
            with self._open(self._artifact_url(path)) as resp, open(dest, "wb") as out:
                shutil.copyfileobj(resp, out, CHUNK)
        except TimeoutError:
            raise SourceError(f"{self.describe()}: download of an artifact stalled") from None


def _error_detail(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """(MLflow's error_code, its message) from an error body; ('', the HTTP reason) for anything else."""
    try:
        doc = json.loads(exc.read(4096) or b"{}")
    except (ValueError, OSError):
        doc = {}
    if isinstance(doc, dict) and doc.get("error_code"):
        return str(doc["error_code"]), str(doc.get("message", ""))[:300]
    return "", str(exc.reason or "")


__all__ = ["MlflowNotFound", "MlflowRefused", "MlflowRest", "tracking_uri"]
