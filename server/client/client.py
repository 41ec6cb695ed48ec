"""``FeatureClient``: score a table of raw rows on a feature-spec model over gRPC or HTTP (tritonclient),
and submit the delayed labels of those rows."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from .columns import Column, encode_column
from .errors import ClientError, MissingValuesRefused, require
from .events import IngestReceipt, ingest_grpc, ingest_http
from .labels import LabelReceipt, normalize, submit_grpc, submit_http
from .results import Prediction, concat_outputs
from .schema import ModelSchema
from .tables import column, column_names, row_count
from .wire import WireTensor, grpc_inputs, http_inputs, request_tensors

SPEC_HASH_PARAM = "skewless.feature_spec_hash"  # the reply parameter naming the spec that served it
PROTOCOLS = ("grpc", "http")


class FeatureClient:
    """A client for one server. ``url`` is ``host:port`` (tritonclient's form); ``protocol`` "grpc" or "http".

    ``max_rows`` splits a table into requests of at most that many rows (None: the model's max_batch_size
    from ModelConfig, or one request when it has none);
    ``concurrency`` bounds the requests in flight (a thread pool; HTTP gets one connection per thread).
    ``timeout_s`` bounds each call. Other keyword arguments go to tritonclient's InferenceServerClient
    (``ssl``, ``root_certificates``, ...). Model metadata is fetched once per (model, version) and cached.
    """

    def __init__(self, url: str, protocol: str = "grpc", *, max_rows: int | None = None, concurrency: int = 1,
                 timeout_s: float | None = 60.0, **client_kwargs: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        _check_sizes(max_rows, concurrency)
        self.url = url
        self.protocol = protocol
        self.max_rows = max_rows
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._kwargs = client_kwargs
        self._module = require(f"tritonclient.{protocol}")
        self._schemas: dict[tuple[str, str], ModelSchema] = {}
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._channel: Any = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _client(self) -> Any:
        """gRPC: one client shared by every thread (its channel is thread-safe). HTTP: one per thread, since
        tritonclient.http's connection pool belongs to the thread (gevent) that made it."""
        if self.protocol == "grpc" and self._clients:
            return self._clients[0]
        c = getattr(self._local, "client", None)
        if c is None:
            kwargs = dict(self._kwargs)
            if self.protocol == "http" and self.timeout_s is not None:
                kwargs.setdefault("network_timeout", self.timeout_s)
                kwargs.setdefault("connection_timeout", self.timeout_s)
            with self._lock:
                if self.protocol == "grpc" and self._clients:
                    return self._clients[0]
                c = self._module.InferenceServerClient(self.url, **kwargs)
                self._clients.append(c)
            self._local.client = c
        return c

    # -- model description ----------------------------------------------------------------------------------
    def schema(self, model: str, version: str = "") -> ModelSchema:
        """The model's raw inputs and outputs (ModelMetadata) and max_batch_size (ModelConfig), fetched once.
        Raises NotAFeatureModel."""
        key = (model, version)
        cached = self._schemas.get(key)
        if cached is None:
            c = self._client()
            if self.protocol == "grpc":
                doc = c.get_model_metadata(model, version, as_json=True, client_timeout=self.timeout_s)
                config = c.get_model_config(model, version, as_json=True, client_timeout=self.timeout_s)
                config = config.get("config", {})
            else:
                doc = c.get_model_metadata(model, version)
                config = c.get_model_config(model, version)
            cached = ModelSchema.from_metadata(doc, int(config.get("max_batch_size", 0) or 0))
            self._schemas[key] = cached
        return cached

    def forget(self, model: str | None = None) -> None:
        """Drop cached model descriptions (all, or one model's), e.g. after the model was reloaded."""
        for key in [k for k in self._schemas if model is None or k[0] == model]:
            del self._schemas[key]

    def encode(self, model: str, table: Any, version: str = "") -> tuple[ModelSchema, dict[str, Column]]:
        """Check and convert every raw column of ``table`` once, before anything is sent."""
        schema = self.schema(model, version)
        row_count(table)  # rejects what is not a table, and columns of unequal length
        columns = {}
        for raw in schema.inputs:
            col = encode_column(column(table, raw.name, model), raw)
            if col.mask is not None and raw.companion is None:
                raise MissingValuesRefused(
                    f"column '{raw.name}' has {int(col.mask.sum())} missing value(s), but model '{model}' "
                    f"offers no '{raw.name}__missing' input to mark them (the server predates missing-value "
                    "support): fill them, or upgrade the server")
            columns[raw.name] = col
        return schema, columns

    def encode_events(self, model: str, table: Any, version: str = "") -> tuple[ModelSchema, dict[str, Column]]:
        """As ``encode``, for the raw columns the table has (events carry any subset of the raw inputs)."""
        schema = self.schema(model, version)
        row_count(table)
        have = set(column_names(table))
        picked = [raw for raw in schema.inputs if raw.name in have]
        if not picked:
            raise ClientError(f"the table has none of model '{model}' raw inputs "
                              f"({', '.join(r.name for r in schema.inputs)})")
        columns = {raw.name: encode_column(column(table, raw.name, model), raw) for raw in picked}
        return schema, columns

    def request_tensors(self, model: str, table: Any, version: str = "") -> list[WireTensor]:
        """The inputs one request for the whole table would carry (for inspection and tests)."""
        schema, columns = self.encode(model, table, version)
        return request_tensors(schema.inputs, columns, 0, row_count(table))

    # -- inference ------------------------------------------------------------------------------------------
    def predict(self, model: str, table: Any, *, version: str = "", max_rows: int | None = None,
                concurrency: int | None = None, request_id: str = "", parameters: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, outputs: Sequence[str] | None = None) -> Prediction:
        """Score every row of ``table``; outputs come back in the table's row order.

        With more rows than ``max_rows``, request i carries rows [i*max_rows, (i+1)*max_rows) and gets the id
        ``f"{request_id}-{i}"`` when ``request_id`` is given (else the server assigns one); the ids are in
        ``Prediction.request_ids`` for ``submit_labels``."""
        max_rows = self.max_rows if max_rows is None else max_rows
        concurrency = self.concurrency if concurrency is None else concurrency
        _check_sizes(max_rows, concurrency)
        schema, columns = self.encode(model, table, version)
        max_rows = max_rows or schema.max_batch_size or None
        n = row_count(table)
        if n == 0:
            raise ClientError("the table has no rows")
        step = max_rows or n
        spans = [(a, min(a + step, n)) for a in range(0, n, step)]
        names = list(outputs) if outputs is not None else [o.name for o in schema.outputs]
        ids = [request_id if len(spans) == 1 or not request_id else f"{request_id}-{i}" for i in range(len(spans))]

        def send(i: int) -> tuple[dict[str, np.ndarray], str, str, str | None]:
            a, b = spans[i]
            return self._infer(model, version, request_tensors(schema.inputs, columns, a, b), names, ids[i],
                               parameters, headers)

        if concurrency == 1 or len(spans) == 1:
            replies = [send(i) for i in range(len(spans))]
        else:
            replies = self._run_bounded(send, len(spans), concurrency)
        spec_hashes = {r[3] for r in replies}
        return Prediction(concat_outputs([r[0] for r in replies]), [r[1] for r in replies], spans,
                          model_version=replies[-1][2],
                          feature_spec_hash=spec_hashes.pop() if len(spec_hashes) == 1 else None,
                          parameters=dict(parameters or {}))

    def _run_bounded(self, send: Any, count: int, concurrency: int) -> list:
        """Run send(0..count-1) on the pool with at most ``concurrency`` in flight; results by index."""
        if self._pool is None or self._pool_size < concurrency:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="skewless-client")
            self._pool_size = concurrency
        results: list = [None] * count
        running: dict[Future, int] = {}
        nxt = 0
        try:
            while nxt < count or running:
                while nxt < count and len(running) < concurrency:
                    running[self._pool.submit(send, nxt)] = nxt
                    nxt += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[running.pop(fut)] = fut.result()
        finally:
            for fut in running:
                fut.cancel()
            wait(running)
        return results

    def _infer(self, model: str, version: str, tensors: list[WireTensor], names: list[str], request_id: str,
               parameters: Mapping[str, Any] | None,
               headers: Mapping[str, str] | None) -> tuple[dict[str, np.ndarray], str, str, str | None]:
        c = self._client()
        m = self._module
        kw: dict[str, Any] = {"model_version": version, "request_id": request_id, "headers": dict(headers or {}),
                              "parameters": dict(parameters) if parameters else None}
        if self.protocol == "grpc":
            result = c.infer(model, grpc_inputs(tensors), outputs=[m.InferRequestedOutput(o) for o in names],
                             client_timeout=self.timeout_s, **kw)
            resp = result.get_response()
            spec = resp.parameters[SPEC_HASH_PARAM].string_param if SPEC_HASH_PARAM in resp.parameters else None
            rid, got_version = resp.id, resp.model_version
        else:
            result = c.infer(model, http_inputs(tensors),
                             outputs=[m.InferRequestedOutput(o, binary_data=True) for o in names], **kw)
            resp = result.get_response()
            spec = resp.get("parameters", {}).get(SPEC_HASH_PARAM)
            rid, got_version = resp.get("id", ""), str(resp.get("model_version", ""))
        return {o: result.as_numpy(o) for o in names}, rid or request_id, got_version, spec

    # -- events -------------------------------------------------------------------------------------------
    def ingest(self, model: str, table: Any, *, version: str = "", max_rows: int | None = None,
               concurrency: int | None = None, request_id: str = "") -> IngestReceipt:
        """Record the rows of ``table`` as events of ``model``'s windowed aggregates without scoring them.

        The table holds any subset of the model's raw inputs (each aggregate group whose keys and time are
        present records the rows); rows are sent in requests of ``max_rows`` (default: the whole table, which
        the server takes without the ``max_batch_size`` bound). Requests of one call run one after the other
        unless ``concurrency`` > 1: the server records each request atomically, in the order it receives them.
        """
        max_rows = self.max_rows if max_rows is None else max_rows
        concurrency = self.concurrency if concurrency is None else concurrency
        _check_sizes(max_rows, concurrency)
        schema, columns = self.encode_events(model, table, version)
        n = row_count(table)
        if n == 0:
            raise ClientError("the table has no rows")
        step = max_rows or n
        spans = [(a, min(a + step, n)) for a in range(0, n, step)]
        inputs = [raw for raw in schema.inputs if raw.name in columns]

        def send(i: int) -> IngestReceipt:
            a, b = spans[i]
            tensors = request_tensors(inputs, columns, a, b)
            rid = request_id if len(spans) == 1 or not request_id else f"{request_id}-{i}"
            if self.protocol == "grpc":
                return ingest_grpc(self._feedback_channel(), model, version, tensors, rid, self.timeout_s)
            scheme = "https" if self._kwargs.get("ssl") else "http"
            return ingest_http(f"{scheme}://{self.url}", model, version, tensors, rid, self.timeout_s,
                               self._kwargs.get("ssl_context_factory", lambda: None)())

        if concurrency == 1 or len(spans) == 1:
            receipts = [send(i) for i in range(len(spans))]
        else:
            receipts = self._run_bounded(send, len(spans), concurrency)
        total = IngestReceipt(0, 0, 0)
        for r in receipts:
            total = total + r
        return total

    # -- labels ---------------------------------------------------------------------------------------------
    def submit_labels(self, model: str, labels: Prediction | Mapping[str, Any],
                      values: Any = None) -> LabelReceipt:
        """Delayed labels for earlier predictions of ``model``: ``{request_id: value(s), ...}`` (one value per
        row of that request), or a Prediction and one label per row of its table (split by request)."""
        if isinstance(labels, Prediction):
            if values is None:
                raise ClientError("give one label per row of the prediction's table")
            labels = labels.labels(values)
        elif values is not None:
            raise ClientError("values go with a Prediction; with a mapping, its values are the labels")
        items = normalize(labels)
        if self.protocol == "grpc":
            return submit_grpc(self._feedback_channel(), model, items, self.timeout_s)
        scheme = "https" if self._kwargs.get("ssl") else "http"
        return submit_http(f"{scheme}://{self.url}", model, items, self.timeout_s,
                                      self._kwargs.get("ssl_context_factory", lambda: None)())

    def _feedback_channel(self) -> Any:
        """A channel of our own for the skewless.v1 services (Feedback, Events): tritonclient's is private to it."""
        import grpc

        if self._channel is None:
            if self._kwargs.get("ssl"):
                def read(key: str) -> bytes | None:
                    path = self._kwargs.get(key)
                    if path is None:
                        return None
                    with open(path, "rb") as f:
                        return f.read()

                creds = self._kwargs.get("creds") or grpc.ssl_channel_credentials(
                    read("root_certificates"), read("private_key"), read("certificate_chain"))
                self._channel = grpc.secure_channel(self.url, creds)
            else:
                self._channel = grpc.insecure_channel(self.url)
        return self._channel


def _check_sizes(max_rows: int | None, concurrency: int) -> None:
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 (or None for one request), got {max_rows}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
