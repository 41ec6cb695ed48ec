"""The sibling workers of ``--workers N`` as the data plane and the control servicers see them.

``Peers`` is what the data plane and the admin/traffic servicers are built with (None: a single process);
workers/cluster.py implements it. Control calls marked ``@everywhere`` run here and then on every sibling;
the cluster serves the siblings' forwarded calls with the same methods' local part (``.local``).
Inference never crosses processes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from .errors import SkewlessError


class PeerFailure(Exception):
    """A sibling refused or failed a forwarded call: its gRPC status name and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Peers(Protocol):
    """This worker's siblings."""

    index: int  # this worker's own index

    def all_ready(self) -> bool:
        """Every worker is ready (read without a call)."""

    async def apply(self, key: str, request: Message) -> None:
        """Run the control call ``key`` on every reachable sibling; PeerFailure when one failed."""

    async def statistics(self, request: Message, own: Message) -> Message:
        """ModelStatistics: this worker's own (``own``) summed with every reachable sibling's own."""


def peer_error(code: str, message: str) -> SkewlessError:
    """A sibling's failure as the domain error the transports turn into its status code."""
    err = SkewlessError(message)
    err.kind = code
    return err


def everywhere(service: str) -> Callable:
    """Decorates a control RPC of ``service`` on a servicer that has ``peers`` (Peers or None): the call runs
    here, then on every sibling; a sibling's failure aborts the call with its status, saying it was applied
    here. The undecorated method stays reachable as ``.local`` (what a sibling's forwarded call runs), its
    peer key as ``.key``."""

    def decorate(method: Callable[[Any, Any, Any], Awaitable[Message]]) -> Callable:
        key = f"{service}/{method.__name__}"

        @functools.wraps(method)
        async def run(self, request, context):
            reply = await method(self, request, context)
            peers = self.peers
            if peers is not None:
                try:
                    await peers.apply(key, request)
                except PeerFailure as exc:
                    await context.abort(grpc.StatusCode[exc.code],
                                        f"applied on worker {peers.index}, not on all: {exc.message}")
            return reply

        run.local = method
        run.key = key
        return run

    return decorate


__all__ = ["PeerFailure", "Peers", "everywhere", "peer_error"]
