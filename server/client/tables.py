"""The tables the client accepts: a pandas DataFrame, a pyarrow Table or RecordBatch, or a mapping of
column name -> array-like. Only row counts and column lookup are needed here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ClientError, MissingColumn


def row_count(table: Any) -> int:
    if hasattr(table, "num_rows"):  # pyarrow Table / RecordBatch
        return int(table.num_rows)
    if _is_dataframe(table):
        return len(table)
    if isinstance(table, Mapping):
        lengths = {name: len(col) for name, col in table.items()}
        if len(set(lengths.values())) > 1:
            raise ClientError(f"columns differ in length: {lengths}")
        return next(iter(lengths.values()), 0)
    raise ClientError(f"expected a pandas DataFrame, a pyarrow Table/RecordBatch or a mapping of columns, "
                      f"got {type(table).__name__}")


def column_names(table: Any) -> list[str]:
    if hasattr(table, "column_names"):
        return list(table.column_names)
    if _is_dataframe(table):
        return [str(c) for c in table.columns]
    return [str(c) for c in table]


def column(table: Any, name: str, model: str) -> Any:
    names = column_names(table)
    if name not in names:
        raise MissingColumn(f"model '{model}' needs column '{name}', which the table lacks "
                            f"(it has {', '.join(names) or 'no columns'})")
    if hasattr(table, "column_names"):
        return table.column(name)
    return table[name]


def _is_dataframe(table: Any) -> bool:
    return type(table).__module__.startswith("pandas") and hasattr(table, "columns")
