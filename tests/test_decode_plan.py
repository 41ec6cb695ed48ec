"""The compiled decode plan (the hot path) agrees with the general decoder on every request it takes, and
hands every other request to it: the plan never accepts what the general path would refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skewless.native.v2_codec import build_infer_response, parse_infer_request
from skewless.protos import grpc_service_pb2 as pb
from skewless.server.decode import decode_inputs, requested_outputs
from skewless.server.encode import output_tensors
from skewless.server.errors import InvalidArgument
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion

IO = """
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [16] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
CONFIGS = {
    "batching": "max_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [16] }, "
                "{ name: \"INPUT1\" data_type: TYPE_FP32 dims: [16] } ]" + IO,
    # clients send [n, 4, 4]; the model sees [n, 16]
    "reshape": "max_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [4, 4] reshape { shape: [16] } }, "
               "{ name: \"INPUT1\" data_type: TYPE_FP32 dims: [4, 4] reshape { shape: [16] } } ]" + IO,
    "variable": "max_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [-1] }, "
                "{ name: \"INPUT1\" data_type: TYPE_FP32 dims: [-1] } ]" + IO.replace("[16]", "[-1]"),
}


@pytest.fixture(scope="module")
def versions(model_source: Path, tmp_path_factory) -> dict[str, ModelVersion]:
    out = {}
    for key, text in CONFIGS.items():
        vdir = tmp_path_factory.mktemp(key) / "add_sub" / "1"
        vdir.mkdir(parents=True)
        (vdir / "model.onnx").write_bytes((model_source / "add_sub" / "1" / "model.onnx").read_bytes())
        out[key] = ModelVersion("add_sub", 1, vdir, parse_config(f'name: "add_sub"\n{text}', "test"), True, 4)
    yield out
    for mv in out.values():
        mv.runtime.close()


def request(inputs: list[tuple[str, str, list[int], bytes | None]], outputs: list[str] = (),
            typed: bool = False) -> bytes:
    req = pb.ModelInferRequest(model_name="add_sub", id="r1")
    for name, datatype, shape, raw in inputs:
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if typed:
            t.contents.fp32_contents.extend(np.frombuffer(raw, "<f4").tolist())
        elif raw is not None:
            req.raw_input_contents.append(raw)
    for name in outputs:
        req.outputs.add(name=name)
    return req.SerializeToString()


def general(mv: ModelVersion, data: bytes):
    """What the general path makes of the same bytes (protobuf message, Python decoder)."""
    msg = pb.ModelInferRequest.FromString(data)
    feeds, rows = decode_inputs(msg.inputs, msg.raw_input_contents, mv)
    return feeds, rows, requested_outputs([o.name for o in msg.outputs], mv)


def fp32(*shape: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).standard_normal(shape).astype("<f4").tobytes()


@pytest.mark.parametrize("key", list(CONFIGS))
def test_plan_decodes_exactly_what_the_general_path_decodes(versions, key):
    mv = versions[key]
    assert mv.plan is not None
    rng = np.random.default_rng(7)
    for i in range(60):
        rows = int(rng.integers(1, 9))
        width = 16 if key != "variable" else int(rng.integers(0, 24))
        shape = [rows, 4, 4] if key == "reshape" else [rows, width]
        n = int(np.prod(shape))
        inputs = [("INPUT0", "FP32", shape, fp32(n, seed=i)), ("INPUT1", "FP32", shape, fp32(n, seed=i + 1000))]
        if i % 2:
            inputs.reverse()  # inputs may come in any order
        outputs = [[], ["OUTPUT1"], ["OUTPUT1", "OUTPUT0"]][i % 3]
        data = request(inputs, outputs)
        decoded = mv.plan.decode(parse_infer_request(data))
        assert decoded is not None
        feeds, got_rows, names = decoded
        want_feeds, want_rows, want_names = general(mv, data)
        assert got_rows == want_rows == rows and names == want_names
        assert set(feeds) == set(want_feeds)
        for name, arr in feeds.items():
            want = want_feeds[name]
            assert arr.dtype == want.dtype and arr.shape == want.shape
            assert arr.tobytes() == want.tobytes()
            assert not arr.flags.writeable  # a view of the request's bytes


def test_plan_views_keep_the_request_alive(versions):
    mv = versions["batching"]
    data = request([("INPUT0", "FP32", [2, 16], fp32(32)), ("INPUT1", "FP32", [2, 16], fp32(32, seed=1))])
    feeds, _, _ = mv.plan.decode(parse_infer_request(data))
    want = np.frombuffer(fp32(32), "<f4").reshape(2, 16).copy()
    del data
    np.testing.assert_array_equal(feeds["INPUT0"], want)


