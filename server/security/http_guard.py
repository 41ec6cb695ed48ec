"""The guard on the HTTP listeners (REST and the metrics port): the request's credentials, then Guard.check."""

from __future__ import annotations

from typing import Any

from ..audit.log import caller as audit_caller
from .guard import Guard, bearer_of, http_group
from .principals import Principal


def cert_common_name(transport: Any) -> str | None:
    """The verified client certificate's subject CN on a TLS connection (None without one)."""
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def check_http(guard: Guard, method: str, path: str, authorization: str | None, transport: Any,
               peer_host: str | None) -> Principal | None:
    """Raise the domain error that refuses this request, or return its caller (None: anonymous)."""
    principal = guard.check(http_group(method, path), bearer_of(authorization), cert_common_name(transport),
                            peer_host)
    audit_caller.set(principal.name if principal is not None else f"anonymous@{peer_host}")
    return principal


__all__ = ["cert_common_name", "check_http"]
