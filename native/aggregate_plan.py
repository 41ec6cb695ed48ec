"""The ``aggregates`` section of a feature spec: durations, checks, and event times in the declared unit.

One entry per windowed aggregate (issue 29; semantics in ``docs/features/aggregates.md``)::

    {"name": "card_amount_sum_1h", "op": "sum", "keys": ["card_id"], "time": "ts", "value": "amount",
     "window": 3600000, "bucket": 60000, "time_unit": "ms"}

``fit`` builds entries from the config's ``kind: aggregate`` features (durations such as ``"1h"``), and
``FeatureSpec`` checks them again when it loads a document; both go through ``check_plan`` so that a config
and a hand-edited spec get the same messages. Nothing here computes an aggregate: the native engine
(``skewless.native.aggregates``) does.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

OPS = ("count", "sum", "mean", "min", "max", "last", "distinct")
# Operations over a number: the value input must be float, int or bool (distinct also takes strings).
NUMERIC_OPS = ("sum", "mean", "min", "max", "last")
TIME_UNITS = ("s", "ms", "us", "ns")
UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
DURATION_NS = {"d": 86_400 * 10**9, "h": 3_600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6,
               "us": 10**3, "ns": 1}
DEFAULT_TIME_UNIT = "ms"
# The default bucket is window / DEFAULT_BUCKETS: fine enough that a window's leading edge moves in
# steps of under 2% of the window, coarse enough that a key holds at most 60 buckets per group.
DEFAULT_BUCKETS = 60
ENTRY_KEYS = ("name", "op", "keys", "time", "value", "window", "bucket", "time_unit")
_DURATION = re.compile(r"^\s*(\d+)\s*(d|h|ms|us|ns|m|s)\s*$")


class PlanError(ValueError):
    """An aggregate entry is invalid; the message names the aggregate and the key."""


def parse_duration(value: Any, unit: str, where: str) -> int:
    """A duration (``"10m"``, ``"1h"``, ``"7d"``, ``"500ms"``, or an integer already in ``unit``) in ``unit``."""
    if isinstance(value, bool):
        raise PlanError(f"{where}: expected a duration such as '10m', '1h', '7d', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise PlanError(f"{where}: must be positive, got {value}")
        return value
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise PlanError(f"{where}: expected a duration such as '10m', '1h', '7d', '30s' or '500ms', got {value!r}")
    ns = int(m.group(1)) * DURATION_NS[m.group(2)]
    if ns <= 0:
        raise PlanError(f"{where}: must be positive, got {value!r}")
    if ns % UNIT_NS[unit]:
        raise PlanError(f"{where}: {value!r} is not a whole number of {unit} (the time_unit)")
    return ns // UNIT_NS[unit]


def default_bucket(window: int, where: str) -> int:
    """window / 60 when that divides exactly; otherwise the config must say."""
    if window % DEFAULT_BUCKETS:
        raise PlanError(f"{where}: window {window} is not a multiple of {DEFAULT_BUCKETS}, so there is no default "
                        "bucket: give one ('bucket: 1m'), a whole fraction of the window")
    return window // DEFAULT_BUCKETS


def check_plan(entries: Any, dtypes: Mapping[str, str]) -> list[dict[str, Any]]:
    """Check a spec's ``aggregates`` list against the raw inputs' dtypes; returns normalised copies.

    ``dtypes``: raw input name -> float/int/bool/string. Raises PlanError naming the aggregate and the key.
    """
    if not isinstance(entries, list):
        raise PlanError("aggregates must be a list")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    time_units: dict[str, tuple[str, str]] = {}
    for e in entries:
        if not isinstance(e, Mapping) or not isinstance(e.get("name"), str) or not e["name"]:
            raise PlanError(f"each aggregate needs a name: {e!r}")
        name = e["name"]
        where = f"aggregate {name!r}"
        unknown = set(e) - set(ENTRY_KEYS)
        if unknown:
            raise PlanError(f"{where}: unknown keys {sorted(unknown)}")
        if name in names:
            raise PlanError(f"{where}: duplicate aggregate name")
        if name in dtypes:
            raise PlanError(f"{where}: the name is also a raw input; an aggregate's name is a derived input, "
                            "so it must differ from every raw input")
        names.add(name)
        op = e.get("op")
        if op not in OPS:
            raise PlanError(f"{where}: op must be one of {', '.join(OPS)}, got {op!r}")
        keys = e.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise PlanError(f"{where}: keys must be a non-empty list of raw input names")
        if len(set(keys)) != len(keys):
            raise PlanError(f"{where}: keys {keys} name an input twice")
        for k in keys:
            if k not in dtypes:
                raise PlanError(f"{where}: key input {k!r} is not in the data")
        time = e.get("time")
        if not isinstance(time, str) or time not in dtypes:
            raise PlanError(f"{where}: time input {time!r} is not in the data")
        if dtypes[time] != "int":
            raise PlanError(f"{where}: time input {time!r} must be int (event time in time_unit) or an Arrow "
                            f"timestamp, got {dtypes[time]} (whole numbers with gaps often arrive as float: "
                            f"declare them with inputs: {{{time}: int}})")
        if time in keys:
            raise PlanError(f"{where}: the time input {time!r} cannot also be a key")
        value = e.get("value")
        if op == "count":
            if value is not None:
                raise PlanError(f"{where}: count takes no value input (it counts events); remove 'value'")
        else:
            if not isinstance(value, str) or value not in dtypes:
                raise PlanError(f"{where}: value input {value!r} is not in the data" if value is not None
                                else f"{where}: op {op} needs a value input")
            if op in NUMERIC_OPS and dtypes[value] == "string":
                raise PlanError(f"{where}: {op} needs a number, but value input {value!r} is a string "
                                "(distinct counts strings)")
        unit = e.get("time_unit")
        if unit not in TIME_UNITS:
            raise PlanError(f"{where}: time_unit must be one of {', '.join(TIME_UNITS)}, got {unit!r}")
        previous = time_units.setdefault(time, (unit, name))
        if previous[0] != unit:
            raise PlanError(f"{where}: time input {time!r} is read in {unit} here but in {previous[0]} by "
                            f"aggregate {previous[1]!r}; one time input has one unit")
        window, bucket = e.get("window"), e.get("bucket")
        for key, v in (("window", window), ("bucket", bucket)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise PlanError(f"{where}: {key} must be a positive integer (in {unit}), got {v!r}")
        if window % bucket:
            raise PlanError(f"{where}: window {window} is not a multiple of bucket {bucket} ({unit})")
        out.append({"name": name, "op": op, "keys": list(keys), "time": time, "value": value,
                    "window": window, "bucket": bucket, "time_unit": unit})
    return out


def plan_inputs(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The raw inputs the aggregates read (keys, times, values), in first-use order."""
    names: list[str] = []
    for e in entries:
        for n in [*e["keys"], e["time"], e.get("value")]:
            if n is not None and n not in names:
                names.append(n)
    return names


