"""The native aggregate engine (skewless.native.aggregates) against the plain-Python reference, bit for bit.

Every property here compares float64 bit patterns (NaN positions equal, the rest equal as int64) with
``tests/aggregate_reference.py`` over random plans (every op, composite string/int/bool keys, several groups,
windows of a few small buckets so they slide) and random event streams (missing keys, times and values, NaN,
-0.0, infinities, huge values, late and out-of-order events), however the stream is cut into batches, mixed
with ingests, saved and loaded, or scored from two threads.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from aggregate_reference import K, ReferenceState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless.native.aggregates import BUILD_INFO, AggregatePlanError, AggregateState
from skewless.native.columns import column
from skewless.native.feature_kernel import FeatureInputError, murmurhash3_32

OPS = ("count", "sum", "mean", "min", "max", "last", "distinct")
KEY_DTYPES = {"ks": "string", "ki": "int", "kb": "bool"}
VALUE_DTYPES = {"vf": "float", "vi": "int", "vb": "bool", "vs": "string"}
DTYPES = {**KEY_DTYPES, **VALUE_DTYPES, "t": "int", "t2": "int"}
SPECIAL_FLOATS = [0.0, -0.0, 1.5, -2.25, 0.1, 1 / 3, math.nan, math.inf, -math.inf, 1e300, -1e300, 2.0**40,
                  2.0**40 - 2.0**-12, -(2.0**40) + 0.5, 5e-324, 2.0**-33, 3 * 2.0**-33, 2.0**-32, 123456789.123456789]

PROPERTY = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def plans(draw, same_bucket: int | None = None, keys_from=tuple(KEY_DTYPES)):
    plan = []
    for gi in range(draw(st.integers(1, 3))):
        keys = draw(st.lists(st.sampled_from(keys_from), min_size=1, max_size=3, unique=True))
        time = draw(st.sampled_from(["t", "t2"])) if same_bucket is None else "t"
        bucket = same_bucket or draw(st.sampled_from([1, 2, 3, 5]))
        for ai in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(OPS))
            if op == "count":
                value = draw(st.sampled_from([None, *VALUE_DTYPES]))
            elif op == "distinct":
                value = draw(st.sampled_from(list(VALUE_DTYPES)))
            else:
                value = draw(st.sampled_from(["vf", "vi", "vb"]))
            n = draw(st.integers(1, 4))
            plan.append({"name": f"g{gi}_{ai}_{op}", "op": op, "keys": keys, "time": time, "value": value,
                         "window": n * bucket, "bucket": bucket, "time_unit": "s"})
    return plan


def _maybe(strategy):
    return st.one_of(st.none(), strategy, strategy, strategy)


FLOATS = _maybe(st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True)))
INTS = _maybe(st.one_of(st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1),
                        st.sampled_from([2**53 + 1, -(2**63), 2**63 - 1, 2**40 * 3])))
BOOLS = _maybe(st.booleans())
STRINGS = _maybe(st.one_of(st.sampled_from(["", "a", "b", "é", "a string longer than fifteen bytes"]),
                           st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3)))
KEY_VALUES = {"ks": _maybe(st.sampled_from(["a", "b", "", "ü"])), "ki": _maybe(st.sampled_from([0, 1, -1, 2**63 - 1])),
              "kb": _maybe(st.booleans())}
TIMES = _maybe(st.integers(-12, 40))


@st.composite
def streams(draw, n_max: int = 80, times=TIMES, sort: bool | None = None):
    n = draw(st.integers(0, n_max))
    rows = {name: draw(st.lists(s, min_size=n, max_size=n)) for name, s in KEY_VALUES.items()}
    rows["vf"] = draw(st.lists(FLOATS, min_size=n, max_size=n))
    rows["vi"] = draw(st.lists(INTS, min_size=n, max_size=n))
    rows["vb"] = draw(st.lists(BOOLS, min_size=n, max_size=n))
    rows["vs"] = draw(st.lists(STRINGS, min_size=n, max_size=n))
    for name in ("t", "t2"):
        ts = draw(st.lists(times, min_size=n, max_size=n))
        if sort if sort is not None else draw(st.booleans()):  # mostly in order, or not at all
            present = sorted(t for t in ts if t is not None)
            ts = [None if t is None else present.pop(0) for t in ts]
        rows[name] = ts
    return rows


def to_columns(rows: dict, names=None) -> dict:
    """Kernel column tuples of the reference's rows (None = missing), through skewless.native.columns."""
    cols = {}
    for name, vals in rows.items():
        if names is not None and name not in names:
            continue
        dt = DTYPES[name]
        if dt == "float":
            cols[name] = column(name, np.array([np.nan if v is None else v for v in vals], dtype=np.float64), dt)
        elif dt in ("int", "bool"):
            arr = np.array([0 if v is None else v for v in vals], dtype=np.int64 if dt == "int" else np.bool_)
            cols[name] = column(name, (arr, np.array([v is not None for v in vals], dtype=np.bool_)), dt)
        else:
            cols[name] = column(name, np.array(list(vals) + [None], dtype=object)[:-1], dt)
    return cols


