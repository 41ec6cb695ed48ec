"""``skewless audit DIR``: query the audit log (time range, model, event, principal) or ``--verify`` its chain."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from .log import read, verify


def _time(text: str) -> float:
    """Seconds since the epoch, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither epoch seconds nor an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _run(args: argparse.Namespace) -> int:
    if args.verify:
        count, brk = verify(args.dir)
        if brk is not None:
            print(f"audit chain BROKEN at {brk.path}:{brk.line}: {brk.why} ({count} records verified before it)")
            return 1
        if count == 0:
            print(f"no audit records under {args.dir}")
            return 2
        print(f"audit chain intact: {count} records")
        return 0
    for _path, _n, line in read(args.dir):
        try:
            rec: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        t = rec.get("time", 0)
        if (args.since is not None and t < args.since or args.until is not None and t >= args.until
                or args.model and rec.get("model") != args.model or args.event and rec.get("event") not in args.event
                or args.principal and rec.get("principal") != args.principal):
            continue
        if args.json:
            print(line)
        else:
            when = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
            print(f"{when} {rec.get('event'):<16} {rec.get('model') or '-':<20} by {rec.get('principal')}: "
                  f"{json.dumps(rec.get('before'))} -> {json.dumps(rec.get('after'))}"
                  + (f" {json.dumps(rec['details'])}" if rec.get("details") else ""))
    sys.stdout.flush()
    return 0


def register(subparsers: Any) -> None:
    """Add ``audit`` to the ``skewless`` argparse subparsers."""
    p = subparsers.add_parser("audit", help="query the server's audit log (--audit-log DIR) or verify its chain")
    p.add_argument("dir", help="the audit log directory (the server's --audit-log)")
    p.add_argument("--verify", action="store_true",
                   help="check the hash chain; exit 1 naming the first altered, missing or reordered record")
    p.add_argument("--since", type=_time, help="records at or after this time (epoch seconds or ISO 8601)")
    p.add_argument("--until", type=_time, help="records before this time")
    p.add_argument("--model", help="only this model's records")
    p.add_argument("--event", action="append", help="only these events (load, unload, swap, rollback, unpin, "
                                                    "config_override, shadow, canary, canary_promote, "
                                                    "canary_rollback); repeatable")
    p.add_argument("--principal", help="only changes made by this principal")
    p.add_argument("--json", action="store_true", help="print the matching records as JSON lines")
    p.set_defaults(func=_run)
