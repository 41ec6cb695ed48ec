"""Who may call: principals from a file of bearer tokens (or their hashes) and client-certificate names.

One line per principal, ``#`` comments, re-read when the file changes (checked at most once a second), so
adding or revoking a caller needs no restart::

    # principal   groups                     credential
    scorer        inference                  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    dashboard     metadata                   token:plain-text-secret
    deployer      inference,metadata,admin   cert            # mTLS: the client certificate's subject CN

Groups are ``inference``, ``metadata`` and ``admin`` (or ``*`` for all). Tokens are kept only as SHA-256
digests and a presented token is compared against every entry with ``hmac.compare_digest``, so neither the
comparison nor the position of a match shows in the time taken. A file that cannot be parsed on reload is
logged and the previous principals stay in force (a typo must not lock everyone out or let everyone in).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GROUPS = frozenset({"inference", "metadata", "admin"})
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Principal:
    name: str
    groups: frozenset[str]


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse(text: str, where: str = "principals file") -> tuple[list[tuple[bytes, Principal]], dict[str, Principal]]:
    """(token digests, certificate names) from the file's text; ValueError says which line is wrong and why."""
    tokens: list[tuple[bytes, Principal]] = []
    certs: dict[str, Principal] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{where} line {n}: expected 'PRINCIPAL GROUPS CREDENTIAL', got {len(parts)} fields")
        name, groups_text, credential = parts
        groups = frozenset(GROUPS if groups_text == "*" else groups_text.split(","))
        unknown = groups - GROUPS
        if unknown:
            raise ValueError(f"{where} line {n}: unknown group(s) {', '.join(sorted(unknown))}; "
                             f"expected {', '.join(sorted(GROUPS))} or *")
        principal = Principal(name, groups)
        if credential == "cert":
            certs[name] = principal
        elif credential.startswith("sha256:"):
            hexdigest = credential[len("sha256:"):]
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ValueError(f"{where} line {n}: sha256: needs 64 hex digits")
            tokens.append((digest, principal))
        elif credential.startswith("token:") and len(credential) > len("token:"):
            tokens.append((token_digest(credential[len("token:"):]), principal))
        else:
            raise ValueError(f"{where} line {n}: credential must be token:SECRET, sha256:HEX or cert")
    return tokens, certs


class Principals:
    """The principals file, re-read on change; ``by_token`` and ``by_cert`` name the caller or return None."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._tokens, self._certs = parse(path.read_text(), str(path))  # a bad file fails the start
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self.reload_failures = 0

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + CHECK_INTERVAL_S
            stamp = self._stat()
            if stamp == self._stamp:
                return
            try:
                self._tokens, self._certs = parse(self.path.read_text(), str(self.path))
            except (OSError, ValueError) as exc:
                self.reload_failures += 1
                log.warning("principals file changed but cannot be used (%s): the previous principals stay", exc)
            else:
                log.info("principals reloaded from %s", self.path)
            self._stamp = stamp

    def by_token(self, token: str) -> Principal | None:
        self._refresh()
        digest = token_digest(token)
        found = None
        for candidate, principal in self._tokens:  # every entry, whatever matches: no early exit
            if hmac.compare_digest(candidate, digest):
                found = principal
        return found

    def by_cert(self, common_name: str) -> Principal | None:
        self._refresh()
        return self._certs.get(common_name)


__all__ = ["GROUPS", "Principal", "Principals", "parse", "token_digest"]
