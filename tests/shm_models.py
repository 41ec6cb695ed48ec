"""The models Triton's shared-memory examples expect, built as ONNX: ``simple`` (INT32 add/sub) and
``simple_string`` (the same over BYTES holding decimal numbers), both with Triton's tensor names."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {dt} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {dt} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {dt} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {dt} dims: [ 16 ] }}
]
dynamic_batching {{ }}
"""


def _write(root: Path, name: str, graph: onnx.GraphProto, datatype: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / name / "1" / "model.onnx"))
    (root / name / "config.pbtxt").write_text(_CONFIG.format(name=name, dt=datatype))


def _io(elem: int) -> tuple[list, list]:
    vi = helper.make_tensor_value_info
    return ([vi("INPUT0", elem, ["b", 16]), vi("INPUT1", elem, ["b", 16])],
            [vi("OUTPUT0", elem, ["b", 16]), vi("OUTPUT1", elem, ["b", 16])])


def write_simple_models(root: Path) -> Path:
    """``simple`` and ``simple_string`` under ``root`` (a model repository); returns ``root``."""
    ins, outs = _io(TensorProto.INT32)
    _write(root, "simple", helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])], "simple", ins, outs), "TYPE_INT32")
    ins, outs = _io(TensorProto.STRING)
    cast = helper.make_node
    _write(root, "simple_string", helper.make_graph(
        [cast("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32), cast("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
         cast("Add", ["a", "b"], ["sum"]), cast("Sub", ["a", "b"], ["diff"]),
         cast("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
         cast("Cast", ["diff"], ["OUTPUT1"], to=TensorProto.STRING)], "simple_string", ins, outs), "TYPE_STRING")
    return root