def n_rows(rows: dict) -> int:
    return len(next(iter(rows.values())))


def sub(rows: dict, idx) -> dict:
    return {name: [vals[i] for i in idx] for name, vals in rows.items()}


def assert_same(got: dict, want: dict, names) -> None:
    for name in names:
        g = np.asarray(got[name], dtype=np.float64)
        w = np.asarray(want[name], dtype=np.float64)
        assert g.shape == w.shape, name
        assert np.array_equal(np.isnan(g), np.isnan(w)), (name, g, w)
        ok = ~np.isnan(w)
        assert np.array_equal(g[ok].view(np.int64), w[ok].view(np.int64)), (name, g[ok], w[ok])


def concat(parts: list[dict], names) -> dict:
    return {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in names}


def reference(plan) -> ReferenceState:
    return ReferenceState(plan, DTYPES)


def engine(plan, **kwargs) -> AggregateState:
    return AggregateState(plan, DTYPES, **kwargs)


def _held(stats: dict) -> dict:
    """stats() without bytes (a hash table's slot count depends on its history)."""
    return {k: v for k, v in stats.items() if k != "bytes"}


def check_counters(eng: AggregateState) -> None:
    """stats() reads running counters: they must equal what walking the state counts."""
    counted, walked, ages = eng._recount()
    assert counted == walked
    assert ages == walked[3]


def late(ref: ReferenceState) -> int:
    return sum(g.late for g in ref.groups.values())


# ---- properties -------------------------------------------------------------------------------------


@PROPERTY
@given(plan=plans(), rows=streams())
def test_one_batch_matches_reference(plan, rows):
    ref, eng = reference(plan), engine(plan)
    want = ref.score(rows)
    got = eng.score(to_columns(rows), n_rows(rows))
    assert tuple(got) == eng.names == tuple(a["name"] for a in plan)
    assert_same(got, want, eng.names)
    assert eng.stats()["events_late"] == late(ref)
    check_counters(eng)


@PROPERTY
@given(plan=plans(), rows=streams(), data=st.data())
def test_read_only_scoring_reads_the_state_and_records_nothing(plan, rows, data):
    """score(record=False), a shadow's copy of rows: each row is read against the state as it is (no row of
    the batch is recorded, so none sees another), and the state is unchanged."""
    import copy

    n = n_rows(rows)
    k = data.draw(st.integers(0, n))
    ref, eng = reference(plan), engine(plan)
    first, rest = sub(rows, range(k)), sub(rows, range(k, n))
    ref.score(first)
    eng.score(to_columns(first), k)
    before = _held(eng.stats())
    got = eng.score(to_columns(rest), n - k, record=False)
    assert _held(eng.stats()) == before
    want = {name: np.full(n - k, np.nan) for name in eng.names}
    for i in range(n - k):
        one = copy.deepcopy(ref).score(sub(rest, [i]))
        for name in eng.names:
            want[name][i] = one[name][0]
    assert_same(got, want, eng.names)
    assert_same(eng.score(to_columns(rest), n - k), ref.score(rest), eng.names)  # recording still as before


