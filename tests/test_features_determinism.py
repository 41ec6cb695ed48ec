"""Determinism of the feature core across machines: hash test vectors, our log1p, build flags, golden output.

The golden test transforms a fixed input (generated here by integer arithmetic only, so it is the same
everywhere) with a committed spec and compares the SHA-256 of the output bytes with a checked-in value:
a change of a single bit on any machine fails. Regenerate deliberately with
``python tests/test_features_determinism.py --regenerate`` and explain why in the commit.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.native import feature_kernel as fk
from skewless.native.fit import fit
from skewless.native.spec import FeatureSpec

DATA = Path(__file__).parent / "data"
GOLDEN_SPEC = DATA / "features_golden.json"
GOLDEN_OUTPUT_SHA256 = "41f940675f60fe6f1c8f53cec4d531b51429f324dacccda531748041f1cb7374"

# ---- MurmurHash3 ------------------------------------------------------------------------------------

# Published MurmurHash3_x86_32 vectors (SMHasher / Appleby's reference implementation).
MURMUR3_VECTORS = [
    (b"", 0, 0x00000000),
    (b"", 1, 0x514E28B7),
    (b"", 0xFFFFFFFF, 0x81F16F39),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"\xff\xff\xff\xff", 0, 0x76293B50),
    (b"\x21\x43\x65\x87", 0, 0xF55B516B),
    (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
    (b"\x21\x43\x65", 0, 0x7E4A8634),
    (b"\x21\x43", 0, 0xA0F7B07A),
    (b"\x21", 0, 0x72661CF4),
    (b"\x00\x00\x00", 0, 0x85F0B427),
    (b"\x00\x00", 0, 0x30F4C306),
    (b"\x00", 0, 0x514E28B7),
    (b"a", 0x9747B28C, 0x7FA09EA6),
    (b"aaaa", 0x9747B28C, 0x5A97808A),
    (b"abc", 0, 0xB3DD93FA),
    (b"Hello, world!", 0x9747B28C, 0x24884CBA),
    (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
]


@pytest.mark.parametrize("key, seed, expected", MURMUR3_VECTORS)
def test_murmur3_vectors(key, seed, expected):
    assert fk.murmurhash3_32(key, seed) == expected


@settings(max_examples=100, deadline=None)
@given(key=st.binary(max_size=64), seed=st.integers(0, 2**32 - 1))
def test_murmur3_matches_scikit_learn(key, seed):
    from sklearn.utils import murmurhash3_32

    assert fk.murmurhash3_32(key, seed) == murmurhash3_32(key, seed, positive=True)


def test_murmur3_of_str_is_utf8():
    assert fk.murmurhash3_32("é", 3) == fk.murmurhash3_32("é".encode(), 3)


# ---- log1p ------------------------------------------------------------------------------------------

def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between doubles of the same sign."""
    ia, ib = a.view(np.int64), b.view(np.int64)
    return np.abs(ia - ib)


def test_log1p_within_one_ulp_of_numpy():
    rng = np.random.default_rng(2024)
    parts = [
        rng.uniform(-1, 1, 200_000),
        rng.uniform(-1, -0.5, 50_000),
        rng.uniform(-0.3, 0.5, 50_000),
        np.ldexp(rng.uniform(0.5, 1, 50_000), rng.integers(-1074, 1024, 50_000)),
        -np.ldexp(rng.uniform(0.5, 1, 50_000), rng.integers(-1074, 0, 50_000)),
        np.ldexp(1.0, np.arange(-1074, 1024)).astype(np.float64),
        np.nextafter(np.ldexp(1.0, np.arange(-60, 60)), 0),
        rng.uniform(1, 1e6, 50_000),
    ]
    x = np.concatenate(parts)
    ours = fk.log1p(x)
    with np.errstate(all="ignore"):
        ref = np.log1p(x)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    assert np.array_equal(ours[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])
    same_sign = np.signbit(ours) == np.signbit(ref)
    assert same_sign[finite].all()
    assert _ulps(ours[finite], ref[finite]).max() <= 1


def test_log1p_special_values_bit_exact():
    x = np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1.0, -2.0, np.inf, -np.inf, np.nan, 2.0**-54, 1.0])
    got = fk.log1p(x)
    assert got[0] == 0 and not np.signbit(got[0])
    assert got[1] == 0 and np.signbit(got[1])
    assert got[2] == 5e-324 and got[3] == -5e-324 and got[4] == 1e-300
    assert got[5] == -np.inf and np.isnan(got[6]) and got[7] == np.inf and np.isnan(got[8]) and np.isnan(got[9])
    assert got[10] == 2.0**-54
    assert got[11].hex() == "0x1.62e42fefa39efp-1"  # ln 2 rounded to nearest


# Bit patterns produced by this implementation; any machine, compiler or flag change that alters one fails.
LOG1P_GOLDEN = {
    "0x1.0000000000000p-30": "0x1.fffffffc00000p-31",
    "0x1.999999999999ap-4": "0x1.8663f793c46c7p-4",
    "-0x1.999999999999ap-2": "-0x1.058aefa811452p-1",
    "0x1.8000000000000p+1": "0x1.62e42fefa39efp+0",
    "0x1.5bf0a8b145769p+1": "0x1.5031eafefb049p+0",
    "0x1.2a05f20000000p+33": "0x1.7069e2aa3184ep+4",
    "0x1.fffffffffffffp+1023": "0x1.62e42fefa39efp+9",
    "-0x1.fffffffffffffp-1": "-0x1.25e4f7b2737fap+5",
    # Where fdlibm and glibc round differently (glibc: ...515p+2 and ...32dp+1): ours must not drift to libm.
    "-0x1.fae147ae147aep-1": "-0x1.26bb1bbb55514p+2",
    "-0x1.e9fbe76c8b439p-1": "-0x1.92c251d0b132ep+1",
}


