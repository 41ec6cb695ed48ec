"""``skewless serve``'s security flags: TLS on all three ports, who the callers are and how often they may call.

Light on purpose: the TLS and principals modules are imported only to check the files given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import ErrorFn

if TYPE_CHECKING:
    from .tls import TlsSettings


@dataclass
class SecuritySettings:
    tls: TlsSettings | None = None  # TLS (and mTLS with a client CA) on all three ports
    auth_principals: Path | None = None  # bearer tokens / certificate names and their groups
    rate_limit: float | None = None  # requests per second per principal (per address when anonymous)
    allow_client_shm: bool = False  # clients may register shared-memory regions (Triton's flag and default)

    @staticmethod
    def add_arguments(group: argparse._ActionsContainer) -> None:
        group.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (re-read when the file changes)")
        group.add_argument("--tls-key", metavar="PEM", help="server private key")
        group.add_argument("--tls-client-ca", metavar="PEM",
                           help="CA bundle that client certificates must chain to (mTLS)")
        group.add_argument("--tls-client-auth", choices=["required", "optional"], default="required",
                           help="with --tls-client-ca: refuse clients without a certificate, or only verify those "
                                "that send one")
        group.add_argument("--auth-principals", metavar="FILE",
                           help="principals, their groups (inference, metadata, admin) and credentials (bearer "
                                "token, its sha256, or 'cert'); without it admin requests are accepted from "
                                "loopback only")
        group.add_argument("--rate-limit", type=float, metavar="RPS",
                           help="requests per second per principal (per address for anonymous callers)")
        group.add_argument("--allow-client-shm", action="store_true",
                           help="let clients register system (and CUDA) shared-memory regions for inputs and "
                                "outputs, as Triton's flag of the same name: a caller can then map any shared-memory "
                                "object the server's user can open, so only for trusted, co-located clients")

    @classmethod
    def from_args(cls, args: argparse.Namespace, error: ErrorFn) -> SecuritySettings:
        if args.rate_limit is not None and args.rate_limit <= 0:
            error("--rate-limit must be a positive number of requests per second")
        if args.auth_principals:
            from .principals import parse

            try:
                parse(Path(args.auth_principals).read_text(), args.auth_principals)
            except (OSError, ValueError) as exc:
                error(f"--auth-principals: {exc}")
        return cls(_tls(args, error), Path(args.auth_principals) if args.auth_principals else None, args.rate_limit,
                   args.allow_client_shm)


def _tls(args: argparse.Namespace, error: ErrorFn) -> TlsSettings | None:
    """The TLS files, checked: unreadable or mismatched PEM files are said here rather than as a traceback from
    the server."""
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        error("--tls-cert and --tls-key go together (a client CA needs the server's own certificate too)")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--tls-client-ca", args.tls_client_ca)):
        if path and not Path(path).is_file():
            error(f"{flag} {path}: no such file")
    from .tls import CertFiles, TlsSettings, ssl_context

    settings = TlsSettings(Path(args.tls_cert), Path(args.tls_key),
                           Path(args.tls_client_ca) if args.tls_client_ca else None,
                           args.tls_client_auth if args.tls_client_ca else "none")
    try:
        ssl_context(CertFiles(settings))
    except Exception as exc:
        error(f"cannot use the TLS files: {exc}")
    return settings
