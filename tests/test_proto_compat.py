"""Wire compatibility of skewless' protos with tritonclient's (KServe v2 + Triton extensions).

Ours are registered in a private descriptor pool (skewless.protos._pool.POOL) because tritonclient puts
Triton's own ``inference`` package in protobuf's default pool; both must import into one process. For every
message, enum and service reachable from tritonclient's service_pb2 / model_config_pb2 we check the same
fields (name, number, type, label, referenced type, oneof, presence), enum values and RPC signatures.
Ours may be a superset.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as ref_mc
from tritonclient.grpc import service_pb2 as ref_svc

from skewless.protos import _pool
from skewless.protos import grpc_service_pb2 as our_svc
from skewless.protos import model_config_pb2 as our_mc

REF_FILES = {"model_config.proto": ref_mc.DESCRIPTOR, "grpc_service.proto": ref_svc.DESCRIPTOR}


def _label(f: FieldDescriptor) -> str:
    rep = getattr(f, "is_repeated", None)  # a property in upb-backed protobuf, a method elsewhere
    if rep is None:
        rep = f.label == FieldDescriptor.LABEL_REPEATED
    elif callable(rep):
        rep = rep()
    return "repeated" if rep else "optional"


def _field_sig(f: FieldDescriptor) -> tuple:
    ref = None
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        ref = f.message_type.full_name
    elif f.type == FieldDescriptor.TYPE_ENUM:
        ref = f.enum_type.full_name
    oneof = f.containing_oneof.name if f.containing_oneof else None
    return (f.name, f.number, f.type, _label(f), ref, oneof, f.has_presence)


def _compare_enum(ref, pool, diffs: list[str]) -> None:
    try:
        ours = pool.FindEnumTypeByName(ref.full_name)
    except KeyError:
        diffs.append(f"enum {ref.full_name}: missing")
        return
    missing = {(v.name, v.number) for v in ref.values} - {(v.name, v.number) for v in ours.values}
    for name, number in sorted(missing, key=lambda v: v[1]):
        diffs.append(f"enum {ref.full_name}: missing or different value {name}={number}")


def _compare_message(ref, pool, diffs: list[str], counts: dict[str, int]) -> None:
    counts["messages"] += 1
    try:
        ours = pool.FindMessageTypeByName(ref.full_name)
    except KeyError:
        diffs.append(f"message {ref.full_name}: missing")
        return
    if ref.GetOptions().map_entry != ours.GetOptions().map_entry:
        diffs.append(f"message {ref.full_name}: map_entry option differs")
    our_fields = {f.number: f for f in ours.fields}
    for rf in ref.fields:
        counts["fields"] += 1
        of = our_fields.get(rf.number)
        if of is None:
            diffs.append(f"message {ref.full_name}: missing field {rf.name} = {rf.number}")
        elif _field_sig(rf) != _field_sig(of):
            diffs.append(f"message {ref.full_name}: field {rf.number} differs: ref={_field_sig(rf)} "
                         f"ours={_field_sig(of)}")
    our_oneofs = {o.name: {f.name for f in o.fields} for o in ours.oneofs}
    for o in ref.oneofs:
        members = {f.name for f in o.fields}
        if o.name not in our_oneofs:
            diffs.append(f"message {ref.full_name}: missing oneof {o.name}")
        elif not members <= our_oneofs[o.name]:
            diffs.append(f"message {ref.full_name}: oneof {o.name} members differ")
    for e in ref.enum_types:
        counts["enums"] += 1
        _compare_enum(e, pool, diffs)
    for n in ref.nested_types:
        _compare_message(n, pool, diffs, counts)


def _compare_file(ref_file, pool, diffs: list[str], counts: dict[str, int]) -> None:
    try:
        ours_file = pool.FindFileByName(ref_file.name)
    except KeyError:
        diffs.append(f"file {ref_file.name}: missing")
        return
    if ours_file.package != ref_file.package:
        diffs.append(f"file {ref_file.name}: package {ours_file.package} != {ref_file.package}")
    for e in ref_file.enum_types_by_name.values():
        counts["enums"] += 1
        _compare_enum(e, pool, diffs)
    for m in ref_file.message_types_by_name.values():
        _compare_message(m, pool, diffs, counts)
    for s in ref_file.services_by_name.values():
        try:
            ours = {m.name: m for m in pool.FindServiceByName(s.full_name).methods}
        except KeyError:
            diffs.append(f"service {s.full_name}: missing")
            continue
        for m in s.methods:
            counts["methods"] += 1
            om = ours.get(m.name)
            if om is None:
                diffs.append(f"rpc {s.full_name}.{m.name}: missing")
                continue
            sig = lambda x: (x.input_type.full_name, x.output_type.full_name,  # noqa: E731
                             x.client_streaming, x.server_streaming)
            if sig(m) != sig(om):
                diffs.append(f"rpc {s.full_name}.{m.name} differs: ref={sig(m)} ours={sig(om)}")


def test_our_descriptors_live_in_the_private_pool():
    assert our_svc.DESCRIPTOR.pool is _pool.POOL
    assert our_mc.DESCRIPTOR.pool is _pool.POOL
    assert _pool.POOL is not descriptor_pool.Default()
    assert ref_svc.DESCRIPTOR.pool is descriptor_pool.Default()
    assert our_svc.DESCRIPTOR.package == ref_svc.DESCRIPTOR.package == "inference"


def test_descriptors_match_tritonclient():
    diffs: list[str] = []
    counts = {"messages": 0, "fields": 0, "enums": 0, "methods": 0}
    for ref_file in REF_FILES.values():
        _compare_file(ref_file, _pool.POOL, diffs, counts)
    assert not diffs, "\n".join(diffs)
    # Guard against comparing nothing (e.g. tritonclient's descriptors failing to enumerate).
    assert counts["messages"] > 100 and counts["fields"] > 300 and counts["methods"] >= 20, counts


SAMPLE_PBTXT = r"""
name: "sample"
backend: "python"
max_batch_size: 8
version_policy { specific { versions: [1, 3] } }
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 4 ] allow_ragged_batch: true } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] label_filename: "labels.txt" } ]
instance_group [ { kind: KIND_GPU count: 2 gpus: [0, 1] rate_limiter { resources [ { name: "R" count: 1 } ] } } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_queue_policy { timeout_action: DELAY max_queue_size: 10 }
  priority_queue_policy { key: 1 value { allow_timeout_override: true } }
}
optimization {
  cuda { graphs: true graph_spec [ { batch_size: 4 input { key: "IN" value { dim: [ 4, 4 ] } } } ] }
  execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] }
}
parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "IN" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]
model_transaction_policy { decoupled: true }
response_cache { enable: true }
model_metrics { metric_control [ { metric_identifier { family: "nv_inference_first_response_histogram_ms" } histogram_options { buckets: [ 1, 2, 4 ] } } ] }
"""


def test_model_config_roundtrip():
    ours = text_format.Parse(SAMPLE_PBTXT, our_mc.ModelConfig())
    ref = text_format.Parse(SAMPLE_PBTXT, ref_mc.ModelConfig())
    assert ours.SerializeToString(deterministic=True) == ref.SerializeToString(deterministic=True)
    assert ref_mc.ModelConfig.FromString(ours.SerializeToString()) == ref


def test_infer_messages_roundtrip():
    req = ref_svc.ModelInferRequest(model_name="m", model_version="1", id="x")
    req.parameters["sequence_id"].uint64_param = 7
    inp = req.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    inp.parameters["binary_data_size"].int64_param = 16
    inp.contents.int64_contents.extend([1, -2])
    req.outputs.add(name="OUT").parameters["classification"].int64_param = 3
    req.raw_input_contents.append(b"\0" * 16)
    ours = our_svc.ModelInferRequest.FromString(req.SerializeToString())
    assert ours.SerializeToString(deterministic=True) == req.SerializeToString(deterministic=True)
    assert text_format.MessageToString(ours) == text_format.MessageToString(req)

    resp = our_svc.ModelStreamInferResponse(error_message="e")
    resp.infer_response.outputs.add(name="o", datatype="BYTES", shape=[2])
    resp.infer_response.raw_output_contents.append(b"\1\0\0\0a")
    back = ref_svc.ModelStreamInferResponse.FromString(resp.SerializeToString())
    assert back.SerializeToString(deterministic=True) == resp.SerializeToString(deterministic=True)
    assert back.infer_response.outputs[0].name == "o"


def test_both_modules_import_in_a_fresh_process():
    """Import order must not matter: tritonclient first, then ours, and the other way round."""
    code = ("import tritonclient.grpc.service_pb2 as r, tritonclient.grpc.model_config_pb2 as rm; "
            "import skewless.protos.grpc_service_pb2 as o, skewless.protos.model_config_pb2 as om; "
            "assert r.ModelInferRequest is not o.ModelInferRequest; "
            "assert r.DESCRIPTOR.pool is not o.DESCRIPTOR.pool")
    swapped = ("import skewless.protos.grpc_service_pb2 as o, skewless.protos.model_config_pb2 as om; "
               "import tritonclient.grpc as g; import tritonclient.grpc.service_pb2 as r; "
               "assert r.ModelInferRequest is not o.ModelInferRequest")
    for snippet in (code, swapped):
        proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_generated_modules_match_the_proto_sources(tmp_path):
    """The *_pb2.py files are build outputs: catch a .proto edited without regenerating them."""
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpc_tools is only a build dependency")
    import grpc_tools
    from helpers import REPO_ROOT

    out = tmp_path / "set.pb"
    include = f"{grpc_tools.__path__[0]}/_proto"
    rc = protoc.main(["protoc", f"-I{REPO_ROOT / 'protos'}", f"-I{include}", f"--descriptor_set_out={out}",
                      *REF_FILES])
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    generated = {d.name: descriptor_pb2.FileDescriptorProto.FromString(d.serialized_pb)
                 for d in (our_svc.DESCRIPTOR, our_mc.DESCRIPTOR)}
    for compiled in fds.file:
        ours = generated[compiled.name]
        _strip_json_names(ours.message_type)  # protoc fills json_name in descriptor sets only
        _strip_json_names(compiled.message_type)
        assert ours == compiled, f"protos/{compiled.name} changed since the *_pb2.py were generated: rebuild"


def _strip_json_names(messages) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _strip_json_names(m.nested_type)
