"""ONNX models for shadow and canary checks, all FP32 [batch, 4] -> [batch, 4] like swap_load's
``add_constant_model``, so any of them can stand in for another as challenger or candidate."""

from __future__ import annotations

import numpy as np


def _finish(nodes, inits, name: str) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _const(name: str, value) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def step_model(c: float, threshold: float, step: float) -> bytes:
    """y = x + c + step * (x > threshold): equal to x + c wherever no input element exceeds the threshold."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Greater", ["x", "t"], ["gt"]),
             helper.make_node("Cast", ["gt"], ["gtf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["gtf", "s"], ["bump"]),
             helper.make_node("Add", ["x", "c"], ["base"]),
             helper.make_node("Add", ["base", "bump"], ["y"])]
    inits = [_const("t", np.float32(threshold)), _const("s", np.float32(step)), _const("c", np.float32(c))]
    return _finish(nodes, inits, "step")


def failing_model(c: float, limit: int) -> bytes:
    """y = x + c, but a request fails (Gather out of range) when an input row's largest element is >= limit."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMax", ["x"], ["mx"], axes=[1], keepdims=1),
             helper.make_node("Cast", ["mx"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "idx"], ["g"], axis=0),
             helper.make_node("Mul", ["g", "zero"], ["gz"]),
             helper.make_node("Add", ["x", "c"], ["base"]),
             helper.make_node("Add", ["base", "gz"], ["y"])]
    inits = [_const("table", np.zeros(limit, np.float32)), _const("zero", np.float32(0)),
             _const("c", np.float32(c))]
    return _finish(nodes, inits, "failing")


def heavy_model(c: float, steps: int, width: int = 512) -> bytes:
    """y = x + c after ``steps`` [width x width] matmuls that depend on x (so none is folded away): the cost
    grows linearly with ``steps``, so steps=3k is about three times as slow as steps=k."""
    from onnx import helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"])]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"h{steps}"], ["s"], keepdims=1),
              helper.make_node("Mul", ["s", "zero"], ["sz"]),
              helper.make_node("Add", ["x", "c"], ["base"]),
              helper.make_node("Add", ["base", "sz"], ["y"])]
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    inits = [_const("w_in", rng.standard_normal((4, width)).astype(np.float32)), _const("w", w),
             _const("zero", np.float32(0)), _const("c", np.float32(c))]
    return _finish(nodes, inits, "heavy")
