"""TLS and mTLS for the gRPC and HTTP listeners, with certificates re-read when their files change.

Certificates are rotated by replacing files (cert-manager, a mounted Kubernetes secret); a restart to pick
them up would drop every connection. Each new handshake asks ``CertFiles.current()`` (one ``stat`` per file,
at most once a second), and a changed set is loaded and used from the next handshake on: gRPC through
``dynamic_ssl_server_credentials``' fetcher, HTTP by swapping the ``SSLContext`` in the SNI callback.
Established connections keep the certificate they were made with. A half-written pair (key not matching the
certificate yet) is logged and the previous certificate stays in use until the pair is whole.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
CLIENT_AUTH = ("none", "optional", "required")


@dataclass(frozen=True)
class TlsSettings:
    cert: Path
    key: Path
    client_ca: Path | None = None
    client_auth: str = "required"  # with a client CA: "required" or "optional"; "none" without one

    def __post_init__(self) -> None:
        if self.client_auth not in CLIENT_AUTH:
            raise ValueError(f"client auth '{self.client_auth}' is not one of {', '.join(CLIENT_AUTH)}")

    @property
    def verify_clients(self) -> bool:
        return self.client_ca is not None and self.client_auth != "none"


class CertFiles:
    """The certificate, key and client-CA files' contents and when they last changed."""

    def __init__(self, settings: TlsSettings):
        self.settings = settings
        self._paths = [p for p in (settings.cert, settings.key, settings.client_ca) if p is not None]
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._stamp = self._stat()
        self.cert, self.key, self.client_ca = self._read()
        self.generation = 0  # bumped on each reload
        self.reload_failures = 0

    def _stat(self) -> tuple:
        out = []
        for p in self._paths:
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        s = self.settings
        return (s.cert.read_bytes(), s.key.read_bytes(),
                s.client_ca.read_bytes() if s.client_ca is not None else None)

    def current(self) -> int:
        """The generation of the files now in force, re-reading them if they changed on disk (cheap: at most
        one stat a second). Each listener keeps the generation it last built from and rebuilds on a change."""
        now = time.monotonic()
        if now < self._next_check:
            return self.generation
        with self._lock:
            if now < self._next_check:
                return self.generation
            self._next_check = now + CHECK_INTERVAL_S
            stamp = self._stat()
            if stamp == self._stamp:
                return self.generation
            try:
                cert, key, ca = self._read()
                _check_pair(cert, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.reload_failures += 1
                log.warning("TLS files changed but cannot be used yet (%s): keeping the previous certificate", exc)
                return self.generation
            self._stamp = stamp
            self.cert, self.key, self.client_ca = cert, key, ca
            self.generation += 1
            log.info("TLS certificate reloaded from %s", self.settings.cert)
            return self.generation


def _check_pair(cert: bytes, key: bytes) -> None:
    """Raise unless the key belongs to the certificate (a rotation caught between writing the two files)."""
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        c, k = Path(d, "c.pem"), Path(d, "k.pem")
        c.write_bytes(cert)
        k.write_bytes(key)
        ctx.load_cert_chain(c, k)


def grpc_credentials(files: CertFiles) -> grpc.ServerCredentials:
    """Server credentials whose certificate follows the files (checked before each new connection)."""
    def config() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], files.client_ca)

    seen = [files.generation]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            generation = files.current()
            if generation == seen[0]:
                return None
            seen[0] = generation
            return config()
        except Exception:  # never fail a handshake over the reload check
            log.warning("TLS reload check failed", exc_info=True)
            return None

    s = files.settings
    return grpc.dynamic_ssl_server_credentials(config(), fetch,
                                               require_client_authentication=s.verify_clients
                                               and s.client_auth == "required")


def ssl_context(files: CertFiles, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """An SSLContext for the HTTP listeners whose certificate follows the files: the SNI callback, run at each
    handshake, hands the connection a context built from the current files. ``alpn``: the protocols offered
    (``h2`` for the gRPC transport of frontend/grpc_h2)."""
    current = [_build_context(files, alpn)]
    seen = [files.generation]

    def on_hello(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            generation = files.current()
            if generation != seen[0]:
                current[0] = _build_context(files, alpn)
                seen[0] = generation
        except Exception:
            log.warning("TLS reload failed: keeping the previous certificate", exc_info=True)
        sslobj.context = current[0]

    outer = _build_context(files, alpn)
    outer.sni_callback = on_hello
    return outer


def _build_context(files: CertFiles, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    import tempfile

    s = files.settings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as d:  # ssl loads chains from files only; the bytes are the reloaded ones
        c, k = Path(d, "c.pem"), Path(d, "k.pem")
        c.write_bytes(files.cert)
        k.touch(mode=0o600)
        k.write_bytes(files.key)
        ctx.load_cert_chain(c, k)
    if s.verify_clients and files.client_ca is not None:
        ctx.load_verify_locations(cadata=files.client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED if s.client_auth == "required" else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


__all__ = ["CertFiles", "TlsSettings", "grpc_credentials", "ssl_context"]