@PROPERTY
@given(plan=plans(), rows=streams(), data=st.data())
def test_batch_splits_match_reference(plan, rows, data):
    ref, eng = reference(plan), engine(plan)
    want = ref.score(rows)
    n = n_rows(rows)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))
    parts, start = [], 0
    for stop in [*cuts, n]:
        idx = range(start, stop)
        parts.append(eng.score(to_columns(sub(rows, idx)), len(idx)))
        start = stop
    assert_same(concat(parts, eng.names), want, eng.names)
    check_counters(eng)


@PROPERTY
@given(plan=plans(same_bucket=3), rows=streams(times=st.integers(-7, 40), sort=True), data=st.data())
def test_order_within_a_bucket_does_not_matter(plan, rows, data):
    """Rows of the same bucket in any order: every row's values are the same."""
    n = n_rows(rows)
    buckets = [t // 3 for t in rows["t"]]
    order = []
    for b in sorted(set(buckets)):
        members = [i for i in range(n) if buckets[i] == b]
        order += data.draw(st.permutations(members))
    base = engine(plan).score(to_columns(rows), n)
    permuted = engine(plan).score(to_columns(sub(rows, order)), n)
    back = {name: np.empty(n) for name in base}
    for name in base:
        back[name][np.array(order, dtype=np.int64)] = permuted[name]
    assert_same(back, base, base)
    assert_same(base, reference(plan).score(rows), base)


@PROPERTY
@given(plan=plans(), rows=streams(), data=st.data())
def test_ingest_mixed_with_score(plan, rows, data):
    ref, eng = reference(plan), engine(plan)
    n = n_rows(rows)
    start = 0
    while start < n:
        stop = data.draw(st.integers(start + 1, n))
        part = sub(rows, range(start, stop))
        if data.draw(st.booleans()):
            assert_same(eng.score(to_columns(part), stop - start), ref.score(part), eng.names)
        else:  # an ingest may leave out any inputs: groups without their keys/time are not touched
            keep = data.draw(st.sets(st.sampled_from(sorted(part))))
            part = {name: vals for name, vals in part.items() if name in keep}
            if part:
                assert eng.ingest(to_columns(part), stop - start) == ref.ingest(part)
        start = stop
    assert eng.stats()["events_late"] == late(ref)
    check_counters(eng)


@PROPERTY
@given(plan=plans(), rows=streams(), data=st.data())
def test_save_load_mid_stream(plan, rows, data, tmp_path_factory):
    ref, eng = reference(plan), engine(plan)
    n = n_rows(rows)
    cut = data.draw(st.integers(0, n))
    first, second = sub(rows, range(cut)), sub(rows, range(cut, n))
    assert_same(eng.score(to_columns(first), cut), ref.score(first), eng.names)
    path = tmp_path_factory.mktemp("state") / "aggregates.state"
    eng.save(path)
    before = eng.stats()
    loaded = engine(plan)
    loaded.load(path)
    assert _held(loaded.stats()) == _held(before)
    want = ref.score(second)
    assert_same(loaded.score(to_columns(second), n - cut), want, eng.names)
    assert_same(eng.score(to_columns(second), n - cut), want, eng.names)  # the original goes on the same way
    check_counters(eng)
    check_counters(loaded)


@PROPERTY
@given(plan=plans(), rows=streams(), max_keys=st.integers(1, 4), data=st.data())
def test_key_cap_holds_under_any_stream(plan, rows, max_keys, data, tmp_path_factory):
    """Eviction changes values (by design) but never the bookkeeping: at most max_keys keys, counters exact."""
    eng = engine(plan, max_keys=max_keys)
    n = n_rows(rows)
    cut = data.draw(st.integers(0, n))
    eng.score(to_columns(sub(rows, range(cut))), cut)
    eng.ingest(to_columns(sub(rows, range(cut, n))), n - cut)
    s = eng.stats()
    assert s["keys"] <= max_keys
    check_counters(eng)
    path = tmp_path_factory.mktemp("state") / "capped.state"
    eng.save(path)
    smaller = engine(plan, max_keys=1)
    smaller.load(path)
    assert smaller.stats()["keys"] <= 1
    check_counters(smaller)


def test_two_threads_on_disjoint_keys_equal_one_thread(tmp_path):
    """Threads interleave batches arbitrarily; with keys disjoint and no visibility cut, values are fixed.

    A third thread saves the state meanwhile (as the server's background saver does): no effect on values.
    """
    rng = np.random.default_rng(7)
    plan = [{"name": f"a_{op}", "op": op, "keys": ["ks", "ki"], "time": "t", "value": "vf" if op != "count" else None,
             "window": 20, "bucket": 2, "time_unit": "s"} for op in OPS]
    n = 6000

    def stream(prefix):
        return {"ks": [f"{prefix}{k}" for k in rng.integers(0, 50, n)], "ki": [int(k) for k in rng.integers(0, 3, n)],
                "t": sorted(int(t) for t in rng.integers(0, 21, n)),
                "vf": [float(v) for v in np.round(rng.normal(0, 100, n), 2)]}

    a, b = stream("a"), stream("b")
    single = engine(plan)
    want_a = concat([single.score(to_columns(sub(a, range(i, i + 100))), 100) for i in range(0, n, 100)], single.names)
    want_b = concat([single.score(to_columns(sub(b, range(i, i + 100))), 100) for i in range(0, n, 100)], single.names)
    shared = engine(plan)
    batches = {name: [to_columns(sub(s, range(i, i + 100))) for i in range(0, n, 100)] for name, s in (("a", a), ("b", b))}
    got = {}

    def run(name):
        got[name] = concat([shared.score(cols, 100) for cols in batches[name]], shared.names)

    def save():
        for i in range(5):
            shared.save(tmp_path / f"state{i}")

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")] + [threading.Thread(target=save)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    engine(plan).load(tmp_path / "state4")
    assert_same(got["a"], want_a, shared.names)
    assert_same(got["b"], want_b, shared.names)
    assert shared.stats()["events_recorded"] == single.stats()["events_recorded"] == 2 * n * 1


@pytest.mark.parametrize("value", ["vf", "vi", "vs"])
def test_distinct_above_k_matches_reference(value):
    rng = np.random.default_rng(3)
    plan = [{"name": "d", "op": "distinct", "keys": ["ks"], "time": "t", "value": value, "window": 4, "bucket": 1,
             "time_unit": "s"}]
    n = 3000
    pool = {"vf": [float(x) for x in rng.normal(0, 1e6, 1500)], "vi": [int(x) for x in rng.integers(-(2**62), 2**62, 1500)],
            "vs": [f"device-{i}" for i in range(1500)]}[value]
    rows = {"ks": [["x", "y"][i % 2] for i in range(n)], "t": [i * 5 // n for i in range(n)],
            "vf": [None] * n, "vi": [None] * n, "vs": [None] * n}
    rows[value] = [pool[int(i)] for i in rng.integers(0, len(pool), n)]
    want = reference(plan).score(rows)
    got = engine(plan).score(to_columns(rows), n)
    assert_same(got, want, ["d"])
    assert got["d"][-1] > K  # the estimate took over, and is near the truth
    truth = len({v for v, t, k in zip(rows[value], rows["t"], rows["ks"], strict=True) if t < 4 and k == "y"})
    assert abs(got["d"][-1] - truth) < 0.25 * truth


def test_sums_near_the_int128_to_double_rounding_edges():
    """Fixed-point totals beyond 2**53 units: the conversion to double must round correctly (ties to even)."""
    values = [2.0**40 - 2.0**-13, 2.0**-32, 2.0**39 + 2.0**-13, -(2.0**-32), 2.0**40 - 2.0**-12, 3 * 2.0**-33,
              2.0**-33, 2.0**-34, 2.0**12 + 2.0**-32, 0.1, -0.3]
    plan = [{"name": op, "op": op, "keys": ["kb"], "time": "t", "value": "vf", "window": 1, "bucket": 1,
             "time_unit": "s"} for op in ("sum", "mean")]
    rng = np.random.default_rng(11)
    for _ in range(30):
        picks = [values[int(i)] for i in rng.integers(0, len(values), 40)]
        rows = {"kb": [True] * 41, "t": [0] * 40 + [1], "vf": [*picks, None]}
        assert_same(engine(plan).score(to_columns(rows), 41), reference(plan).score(rows), ["sum", "mean"])


@pytest.mark.parametrize("values", [
    [2.0**21, 2.0**-32],  # 2**53 + 1 units: a tie, rounds to even (down)
    [2.0**21, 3 * 2.0**-32],  # 2**53 + 3 units: a tie, rounds to even (up)
    [2.0**21, 2.0**-32, 2.0**-33],  # the -33 rounds to 0 units (tie to even), so still a tie
    # near 2**53 * 2**32 units (2**40 - 2**-13 is the largest double below 2**40)
    [2.0**40 - 2.0**-13] * 8192 + [3 * 2.0**-32],
    [2.0**40 - 2.0**-12] * 8192 + [0.5],  # 2**85 - 2**33 + 2**31 units: a tie at 2**32, to even (down)
    [2.0**40 - 2.0**-12] * 8192 + [0.5, 2.0**-32],  # just above the tie: up
    [-(2.0**40) + 2.0**-13] * 8192 + [2.0**-32, 2.0**-31, -5 * 2.0**-32],
])
def test_sum_conversion_ties(values):
    plan = [{"name": op, "op": op, "keys": ["kb"], "time": "t", "value": "vf", "window": 1, "bucket": 1,
             "time_unit": "s"} for op in ("sum", "mean")]
    n = len(values)
    rows = {"kb": [True] * (n + 1), "t": [0] * n + [1], "vf": [*values, None]}
    got = engine(plan).score(to_columns(rows), n + 1)
    assert_same(got, reference(plan).score(rows), ["sum", "mean"])
    from fractions import Fraction

    exact = sum(Fraction(round(v * 2**32)) for v in values) / 2**32
    assert got["sum"][-1] == float(exact)  # Fraction -> float rounds correctly, ties to even


def test_extreme_times_and_late_events():
    plan = [{"name": op, "op": op, "keys": ["ki"], "time": "t", "value": "vf", "window": 6, "bucket": 3,
             "time_unit": "s"} for op in OPS]
    times = [-(2**63), 0, 2**63 - 1, 5, -(2**63), 2**63 - 1, 2**63 - 4, 2**63 - 7, 2**63 - 10]
    rows = {"ki": [1] * len(times), "t": times, "vf": [float(i) for i in range(len(times))]}
    ref, eng = reference(plan), engine(plan)
    assert_same(eng.score(to_columns(rows), len(times)), ref.score(rows), eng.names)
    assert eng.stats()["events_late"] == late(ref) > 0
    assert eng.stats()["watermark"] == 2**63 - 1


def test_arrow_columns_with_null_bitmaps_and_offsets():
    """Arrow inputs arrive as validity bitmaps starting at a bit offset (sliced arrays): same values."""
    pa = pytest.importorskip("pyarrow")
    plan = [{"name": op, "op": op, "keys": ["ks", "ki"], "time": "t", "value": "vf" if op != "distinct" else "vs",
             "window": 4, "bucket": 2, "time_unit": "s"} for op in OPS]
    rng = np.random.default_rng(5)
    n = 300
    rows = {"ks": [None if r < 0.1 else "ab"[int(r * 10) % 2] for r in rng.random(n)],
            "ki": [None if r < 0.1 else int(r * 3) for r in rng.random(n)],
            "t": [None if r < 0.05 else i // 10 for i, r in enumerate(rng.random(n))],
            "vf": [None if r < 0.2 else float(r) for r in rng.random(n)],
            "vs": [None if r < 0.2 else f"v{int(r * 40)}" for r in rng.random(n)]}
    types = {"ks": pa.string(), "ki": pa.int64(), "t": pa.int64(), "vf": pa.float64(), "vs": pa.large_string()}
    cols = {name: column(name, pa.array([None] * 3 + vals, type=types[name]).slice(3), DTYPES[name])
            for name, vals in rows.items()}
    assert cols["ki"][4] is not None and cols["ki"][5] == 3  # a bitmap at a bit offset
    assert_same(engine(plan).score(cols, n), reference(plan).score(rows), [op for op in OPS])


# ---- state, memory and persistence -------------------------------------------------------------------


def _advancing(n: int, keys: int, step: int) -> dict:
    return {"ks": [f"k{i % keys}-{i // step}" for i in range(n)], "t": list(range(n)), "vf": [1.0] * n}


def test_hidden_keys_are_freed():
    plan = [{"name": "c", "op": "count", "keys": ["ks"], "time": "t", "value": None, "window": 10, "bucket": 10,
             "time_unit": "s"}]
    eng = engine(plan)
    rows = _advancing(20000, 5, 100)  # new keys every 100 time units, 20 buckets of 10 per key lifetime
    for i in range(0, 20000, 500):
        eng.score(to_columns(sub(rows, range(i, i + 500))), 500)
    s = eng.stats()
    assert s["keys"] <= 10 and s["buckets"] <= 20 and 0 < s["bytes"] < 1 << 20
    assert s["events_recorded"] == 20000 and s["events_late"] == 0
    check_counters(eng)


def test_max_keys_evicts_the_oldest():
    plan = [{"name": "c", "op": "count", "keys": ["ki"], "time": "t", "value": None, "window": 1000, "bucket": 1,
             "time_unit": "s"}]
    eng = engine(plan, max_keys=3)
    rows = {"ki": [1, 2, 3, 4, 1, 3], "t": [0, 1, 2, 3, 4, 5]}
    got = eng.score(to_columns(rows), 6)
    assert list(got["c"]) == [0, 0, 0, 0, 0, 1]  # key 1 (oldest) was evicted by key 4, key 2 by key 1 again
    s = eng.stats()
    assert s["keys"] == 3 and s["keys_evicted"] == 2
    check_counters(eng)


def test_load_refuses_another_plan_and_damaged_files(tmp_path):
    plan = [{"name": "c", "op": "count", "keys": ["ki"], "time": "t", "value": None, "window": 2, "bucket": 1,
             "time_unit": "s"}]
    eng = engine(plan)
    eng.score(to_columns({"ki": [1, 2], "t": [0, 1]}), 2)
    path = tmp_path / "state.bin"
    eng.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]  # no temporary file left behind
    other = engine([{**plan[0], "window": 3}])
    with pytest.raises(AggregatePlanError, match="plan"):
        other.load(path)
    blob = path.read_bytes()
    fresh = engine(plan)
    for damaged in (blob[:-1], blob[:50], blob[:-8] + bytes(8), b"not a state file" * 4):
        path.write_bytes(damaged)
        with pytest.raises(ValueError):
            fresh.load(path)
    assert fresh.stats()["keys"] == 0  # left as it was
    path.write_bytes(blob)
    fresh.load(path)
    assert _held(fresh.stats()) == _held(eng.stats())


def test_compiled_for_deterministic_floating_point():
    assert BUILD_INFO["fast_math"] is False and BUILD_INFO["fp_env_guard"] is True
    assert BUILD_INFO["flt_eval_method"] in (0, -1)


def test_crafted_state_files_load_or_fail_cleanly(tmp_path):
    """Bytes changed under a valid checksum: load refuses (ValueError) or gives a state that still runs."""
    plan = [{"name": op, "op": op, "keys": ["ks"], "time": "t", "value": "vf", "window": 4, "bucket": 2,
             "time_unit": "s"} for op in OPS]
    rng = np.random.default_rng(9)
    rows = {"ks": [f"k{i % 7}" for i in range(400)], "t": [i // 40 for i in range(400)],
            "vf": [float(x) for x in rng.integers(0, 300, 400)]}
    eng = engine(plan, max_keys=5)
    eng.score(to_columns(rows), 400)
    path = tmp_path / "state.bin"
    eng.save(path)
    blob = path.read_bytes()
    header, payload = blob[:44], bytearray(blob[44:-4])
    probe = to_columns({"ks": ["k1", "k2", "zz"], "t": [9, 10, 11], "vf": [1.0, 2.0, 3.0]})
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(payload)
        for pos in rng.integers(0, len(damaged), int(rng.integers(1, 4))):
            damaged[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        path.write_bytes(header + bytes(damaged) + murmurhash3_32(bytes(damaged), 0x9747B28C).to_bytes(4, "little"))
        fresh = engine(plan, max_keys=5)
        try:
            fresh.load(path)
        except ValueError:
            outcomes.add("refused")
            continue
        outcomes.add("loaded")
        fresh.score(probe, 3)
        fresh.ingest(probe, 3)
        assert fresh.stats()["keys"] <= 5
        check_counters(fresh)
    assert outcomes == {"refused", "loaded"}


# ---- bad input ----------------------------------------------------------------------------------------


def test_bad_columns_name_the_column():
    plan = [{"name": "s", "op": "sum", "keys": ["ks"], "time": "t", "value": "vf", "window": 2, "bucket": 1,
             "time_unit": "s"}]
    eng = engine(plan)
    cols = to_columns({"ks": ["a", "b"], "t": [0, 1], "vf": [1.0, 2.0]})
    with pytest.raises(FeatureInputError, match="'t'"):
        eng.score({**cols, "t": column("t", np.array([0.5, 1.0]), "float")}, 2)
    with pytest.raises(FeatureInputError, match="'vf'.*missing"):
        eng.score({k: v for k, v in cols.items() if k != "vf"}, 2)
    with pytest.raises(FeatureInputError, match="'ks'"):
        eng.score(cols, 3)
    with pytest.raises(FeatureInputError, match="'ks'.*offsets"):
        eng.score({**cols, "ks": ("str64", np.array([0, 5, 1]), np.zeros(2, np.uint8), None, None, 0)}, 2)
    with pytest.raises(ValueError, match="'s'"):
        eng.score(cols, 2, out={"s": np.zeros(2, dtype=np.float32)})
    assert eng.stats()["events_recorded"] == 0
    out = {"s": np.full(2, 7.0)}
    assert eng.score(cols, 2, out=out)["s"] is out["s"] and list(out["s"]) == [0.0, 0.0]


@pytest.mark.parametrize(("change", "message"), [
    ({"op": "median"}, "op"), ({"window": 3}, "multiple"), ({"bucket": 0}, "bucket"), ({"time": "vf"}, "time"),
    ({"keys": []}, "keys"), ({"keys": ["nope"]}, "nope"), ({"value": None}, "value"), ({"value": "vs"}, "string"),
    ({"time_unit": "h"}, "time_unit"), ({"extra": 1}, "unknown"), ({"window": True}, "window"),
])
def test_bad_plans_are_refused(change, message):
    entry = {"name": "m", "op": "mean", "keys": ["ks"], "time": "t", "value": "vf", "window": 4, "bucket": 2,
             "time_unit": "s"}
    with pytest.raises(AggregatePlanError, match=message):
        engine([{**entry, **change}])
