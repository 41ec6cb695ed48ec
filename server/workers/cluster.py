"""A worker's side of ``--workers N``: the one view a client gets whichever worker answers it.

Every worker listens on a unix socket in the directory its parent made (``peer-<index>.sock``). Control calls
(model load/unload, the skewless.v1 admin and traffic RPCs) run locally and are then sent to every other worker;
ModelStatistics and /metrics ask every other worker for its own and sum. Readiness is a byte per worker in a
file the parent made (``ready``), read without any call. Only these control-plane calls cross processes:
inference requests never do.

Wire format on the peer socket (one call per connection): a request frame ``key NUL body`` and a reply frame
``status body``, each prefixed by its length (4 bytes, big-endian); status 0 is success (body: the serialized
reply), 1 failure (body: JSON ``{"code": gRPC status name, "message": ...}``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import mmap
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory

from skewless.protos import grpc_service_pb2 as pb

from ..dataplane import LOAD_KEY, SHM_KEYS, UNLOAD_KEY
from ..errors import SkewlessError
from ..peers import PeerFailure
from .merge import merge_prometheus, sum_statistics

log = logging.getLogger(__name__)

ENV_DIR = "SKEWLESS_WORKER_DIR"
ENV_INDEX = "SKEWLESS_WORKER_INDEX"
ENV_COUNT = "SKEWLESS_WORKERS"
ENV_RESTARTED = "SKEWLESS_WORKER_RESTARTED"
READY_FILE = "ready"
CALL_TIMEOUT_S = 300.0  # a peer's model load can take as long as the local one did
METRICS_KEY = "metrics"
READY_MODELS_KEY = "ready-models"
STATISTICS_KEY = "dataplane/statistics"  # a worker's own statistics, for the summed view
LOAD_REQUEST_KEY = "dataplane/load_request"  # the load request that reproduces a model as it serves there


def peer_socket(directory: Path, index: int) -> Path:
    return directory / f"peer-{index}.sock"


@dataclass(frozen=True)
class WorkerPlace:
    """Where this worker stands among its siblings (from the environment its parent set)."""
    directory: Path
    index: int
    count: int
    restarted: bool = False

    @classmethod
    def from_env(cls) -> WorkerPlace | None:
        if not os.environ.get(ENV_DIR):
            return None
        return cls(Path(os.environ[ENV_DIR]), int(os.environ[ENV_INDEX]), int(os.environ[ENV_COUNT]),
                   os.environ.get(ENV_RESTARTED) == "1")


class ReadyFlags:
    """One byte per worker in a file shared by all of them: 1 while that worker serves."""

    def __init__(self, path: Path, count: int):
        self._file = open(path, "r+b")  # noqa: SIM115 - mapped for the process's lifetime
        self._map = mmap.mmap(self._file.fileno(), count)
        self.count = count

    @staticmethod
    def create(path: Path, count: int) -> ReadyFlags:
        path.write_bytes(bytes(count))
        return ReadyFlags(path, count)

    def set(self, index: int, ready: bool) -> None:
        self._map[index] = 1 if ready else 0

    def all(self) -> bool:
        return self._map[:self.count] == b"\x01" * self.count


class _LocalContext:
    """Stands in for a gRPC context when a peer's forwarded call runs a servicer method here."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise PeerFailure(code.name, details)

    def invocation_metadata(self) -> tuple:
        return ()

    def peer(self) -> str:
        return "unix:peer"


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(size)


def _error_of(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, PeerFailure):
        return exc.code, exc.message
    if isinstance(exc, SkewlessError):
        return exc.kind, str(exc)
    return "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"


Handler = Callable[[bytes], Awaitable[bytes]]


