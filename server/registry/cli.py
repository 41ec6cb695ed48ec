"""``skewless publish``, ``skewless rollback`` and ``skewless unpin``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _publish(args: argparse.Namespace) -> int:
    from .publish import PublishError, publish
    from .redact import describe_error

    try:
        done = publish(Path(args.model_dir), args.url, args.version, args.name, args.force)
    except PublishError as exc:
        print(f"skewless publish: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store refused or could not be reached: say so without credentials
        print(f"skewless publish: upload failed: {describe_error(exc)}", file=sys.stderr)
        return 1
    print(f"published '{done.model}' version {done.version}: {done.files} files, {done.bytes} bytes; "
          f"manifest {done.manifest_url}")
    return 0


def _admin(args: argparse.Namespace) -> int:
    import grpc

    from skewless.protos import skewless_admin_pb2 as pb
    from skewless.protos import skewless_admin_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.url) as channel:
        stub = pb_grpc.RegistryAdminStub(channel)
        try:
            if args.command == "rollback":
                r = stub.Rollback(pb.RollbackRequest(model=args.model, version=args.to or 0), timeout=args.timeout)
                print(f"'{args.model}': serving versions {list(r.serving)} (was {list(r.previous)}); pinned "
                      f"until `skewless unpin {args.model}`")
            else:
                r = stub.Unpin(pb.UnpinRequest(model=args.model), timeout=args.timeout)
                print(f"'{args.model}': following the registry again; serving versions {list(r.serving)}")
        except grpc.RpcError as exc:
            print(f"skewless {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="upload a model version to a registry URL, its sha256 manifest last")
    p.add_argument("model_dir", help="a Triton model directory (config.pbtxt optional, 1/, 2/, …)")
    p.add_argument("url", help="the repository root: s3://bucket/prefix, gs://…, file://…, or a local path")
    p.add_argument("--version", type=int, default=None, help="version to publish (default: the highest)")
    p.add_argument("--name", default=None, help="model name in the registry (default: the directory's name)")
    p.add_argument("--force", action="store_true", help="overwrite a version that is already published")
    p.set_defaults(func=_publish)

    for command, help_text in (
        ("rollback", "serve an earlier cached version of a model at once, pinned until `skewless unpin`"),
        ("unpin", "let a rolled-back model follow the registry again"),
    ):
        a = sub.add_parser(command, help=help_text)
        a.add_argument("model")
        if command == "rollback":
            a.add_argument("--to", type=int, default=None, metavar="VERSION",
                           help="version to serve (default: the one served before the current)")
        a.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
        a.add_argument("--timeout", type=float, default=60.0)
        a.set_defaults(func=_admin)
