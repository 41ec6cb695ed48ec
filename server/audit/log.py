"""The audit log: who changed what the server serves, when, from what to what — append-only and tamper-evident.

JSON lines in ``DIR/audit-NNNNNN.jsonl``, each record written and fsync'd before the change it records is
acknowledged (admin calls are rare; the request path never writes here). A file past ``max_bytes`` is closed
and the next one opened. Every record holds ``seq`` (counting across files), ``prev`` (the previous record's
``hash``) and its own ``hash``: the sha256 of its canonical JSON without ``hash``. The chain continues across
rotated files and across restarts (the last record is read back at open), so an edited, deleted, inserted
or reordered line breaks it; ``verify`` finds the first break.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
GENESIS = "0" * 64
PATTERN = "audit-*.jsonl"

# The caller of the admin call being served: set by the security guards (grpc_guard, http_guard) when they
# know who it is; 'anonymous' when no guard runs (loopback, no principals file). Changes made by the server
# itself (registry sync, canary policy) are recorded with principal 'server'.
caller: contextvars.ContextVar[str] = contextvars.ContextVar("skewless_audit_caller", default="anonymous")


async def as_server(coro: Any) -> Any:
    """Run ``coro`` in a task of its own whose changes (and those of the tasks it starts: registry polling)
    are recorded as made by the server itself, leaving the caller's context as it was."""

    async def run() -> Any:
        caller.set("server")
        return await coro

    return await asyncio.ensure_future(run())


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(PATTERN))


class AuditLog:
    """One directory of chained audit files; ``record`` is thread-safe and durable on return."""

    def __init__(self, directory: Path | str, max_bytes: int = 16 << 20):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.seq, self.last_hash = 0, GENESIS
        existing = files(self.dir)
        self._index = int(existing[-1].stem.split("-")[1]) if existing else 1
        for path in reversed(existing):  # resume the chain from the newest record
            lines = path.read_bytes().splitlines()
            if lines:
                last = json.loads(lines[-1])
                self.seq, self.last_hash = int(last["seq"]), str(last["hash"])
                break
        self._open()

    def _open(self) -> None:
        self.path = self.dir / f"audit-{self._index:06d}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def record(self, event: str, model: str = "", before: Any = None, after: Any = None,
               principal: str | None = None, **details: Any) -> dict[str, Any]:
        """Append one event (load, unload, swap, rollback, pin, unpin, config_override, shadow, canary, …)."""
        with self._lock:
            rec: dict[str, Any] = {
                "seq": self.seq + 1, "time": time.time(), "event": event, "model": model,
                "principal": principal if principal is not None else caller.get(),
                "before": before, "after": after,
            }
            if details:
                rec["details"] = details
            rec["prev"] = self.last_hash
            rec["hash"] = record_hash(rec)
            line = (json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str) + "\n").encode()
            if os.fstat(self._fd).st_size and os.fstat(self._fd).st_size + len(line) > self.max_bytes:
                os.close(self._fd)
                self._index += 1
                self._open()
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.seq, self.last_hash = rec["seq"], rec["hash"]
        return rec

    def status(self) -> dict[str, Any]:
        """Where the log is and the chain's head (any thread)."""
        with self._lock:
            return {"directory": str(self.dir), "records": self.seq, "current_file": str(self.path),
                    "head_hash": self.last_hash}

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


@dataclass
class Break:
    """Where the chain first fails: the file, its 1-based line and why."""

    path: Path
    line: int
    why: str


def read(directory: Path | str) -> Iterator[tuple[Path, int, str]]:
    for path in files(Path(directory)):
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                yield path, n, line.rstrip("\n")


def verify(directory: Path | str) -> tuple[int, Break | None]:
    """Check every record's hash, its link to the one before and the sequence: (records checked, first break)."""
    prev, seq, count = GENESIS, 0, 0
    for path, n, line in read(directory):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return count, Break(path, n, f"not a JSON record: {exc}")
        if rec.get("hash") != record_hash(rec):
            return count, Break(path, n, f"record seq {rec.get('seq')} was altered (its hash does not match)")
        if rec.get("seq") != seq + 1:
            return count, Break(path, n, f"expected record seq {seq + 1}, found {rec.get('seq')}: records "
                                         "missing or reordered")
        if rec.get("prev") != prev:
            return count, Break(path, n, f"record seq {rec['seq']} does not follow the previous record "
                                         "(prev hash mismatch): a record before it was removed or changed")
        prev, seq, count = rec["hash"], rec["seq"], count + 1
    return count, None


# -- the process's log: None unless --audit-log; record() is then a no-op -----------------------------------
_current: AuditLog | None = None


def install(audit: AuditLog | None) -> None:
    global _current
    _current = audit


def record(event: str, model: str = "", before: Any = None, after: Any = None, principal: str | None = None,
           **details: Any) -> None:
    """Record an event in the server's audit log, if it keeps one. A failing write is logged loudly, never
    raised: the change it describes has already happened."""
    audit = _current
    if audit is None:
        return
    try:
        audit.record(event, model, before, after, principal, **details)
    except Exception:
        log.exception("AUDIT LOG WRITE FAILED for %s of '%s'", event, model)