class Cluster:
    """This worker's link to its siblings: the ``Peers`` (server/peers.py) the data plane and the control
    servicers are built with, and the server of its siblings' forwarded calls."""

    def __init__(self, place: WorkerPlace):
        self.place = place
        self.flags = ReadyFlags(place.directory / READY_FILE, place.count)
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None

    @property
    def index(self) -> int:
        return self.place.index

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.place.count) if i != self.place.index]

    # -- serving peers -------------------------------------------------------------------------------------
    async def start(self) -> None:
        path = peer_socket(self.place.directory, self.place.index)
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, str(path))

    def set_ready(self, ready: bool) -> None:
        self.flags.set(self.place.index, ready)

    async def stop(self) -> None:
        self.set_ready(False)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            key, _, body = (await _read_frame(reader)).partition(b"\0")
            handler = self._handlers.get(key.decode())
            try:
                if handler is None:
                    raise PeerFailure("UNIMPLEMENTED", f"no peer call {key.decode()!r}")
                reply = b"\0" + await handler(body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code, message = _error_of(exc)
                reply = b"\1" + json.dumps({"code": code, "message": message}).encode()
            writer.write(_frame(reply))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    # -- calling peers ---------------------------------------------------------------------------------------
    async def call(self, index: int, key: str, body: bytes = b"") -> bytes:
        """One peer's answer; PeerFailure with its status when it failed, ConnectionError when it is down."""
        path = peer_socket(self.place.directory, index)
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(_frame(key.encode() + b"\0" + body))
                await writer.drain()
                reply = await _read_frame(reader)
            finally:
                writer.close()
        if reply[:1] == b"\0":
            return reply[1:]
        err = json.loads(reply[1:])
        raise PeerFailure(err["code"], f"worker {index}: {err['message']}")

    async def gather(self, key: str, body: bytes = b"") -> dict[int, bytes]:
        """Every reachable peer's answer by its index (a worker being restarted has nothing to add)."""
        results = await asyncio.gather(*(self.call(i, key, body) for i in self.peers), return_exceptions=True)
        out = {}
        for index, result in zip(self.peers, results, strict=True):
            if isinstance(result, (ConnectionError, FileNotFoundError)):
                log.warning("worker %d unreachable for %s: %s", index, key, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                out[index] = result
        return out

    # -- Peers (server/peers.py) ---------------------------------------------------------------------------
    def all_ready(self) -> bool:
        return self.flags.all()

    async def apply(self, key: str, request) -> None:
        await self.gather(key, request.SerializeToString())

    async def statistics(self, request: pb.ModelStatisticsRequest,
                         own: pb.ModelStatisticsResponse) -> pb.ModelStatisticsResponse:
        others = await self.gather(STATISTICS_KEY, request.SerializeToString())
        return sum_statistics([own, *(pb.ModelStatisticsResponse.FromString(b) for b in others.values())])

    # -- what siblings' forwarded calls run here ------------------------------------------------------------
    def serve_servicer(self, servicer: Any, service: Any) -> None:
        """Serve the siblings' forwarded calls of ``servicer``'s control RPCs marked ``@everywhere`` with their
        local part."""
        for name, method in service.methods_by_name.items():
            marked = getattr(type(servicer), name, None)
            if getattr(marked, "local", None) is None:
                continue
            request_class = message_factory.GetMessageClass(method.input_type)
            self._handlers[marked.key] = self._runner(functools.partial(marked.local, servicer), request_class)

    @staticmethod
    def _runner(local, request_class) -> Handler:
        async def run(body: bytes) -> bytes:
            return (await local(request_class.FromString(body), _LocalContext())).SerializeToString()
        return run

    def serve_dataplane(self, dataplane: Any) -> None:
        """Serve the siblings' model load/unload (gRPC and REST alike), statistics and ready-model calls."""
        for key, local, request_class in ((LOAD_KEY, dataplane.repository_load_here, pb.RepositoryModelLoadRequest),
                                          (UNLOAD_KEY, dataplane.repository_unload_here,
                                           pb.RepositoryModelUnloadRequest)):
            async def run(body: bytes, local=local, request_class=request_class) -> bytes:
                return (await local(request_class.FromString(body))).SerializeToString()

            self._handlers[key] = run
        for key, method, request_class in SHM_KEYS:  # shared-memory registrations (shm/)
            async def run_shm(body: bytes, method=method, request_class=request_class) -> bytes:
                return getattr(dataplane.shm, method)(request_class.FromString(body)).SerializeToString()

            self._handlers[key] = run_shm
        self._local_load = self._handlers[LOAD_KEY]
        self._local_unload = self._handlers[UNLOAD_KEY]

        async def own_statistics(body: bytes) -> bytes:
            return dataplane.statistics(pb.ModelStatisticsRequest.FromString(body)).SerializeToString()

        self._handlers[STATISTICS_KEY] = own_statistics

        async def ready_models(_body: bytes) -> bytes:
            return json.dumps(sorted({n for n, _, state, _ in dataplane.repository.index(True)
                                      if state == "READY"})).encode()

        self._handlers[READY_MODELS_KEY] = ready_models

        async def load_request(body: bytes) -> bytes:
            return dataplane.load_request(body.decode()).SerializeToString()

        self._handlers[LOAD_REQUEST_KEY] = load_request
        self._dataplane = dataplane

    async def catch_up(self) -> None:
        """A restarted worker under explicit model control loads what its siblings serve and unloads what they
        do not, so that load/unload calls it missed while down still hold."""
        repo = self._dataplane.repository
        if getattr(repo, "control_mode", None) != "explicit":
            return
        for index in self.peers:
            try:
                wanted = set(json.loads(await self.call(index, READY_MODELS_KEY)))
            except (ConnectionError, FileNotFoundError, PeerFailure):
                continue
            mine = {n for n, _, state, _ in repo.index(True) if state == "READY"}
            loaded = []
            for name in sorted(wanted):
                try:  # as it serves there: a config override or override files (a load call) included
                    body = await self.call(index, LOAD_REQUEST_KEY, name.encode())
                except (ConnectionError, FileNotFoundError, PeerFailure):
                    body = pb.RepositoryModelLoadRequest(model_name=name).SerializeToString()
                if name not in mine or pb.RepositoryModelLoadRequest.FromString(body).parameters:
                    try:
                        await self._local_load(body)
                    except Exception as exc:  # the others still load; the index shows this one's reason
                        log.error("catching up with worker %d: loading '%s' failed: %s", index, name, exc)
                        continue
                    loaded.append(name)
            for name in sorted(mine - wanted):
                await self._local_unload(pb.RepositoryModelUnloadRequest(model_name=name).SerializeToString())
            log.info("caught up with worker %d: loaded %s, unloaded %s", index, loaded, sorted(mine - wanted))
            return

    def metrics_route(self, local: Callable[[], tuple[int, str, bytes]]):
        """/metrics over all workers: this worker's page merged with every peer's."""
        async def page(_body: bytes) -> bytes:
            return local()[2]

        self._handlers[METRICS_KEY] = page

        async def route() -> tuple[int, str, bytes]:
            status, ctype, body = local()
            pages = {self.place.index: body, **await self.gather(METRICS_KEY)}
            return status, ctype, merge_prometheus(pages)
        return route


__all__ = ["Cluster", "ReadyFlags", "WorkerPlace", "peer_socket"]
