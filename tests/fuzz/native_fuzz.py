"""Coverage-guided fuzzing (atheris, libFuzzer) of the native core's untrusted-input entry points.

    python tests/fuzz/native_fuzz.py v2|bytes|features [libFuzzer flags, e.g. -max_total_time=30 CORPUS_DIR]

Targets: ``v2`` parses arbitrary bytes as a ModelInferRequest (the server's first step on every gRPC request);
``bytes`` decodes BYTES tensor contents (4-byte little-endian length prefixes) for a fuzzed element count;
``features`` runs the churn example's compiled feature spec (the kernel the server calls) on fuzzed raw columns
(dtypes, lengths, NaN/inf, huge integers, arbitrary strings). An input may be refused only with the entry
point's documented error (WireFormatError, BytesFormatError, or ValueError/TypeError naming the column); any
other exception, a crash, or a sanitizer report (run on the SKEWLESS_SANITIZE=1 build) is a finding.
Seed inputs come from valid requests built here.
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    from skewless.native.bytes_codec import BytesFormatError, check_bytes, decode_bytes
    from skewless.native.v2_codec import WireFormatError, parse_infer_request


def fuzz_v2(data: bytes) -> None:
    try:
        req = parse_infer_request(data)
    except WireFormatError:
        return
    # Touch what the server reads next: names, shapes, parameters, the raw contents.
    for t in req.inputs:
        _ = (t.name, t.datatype, tuple(t.shape), t.parameters)
    _ = (req.model_name, req.model_version, req.id, dict(req.parameters), list(req.outputs))
    for raw in req.raw:
        _ = len(raw)


def fuzz_bytes(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    count = fdp.ConsumeIntInRange(0, 64)
    utf8 = fdp.ConsumeBool()
    buf = np.frombuffer(fdp.ConsumeBytes(fdp.remaining_bytes()), dtype=np.uint8)
    try:
        check_bytes(buf, count)
        out = decode_bytes(buf, count, utf8)
        assert len(out) == count
    except BytesFormatError:
        pass


_SPEC = None


def _spec():
    global _SPEC
    if _SPEC is None:
        import pathlib
        import tempfile

        from skewless.examples.generate import write_churn_model
        from skewless.native.spec import FeatureSpec

        root = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-churn-"))
        write_churn_model(root)
        _SPEC = FeatureSpec.load(root / "churn" / "1" / "features.json")
    return _SPEC


def fuzz_features(data: bytes) -> None:
    spec = _spec()
    fdp = atheris.FuzzedDataProvider(data)
    rows = fdp.ConsumeIntInRange(0, 8)
    cols = {}
    for t in spec.inputs:
        kind = fdp.ConsumeIntInRange(0, 5)
        n = rows if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeIntInRange(0, 9)  # sometimes a wrong length
        if kind == 0:
            cols[t.name] = np.array(fdp.ConsumeFloatListInRange(n, -1e300, 1e300) if n else [], dtype=np.float64)
        elif kind == 1:
            cols[t.name] = np.array([fdp.ConsumeInt(8) for _ in range(n)], dtype=np.int64)
        elif kind == 2:
            cols[t.name] = np.array([fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)) for _ in range(n)], dtype=object)
        elif kind == 3:
            cols[t.name] = np.array([fdp.ConsumeBool() for _ in range(n)], dtype=np.bool_)
        elif kind == 4:
            cols[t.name] = np.array([float("nan"), float("inf"), -float("inf"), 0.0][:n], dtype=np.float32)
        else:
            cols[t.name] = np.array([fdp.ConsumeUnicode(6) for _ in range(n)], dtype=object)
    try:
        out = spec.transform(cols, n_threads=1)
    except (ValueError, TypeError) as exc:
        assert str(exc), "refused without a message"
        return
    lengths = {len(c) for c in cols.values()}
    assert len(lengths) == 1, f"columns of lengths {lengths} were accepted"
    n = lengths.pop()
    for name, arr in out.items():
        assert arr.shape[0] == n, (name, arr.shape, n)


TARGETS = {"v2": fuzz_v2, "bytes": fuzz_bytes, "features": fuzz_features}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from (libFuzzer mutates them)."""
    if target == "v2":
        from skewless.protos import grpc_service_pb2 as pb

        req = pb.ModelInferRequest(model_name="mlp", id="1")
        t = req.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        t.parameters["binary_data_size"].int64_param = 16
        req.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
        req.parameters["priority"].int64_param = 1
        return [req.SerializeToString()]
    if target == "bytes":
        return [bytes([2, 0]) + struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0)]
    return [bytes(range(64))]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags] [CORPUS_DIR]")
    target = argv[1]
    corpus = [a for a in argv[2:] if not a.startswith("-")]
    for d in corpus:  # seed an empty corpus directory with valid inputs
        import pathlib

        p = pathlib.Path(d)
        p.mkdir(parents=True, exist_ok=True)
        if not any(p.iterdir()):
            for i, s in enumerate(seeds(target)):
                (p / f"seed-{i}").write_bytes(s)
    atheris.Setup([argv[0], *argv[2:]], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