OFF_PATH = {
    "unknown input": [("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT9", "FP32", [1, 16], fp32(16))],
    "duplicate input": [("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT0", "FP32", [1, 16], fp32(16))],
    "missing input": [("INPUT0", "FP32", [1, 16], fp32(16))],
    "extra input": [("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT1", "FP32", [1, 16], fp32(16)),
                    ("INPUT2", "FP32", [1, 16], fp32(16))],
    "wrong datatype": [("INPUT0", "FP64", [1, 16], fp32(32)), ("INPUT1", "FP32", [1, 16], fp32(16))],
    "unknown datatype": [("INPUT0", "FP128", [1, 16], fp32(16)), ("INPUT1", "FP32", [1, 16], fp32(16))],
    "wrong dims": [("INPUT0", "FP32", [1, 15], fp32(15)), ("INPUT1", "FP32", [1, 15], fp32(15))],
    "no batch dim": [("INPUT0", "FP32", [16], fp32(16)), ("INPUT1", "FP32", [16], fp32(16))],
    "batch too large": [("INPUT0", "FP32", [9, 16], fp32(144)), ("INPUT1", "FP32", [9, 16], fp32(144))],
    "empty batch": [("INPUT0", "FP32", [0, 16], b""), ("INPUT1", "FP32", [0, 16], b"")],
    "batches differ": [("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT1", "FP32", [2, 16], fp32(32))],
    "short bytes": [("INPUT0", "FP32", [1, 16], fp32(16)[:-1]), ("INPUT1", "FP32", [1, 16], fp32(16))],
    "long bytes": [("INPUT0", "FP32", [1, 16], fp32(17)), ("INPUT1", "FP32", [1, 16], fp32(16))],
    "negative dim": [("INPUT0", "FP32", [1, -16], fp32(16)), ("INPUT1", "FP32", [1, 16], fp32(16))],
}


@pytest.mark.parametrize("case", list(OFF_PATH))
def test_plan_hands_bad_requests_to_the_general_path_which_refuses_them(versions, case):
    mv = versions["batching"]
    data = request(OFF_PATH[case])
    assert mv.plan.decode(parse_infer_request(data)) is None
    with pytest.raises(InvalidArgument):
        general(mv, data)


@pytest.mark.parametrize("outputs", [["OUTPUT7"], ["OUTPUT0", "OUTPUT0"]])
def test_plan_leaves_unknown_or_repeated_outputs_to_the_general_path(versions, outputs):
    mv = versions["batching"]
    data = request([("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT1", "FP32", [1, 16], fp32(16))], outputs)
    assert mv.plan.decode(parse_infer_request(data)) is None
    # unknown, or repeated (Triton: "output 'OUTPUT0' already exists in request"): refused by the general path
    with pytest.raises(InvalidArgument, match="OUTPUT7" if len(set(outputs)) == len(outputs) else "already exists"):
        general(mv, data)


def test_plan_leaves_typed_contents_to_the_general_path(versions):
    mv = versions["batching"]
    data = request([("INPUT0", "FP32", [1, 16], fp32(16)), ("INPUT1", "FP32", [1, 16], fp32(16))], typed=True)
    req = parse_infer_request(data)
    assert req.has_contents and mv.plan.decode(req) is None


def test_plan_reply_is_byte_identical_to_the_general_reply(versions):
    mv = versions["reshape"]
    out0 = np.random.default_rng(3).standard_normal((12, 16)).astype(np.float32)
    out1 = -out0
    for lo, hi in ((0, 5), (5, 12)):  # the slices of a batch that replies are built from
        arrays = [out0[lo:hi], out1[lo:hi]]
        names = ["OUTPUT0", "OUTPUT1"]
        for tag in (None, bytes([2 << 3 | 2])):
            fast = mv.plan.reply("add_sub", "1", "r1", names, arrays, tag)
            slow = build_infer_response("add_sub", "1", "r1", output_tensors(mv, names, arrays), tag)
            assert fast == slow
    # an output that is not the model's own dtype, or not contiguous, is left to the general path
    assert mv.plan.reply("add_sub", "1", "", ["OUTPUT0"], [out0.astype(np.float64)]) is None
    assert mv.plan.reply("add_sub", "1", "", ["OUTPUT0"], [out0[:, ::2]]) is None


def test_models_with_bytes_inputs_have_no_plan(model_source, tmp_path):
    vdir = tmp_path / "identity_all" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes((model_source / "identity_all" / "1" / "model.onnx").read_bytes())
    text = (model_source / "identity_all" / "config.pbtxt").read_text()
    mv = ModelVersion("identity_all", 1, vdir, parse_config(text, "test"), True, 4)
    try:
        assert mv.plan is None
    finally:
        mv.runtime.close()
