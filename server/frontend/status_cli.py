"""``skewless status [MODULE] [--url URL]``: print a running server's side-module status snapshots (JSON)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def _status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/v2/status" + (f"/{args.module}" if args.module else "")
    req = urllib.request.Request(url)
    token = args.token or os.environ.get("SKEWLESS_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"skewless status: {url} answered {exc.code}: {exc.read().decode(errors='replace').strip()}",
              file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"skewless status: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="print a running server's status snapshots: prediction log, labels, "
                                      "registry, alerts, audit, fallback, shadow/canary, drift")
    p.add_argument("module", nargs="?", help="one module (lineage, registry, alerts, audit, fallback, traffic, "
                                             "drift); all when left out")
    p.add_argument("--url", default="http://127.0.0.1:8002",
                   help="the server's metrics/health port (default: %(default)s)")
    p.add_argument("--token", help="bearer token of an admin principal (default: $SKEWLESS_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.set_defaults(func=_status)


__all__ = ["register"]