def time_units(entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Time input name -> its unit."""
    return {e["time"]: e["time_unit"] for e in entries}


def is_datetime(obj: Any) -> bool:
    """True for an Arrow timestamp/date column, a numpy datetime64 array or a pandas datetime Series."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(obj, pa.Array | pa.ChunkedArray):
        return pa.types.is_timestamp(obj.type) or pa.types.is_date(obj.type)
    dtype = getattr(obj, "dtype", None)
    if dtype is None:
        return False
    return getattr(dtype, "kind", "") == "M" or str(dtype).startswith("datetime64")


def to_time_unit(obj: Any, unit: str, name: str) -> Any:
    """A timestamp column as int64 counts of ``unit`` since the epoch (floor; nulls kept as Arrow nulls).

    Anything that is not a timestamp is returned unchanged: the time input is then read as an int column.
    """
    if not is_datetime(obj):
        return obj
    import pyarrow as pa

    if not isinstance(obj, pa.Array | pa.ChunkedArray):
        obj = pa.array(obj)  # numpy datetime64 / pandas datetime: NaT becomes null
    if isinstance(obj, pa.ChunkedArray):
        obj = obj.combine_chunks()
    if pa.types.is_date(obj.type):
        obj = obj.cast(pa.timestamp("s"))
    src = obj.type.unit
    ticks = obj.cast(pa.int64())  # the stored ticks, exact; a time zone does not change them (UTC)
    values = ticks.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    src_ns, dst_ns = UNIT_NS[src], UNIT_NS[unit]
    if dst_ns > src_ns:
        values = values // (dst_ns // src_ns)  # floor: an event at 12:00:00.999 is in second 12:00:00
    elif dst_ns < src_ns:
        factor = src_ns // dst_ns
        limit = np.iinfo(np.int64).max // factor
        if values.size and int(np.abs(values).max()) > limit:
            raise PlanError(f"time input {name!r}: timestamps do not fit in int64 {unit}")
        values = values * factor
    null = obj.is_null().to_numpy(zero_copy_only=False) if obj.null_count else None
    return pa.array(values, type=pa.int64(), mask=null)
