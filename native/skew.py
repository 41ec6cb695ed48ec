"""Training-serving skew check: recompute logged served features offline and report every mismatching byte.

A feature log is Parquet (a file or a directory of files) with the spec's raw input columns, one column per
output tensor named like the output (``fixed_size_list<dtype>[width]``, or ``binary`` holding each row's
little-endian bytes), and optional ``request_id`` / ``model_name`` / ``model_version`` / ``time`` columns
used in the examples. ``skewless transform --keep <inputs...>`` writes exactly this layout, so an offline
file doubles as a reference log. Comparison is on bit patterns: NaN equals an identical NaN, -0.0 does
not equal 0.0.

A spec with windowed aggregates is replayed from the log's aggregate columns (one float64 column per
aggregate, named like it: the values the server's state gave each row): the kernel recomputes the tensors from
the raw inputs plus those values, so a mismatch is the kernel's, and no state is rebuilt. (Checking the values
themselves against the events is the backfill's job: ``skewless transform`` over the same ordered events.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import SPEC_HASH_KEY, data_files, iter_batches, tensor_from_column
from .spec import FeatureSpec

CONTEXT_COLUMNS = ("request_id", "model_name", "model_version", "time")


@dataclass
class SkewReport:
    rows: int = 0
    mismatched_rows: int = 0
    mismatched_values: int = 0
    per_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched_values == 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "mismatched_rows": self.mismatched_rows,
                "mismatched_values": self.mismatched_values, "per_feature": self.per_feature,
                "examples": self.examples, "warnings": self.warnings, "ok": self.ok}

    def format(self) -> str:
        lines = [f"rows compared: {self.rows}", f"mismatching rows: {self.mismatched_rows}",
                 f"mismatching values: {self.mismatched_values}"]
        lines += [f"warning: {w}" for w in self.warnings]
        for name, count in sorted(self.per_feature.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {name}: {count} values")
        for ex in self.examples:
            lines.append("  example: " + ", ".join(f"{k}={v}" for k, v in ex.items()))
        return "\n".join(lines)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _column_features(spec: FeatureSpec, output: str) -> tuple[list[str], np.ndarray]:
    """Feature names of an output and, per column, the index of the feature that writes it."""
    feats = [f for f in spec.features if f["output"] == output]
    owner = np.zeros(sum(f["width"] for f in feats), dtype=np.int64)
    for i, f in enumerate(feats):
        owner[f["offset"]:f["offset"] + f["width"]] = i
    return [f["name"] for f in feats], owner


def _plain(col: Any, row: int) -> Any:
    """A context value for a report. Timestamps become text: pyarrow turns a nanosecond timestamp into a
    Python object only through pandas, which the ``features`` extra does not install."""
    import pyarrow as pa

    if pa.types.is_timestamp(col.type) or pa.types.is_duration(col.type):
        return col.slice(row, 1).cast(pa.string())[0].as_py()
    return col[row].as_py()


def _check_layout(path: Path, schema: Any, spec: FeatureSpec, logged_hash: str) -> None:
    """A log written with another spec whose tensors cannot even be read with this one: say so up front
    (rather than failing on a value count), naming both hashes."""
    import pyarrow as pa

    problems = []
    for t in spec.outputs:
        if t.name not in schema.names:
            continue
        typ = schema.field(t.name).type
        if pa.types.is_fixed_size_list(typ) and typ.list_size != t.width:
            problems.append(f"tensor {t.name!r} has {typ.list_size} values per row in the log, {t.width} in the "
                            "spec")
    if problems:
        raise ValueError(f"{path.name}: the log's spec hash {logged_hash[:12]} differs from the given spec's "
                         f"{spec.sha256[:12]} ({'; '.join(problems)}): check the log against the features.json "
                         "it was served with")


def skew_check(spec: FeatureSpec, log: str | Path | Sequence[Path], *, max_examples: int = 10,
               batch_rows: int = 1 << 16, n_threads: int | None = None,
               progress: Callable[[int], None] | None = None) -> SkewReport:
    """Compare every logged tensor value with the kernel's recomputation from the logged raw inputs."""
    import pyarrow.parquet as pq

    files = data_files(log) if isinstance(log, str | Path) else list(log)
    report = SkewReport()
    owners = {t.name: _column_features(spec, t.name) for t in spec.outputs}
    names = {t.name: spec.column_names(t.name) for t in spec.outputs}
    for f in files:
        schema = pq.read_schema(f) if f.suffix == ".parquet" else None
        logged_hash = None
        if schema is not None and schema.metadata and SPEC_HASH_KEY in schema.metadata:
            logged_hash = schema.metadata[SPEC_HASH_KEY].decode()
            if logged_hash != spec.sha256:
                _check_layout(f, schema, spec, logged_hash)
                report.warnings.append(f"{f.name} was written with spec {logged_hash[:12]}, checking against "
                                       f"{spec.sha256[:12]}: the log's spec hash differs from the given spec's")
        available = set(schema.names) if schema is not None else None
        if available is not None and not set(spec.input_names) <= available:
            report.warnings.append(f"{f.name} skipped: it lacks the raw input columns "
                                   f"{sorted(set(spec.input_names) - available)}")
            continue
        aggregates = tuple(getattr(spec, "aggregate_names", ()))
        if aggregates and available is not None and not set(aggregates) <= available:
            report.warnings.append(f"{f.name} skipped: it lacks the aggregate columns "
                                   f"{sorted(set(aggregates) - available)} (the values served, which a replay "
                                   "reads)")
            continue
        # A server prediction log (server/lineage/) holds the raw inputs but not the served tensors: its rows
        # are transformed (so bad inputs show) but have nothing to be compared with.
        outputs = [t for t in spec.outputs if available is None or t.name in available]
        if not outputs:
            report.warnings.append(f"{f.name} holds raw inputs but no served tensors (a prediction log): its "
                                   "rows were transformed, not compared")
        if available is not None and "feature_spec_hash" in available:
            served_col = pq.read_table(f, columns=["feature_spec_hash"]).column(0)
            served = served_col[0].as_py() if len(served_col) else None
            if served not in (None, spec.sha256):
                report.warnings.append(f"{f.name} was served with spec {served[:12]}, checking against "
                                       f"{spec.sha256[:12]}: the log's spec hash differs from the given spec's")
        context = [c for c in CONTEXT_COLUMNS if available is not None and c in available]
        columns = [*spec.input_names, *aggregates, *(t.name for t in outputs), *context]
        for batch in iter_batches([f], columns, batch_rows):
            if aggregates:
                values = {n: batch.column(n).to_numpy(zero_copy_only=False) for n in aggregates}
                recomputed = spec.transform(batch, n_threads=n_threads, aggregate_values=values)
            else:
                recomputed = spec.transform(batch, n_threads=n_threads)
            bad_rows = np.zeros(batch.num_rows, dtype=np.bool_)
            for t in outputs:
                try:
                    logged = tensor_from_column(batch.column(t.name), t.dtype, t.width)
                except ValueError as exc:
                    why = (f"the log's spec hash {logged_hash[:12]} differs from the given spec's {spec.sha256[:12]}"
                           if logged_hash not in (None, spec.sha256) else
                           f"it does not fit the given spec {spec.sha256[:12]} ({t.width} values per row)")
                    raise ValueError(f"{f.name}: tensor {t.name!r}: {why}: {exc}") from None
                diff = _bits(logged) != _bits(recomputed[t.name])
                if not diff.any():
                    continue
                bad_rows |= diff.any(axis=1)
                rows, cols = np.nonzero(diff)
                report.mismatched_values += rows.size
                feat_names, owner = owners[t.name]
                per = np.bincount(owner[cols], minlength=len(feat_names))
                for i in np.nonzero(per)[0].tolist():
                    report.per_feature[feat_names[i]] = report.per_feature.get(feat_names[i], 0) + int(per[i])
                room = max(0, max_examples - len(report.examples))
                for r, c in zip(rows[:room].tolist(), cols[:room].tolist(), strict=True):
                    ex: dict[str, Any] = {"row": report.rows + r, "feature": feat_names[owner[c]],
                                          "column": names[t.name][c],
                                          "logged": logged[r, c].item(),
                                          "recomputed": recomputed[t.name][r, c].item()}
                    for k in context:
                        ex[k] = _plain(batch.column(k), r)
                    report.examples.append(ex)
            report.mismatched_rows += int(bad_rows.sum())
            report.rows += batch.num_rows
            if progress is not None:
                progress(batch.num_rows)
    return report