def test_log1p_golden_bits():
    x = np.array([float.fromhex(k) for k in LOG1P_GOLDEN])
    got = [v.hex() for v in fk.log1p(x).tolist()]
    assert got == [float.fromhex(v).hex() for v in LOG1P_GOLDEN.values()]


def test_log1p_in_the_kernel_equals_the_function():
    spec = fit({"features": [{"name": "x", "log1p": True}], "outputs": {"d": "float64"}},
               {"x": np.array([0.5, 3.0])})
    x = np.random.default_rng(0).normal(size=1000) * 100
    assert spec.transform({"x": x})["d"][:, 0].tobytes() == fk.log1p(x).tobytes()


# ---- build ------------------------------------------------------------------------------------------

def test_compiled_without_fast_math_or_fma_contraction():
    info = fk.BUILD_INFO
    assert info["fast_math"] is False
    assert info["flt_eval_method"] == 0  # no x87 extended precision: every double op rounds to double
    # a*b + c with a*b inexact: contracted into an FMA it would be -2**-60.
    assert fk.mul_add_probe(1 + 2.0**-30, 1 - 2.0**-30, -1.0) == 0.0


def test_kernel_pins_ieee_fp_environment():
    result = fk.fp_env_selftest()
    if result is None:
        pytest.skip("no FP environment guard on this architecture")
    guarded, unguarded = result
    assert guarded == 2.0**-1074  # IEEE subnormal despite FTZ/DAZ set by "another library"
    assert unguarded == 0.0  # proves the self-test really switched FTZ/DAZ on


# ---- golden -----------------------------------------------------------------------------------------

GOLDEN_CONFIG = {
    "features": [
        {"name": "x", "impute": "median", "clip": [-500, 500], "scale": "standard", "missing_indicator": True},
        {"name": "amount", "steps": [{"impute": 0}, "log1p", "minmax"]},
        {"name": "x_q", "input": "x", "bucketize": {"quantiles": 8}, "encode": "onehot"},
        {"name": "amount_b", "input": "amount", "log1p": True, "bucketize": {"boundaries": [1, 2, 4, 8]}},
        {"name": "country", "kind": "vocabulary", "top_k": 4, "min_frequency": 3, "oov_buckets": 2,
         "encode": "onehot"},
        {"name": "user", "kind": "hash", "buckets": 64, "seed": 17},
        {"name": "country_x_flag", "kind": "cross", "inputs": ["country", "flag"], "buckets": 31, "seed": 5},
        {"name": "n", "kind": "passthrough", "output": "ids"},
        {"name": "n_vocab", "input": "n", "kind": "vocabulary", "top_k": 5},
        {"name": "flag"},
    ],
}
_SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1e300, -1e300, 1e-310]
_COUNTRIES = [b"US", b"DE", b"FR", b"", b"\xff\xfeX", "é".encode(), b"JP", b"US", b"US", b"DE"]


def golden_table(n: int = 600) -> pa.Table:
    """Fixed input from a xorshift64* generator: integer arithmetic and exact decimal divisions only."""
    m64 = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15

    def rnd() -> int:
        nonlocal state
        state ^= state >> 12
        state ^= (state << 25) & m64
        state ^= state >> 27
        return (state * 0x2545F4914F6CDD1D) & m64

    x, amount, country, user, n_col, flag = [], [], [], [], [], []
    for _ in range(n):
        r = rnd()
        x.append(None if r % 17 == 0 else _SPECIALS[r % 9] if r % 13 == 0 else (rnd() % 2_000_001 - 1_000_000) / 997)
        amount.append(None if r % 19 == 0 else (rnd() % 10**9) / 3)
        country.append(None if r % 23 == 0 else _COUNTRIES[rnd() % len(_COUNTRIES)])
        user.append(f"user-{rnd() % 500}".encode())
        n_col.append(None if r % 29 == 0 else int(rnd() % 11) - 3)
        flag.append(None if r % 31 == 0 else bool(rnd() & 1))
    return pa.table({"x": pa.array(x, pa.float64()), "amount": pa.array(amount, pa.float64()),
                     "country": pa.array(country, pa.binary()), "user": pa.array(user, pa.binary()),
                     "n": pa.array(n_col, pa.int64()), "flag": pa.array(flag, pa.bool_())})


def output_digest(spec: FeatureSpec, outputs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for t in spec.outputs:
        a = outputs[t.name]
        h.update(f"{t.name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_golden_output_sha256():
    spec = FeatureSpec.load(GOLDEN_SPEC)
    out = spec.transform(golden_table())
    assert output_digest(spec, out) == GOLDEN_OUTPUT_SHA256
    # and identically in row batches through the streaming path's entry point
    table = golden_table()
    parts = [spec.transform(b) for b in table.to_batches(max_chunksize=37)]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in out}
    assert output_digest(spec, joined) == GOLDEN_OUTPUT_SHA256


def test_fitting_the_golden_config_reproduces_the_committed_spec():
    committed = FeatureSpec.load(GOLDEN_SPEC).to_dict()
    fitted = fit(GOLDEN_CONFIG, golden_table()).to_dict()
    for doc in (committed, fitted):
        doc.pop("generator")
        doc.pop("sha256")
    assert fitted == committed


if __name__ == "__main__" and "--regenerate" in sys.argv:
    spec = fit(GOLDEN_CONFIG, golden_table())
    DATA.mkdir(exist_ok=True)
    spec.save(GOLDEN_SPEC)
    print(f"wrote {GOLDEN_SPEC}; output sha256 {output_digest(spec, spec.transform(golden_table()))}")
