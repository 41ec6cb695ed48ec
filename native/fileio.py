"""Streaming file access for the offline tools: read record batches, write tensors as .npy or Parquet.

Files larger than memory work because nothing here holds more than a couple of batches: Parquet is read
by row group / record batch, CSV by pyarrow's streaming reader, and .npy outputs are written in place
with a fixed-size header that is patched with the final row count at the end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .spec import FeatureSpec

ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
SPEC_HASH_KEY = b"skewless.spec_sha256"


def data_files(path: str | Path) -> list[Path]:
    """A file, or every .parquet/.csv/.arrow file under a directory in sorted order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".csv", ".arrow", ".feather"))
        if not files:
            raise FileNotFoundError(f"no .parquet/.csv/.arrow files under {p}{_open_files_note(p)}")
        return files
    if not p.exists():
        raise FileNotFoundError(p)
    return [p]


def _open_files_note(directory: Path) -> str:
    """What a log directory holds that is still being written: a server writes each Parquet file under a
    ``.parquet.tmp`` name and renames it when it closes it (its footer, which readers need, comes last)."""
    open_files = sorted(directory.rglob("*.parquet.tmp"))
    if not open_files:
        return ""
    sizes = 0
    for f in open_files:
        with contextlib.suppress(OSError):  # closed and renamed meanwhile
            sizes += f.stat().st_size
    return (f"; {len(open_files)} file(s) still being written ({open_files[0].name}"
            f"{', ...' if len(open_files) > 1 else ''}, {sizes / 1e6:.1f} MB): a server closes and renames a log "
            "file when it rotates it (the model's skewless.feature_log_rotate_seconds or _rotate_rows; "
            "the prediction log: --prediction-log-rotate-seconds / -mb), unloads the model or stops")


def count_rows(files: Sequence[Path]) -> int | None:
    """Total rows when the format records it (Parquet, Arrow IPC); None for CSV."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        if f.suffix == ".parquet":
            total += pq.ParquetFile(f).metadata.num_rows
        elif f.suffix in (".arrow", ".feather"):
            with pa.memory_map(str(f)) as src:
                total += pa.ipc.open_file(src).read_all().num_rows
        else:
            return None
    return total


def iter_batches(files: Sequence[Path], columns: Sequence[str] | None, batch_rows: int,
                 column_types: dict[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of the selected columns, one file after another."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for f in files:
        if f.suffix == ".parquet":
            pf = pq.ParquetFile(f)
            missing = [c for c in columns or [] if c not in pf.schema_arrow.names]
            if missing:
                raise KeyError(f"{f}: no column(s) {missing}")
            yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)
        elif f.suffix == ".csv":
            types = {k: ARROW_TYPES[v] for k, v in (column_types or {}).items()}
            reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 24),
                                    convert_options=pacsv.ConvertOptions(
                                        include_columns=list(columns) if columns else None,
                                        column_types=types, strings_can_be_null=True))
            for batch in reader:
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
        else:
            with pa.memory_map(str(f)) as src:
                reader = pa.ipc.open_file(src)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    if columns:
                        batch = batch.select(list(columns))
                    for start in range(0, batch.num_rows, batch_rows):
                        yield batch.slice(start, batch_rows)


def read_table(files: Sequence[Path], columns: Sequence[str] | None,
               column_types: dict[str, str] | None = None) -> pa.Table:
    batches = list(iter_batches(files, columns, 1 << 20, column_types))
    if not batches:
        raise ValueError("no rows in the data")
    return pa.Table.from_batches(batches)


def time_sorted_batches(files: Sequence[Path], columns: Sequence[str] | None, batch_rows: int,
                        column_types: dict[str, str] | None, time_column: str) -> Iterator[pa.RecordBatch]:
    """Every row sorted by ``time_column`` (stable: ties keep their table order; nulls last), in batches.

    The whole table is read first, so it must fit in memory; the rows still go through the transform in
    batches.
    """
    import pyarrow.compute as pc

    table = read_table(files, columns, column_types)
    order = pc.sort_indices(table, sort_keys=[(time_column, "ascending")])  # stable; nulls at the end
    table = table.take(order).combine_chunks()
    yield from table.to_batches(max_chunksize=batch_rows)


def prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread so that reading overlaps the transform of the previous batch."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put((None, exc))
        q.put((done, None))

    t = threading.Thread(target=work, name="skewless-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


class NpyWriter:
    """Append rows to a 2-D .npy file whose row count is known only at the end.

    The header is written with a fixed size of 128 bytes and rewritten on ``close``; numpy's reader
    accepts the space padding.
    """

    HEADER = 128

    def __init__(self, path: str | Path, dtype: np.dtype, width: int) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.width = width
        self.rows = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        body = f"{{'descr': '{self.dtype.str}', 'fortran_order': False, 'shape': ({rows}, {self.width}), }}"
        body = body.ljust(self.HEADER - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def write(self, block: np.ndarray) -> None:
        if block.dtype != self.dtype or block.ndim != 2 or block.shape[1] != self.width:
            raise ValueError("block does not match the file's dtype and width")
        self._f.write(np.ascontiguousarray(block).data)
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(self._header(self.rows))
        self._f.close()


def tensor_array(block: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, width) block as a fixed_size_list column, zero-copy."""
    flat = pa.array(np.ascontiguousarray(block).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, block.shape[1])


def tensor_from_column(col: Any, dtype: str, width: int) -> np.ndarray:
    """Inverse of ``tensor_array``; also accepts a binary column holding each row's raw little-endian bytes."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if col.null_count:
        raise ValueError("tensor column has null rows")
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        values = col.flatten().to_numpy(zero_copy_only=False)
        if values.size != n * width:
            raise ValueError(f"tensor column holds {values.size} values for {n} rows x {width}")
        return np.ascontiguousarray(values.astype(dtype, copy=False)).reshape(n, width)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type) or pa.types.is_fixed_size_binary(col.type):
        raw = b"".join(col.to_pylist())
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(n, width)
    raise ValueError(f"tensor columns are fixed_size_list or binary, got {col.type}")


class ParquetTensorWriter:
    """Write kept raw columns plus one fixed_size_list column per output tensor, batch by batch."""

    def __init__(self, path: str | Path, spec: FeatureSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self._writer: Any = None

    def write(self, batch: pa.RecordBatch | None, keep: Sequence[str], outputs: dict[str, np.ndarray],
              extra: dict[str, np.ndarray] | None = None) -> None:
        """``keep`` names columns of ``batch``, or of ``extra`` (computed columns such as aggregates)."""
        import pyarrow.parquet as pq

        extra = extra or {}
        arrays = [pa.array(extra[k]) if k in extra else batch.column(k) for k in keep] if keep else []
        names = list(keep)
        for t in self.spec.outputs:
            arrays.append(tensor_array(outputs[t.name]))
            names.append(t.name)
        table = pa.Table.from_arrays(arrays, names=names)
        if self._writer is None:
            schema = table.schema.with_metadata({SPEC_HASH_KEY: self.spec.sha256.encode()})
            self._writer = pq.ParquetWriter(self.path, schema)
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:  # no rows at all: still leave a valid file with the tensor columns
            empty = {t.name: np.zeros((0, t.width), dtype=t.dtype) for t in self.spec.outputs}
            table = pa.Table.from_arrays([tensor_array(empty[t.name]) for t in self.spec.outputs],
                                         names=list(self.spec.output_names))
            pq.write_table(table.replace_schema_metadata({SPEC_HASH_KEY: self.spec.sha256.encode()}), self.path)
            return
        self._writer.close()
