"""A safe rule language for fallback outputs: one Python-syntax expression over the request's raw inputs.

Parsed once at model load with ``ast`` and checked against a whitelist of node types, names and functions;
evaluated by walking the tree with numpy over the whole batch (no ``eval``/``exec``, no attribute access, no
calls but the listed numpy functions): ``x[:, 0] > 0.5``, ``where(age < 18, 0, 1)``, ``sum(x, 1) / 4``
(``x.sum(1)`` is refused: no attributes).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "where": np.where, "minimum": np.minimum, "maximum": np.maximum, "clip": np.clip, "abs": np.abs,
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "round": np.round, "floor": np.floor, "ceil": np.ceil,
    "sum": lambda a, axis=None: np.sum(a, axis=axis), "mean": lambda a, axis=None: np.mean(a, axis=axis),
    "min": lambda a, axis=None: np.min(a, axis=axis), "max": lambda a, axis=None: np.max(a, axis=axis),
    "argmax": lambda a, axis=None: np.argmax(a, axis=axis), "stack": lambda *a: np.stack(a, axis=-1),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)), "isnan": np.isnan,
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: np.logical_not, ast.Invert: np.logical_not}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
MAX_NODES = 200


class RuleError(ValueError):
    """A rule that is not in the language, or names an unknown input."""


class Rule:
    """One parsed, checked expression; ``evaluate(inputs)`` gives its value over the batch."""

    def __init__(self, text: str, inputs: set[str]):
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise RuleError(f"rule '{text}' is not an expression: {exc.msg}") from None
        nodes = list(ast.walk(tree))
        if len(nodes) > MAX_NODES:
            raise RuleError(f"rule '{text}' is too long ({len(nodes)} nodes; at most {MAX_NODES})")
        self.text = text
        self._inputs = inputs
        self._check(tree.body)
        self._tree = tree.body

    def _check(self, node: ast.AST) -> None:
        what = None
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, bool)):
                what = f"constant {node.value!r} (only numbers and booleans)"
        elif isinstance(node, ast.Name):
            if node.id not in self._inputs:
                what = f"name '{node.id}' (inputs: {', '.join(sorted(self._inputs))})"
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                what = f"operator {type(node.op).__name__}"
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                what = f"operator {type(node.op).__name__}"
        elif isinstance(node, ast.BoolOp):
            pass
        elif isinstance(node, ast.Compare):
            what = next((f"comparison {type(op).__name__}" for op in node.ops if type(op) not in _COMPARE), None)
        elif isinstance(node, ast.IfExp):
            pass
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                what = f"call of '{name}' (functions: {', '.join(sorted(FUNCTIONS))}; positional arguments only)"
            else:
                for arg in node.args:
                    self._check(arg)
                return
        elif isinstance(node, ast.Subscript):
            if not isinstance(node.value, ast.Name):
                what = "subscript of anything but an input"
            else:
                self._check_index(node.slice)
                self._check(node.value)
                return
        else:
            what = f"{type(node).__name__} ({ast.unparse(node)})"
        if what is not None:
            raise RuleError(f"rule '{self.text}' uses {what}, which rules may not")
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context)):
                self._check(child)

    def _check_index(self, node: ast.AST) -> None:
        parts = node.elts if isinstance(node, ast.Tuple) else [node]
        for p in parts:
            bounds = [p.lower, p.upper, p.step] if isinstance(p, ast.Slice) else [p]
            for b in bounds:
                if b is None:
                    continue
                if isinstance(b, ast.UnaryOp) and isinstance(b.op, ast.USub):
                    b = b.operand
                if not (isinstance(b, ast.Constant) and isinstance(b.value, int)):
                    raise RuleError(f"rule '{self.text}': indexes must be integer constants or slices of them")

    def evaluate(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(_eval(self._tree, inputs))


def _eval(node: ast.AST, env: dict[str, np.ndarray]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BoolOp):
        fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        values = [_eval(v, env) for v in node.values]
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return out
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        out = None
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, env)
            part = _COMPARE[type(op)](left, right)
            out = part if out is None else np.logical_and(out, part)
            left = right
        return out
    if isinstance(node, ast.IfExp):
        return np.where(_eval(node.test, env), _eval(node.body, env), _eval(node.orelse, env))
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(a, env) for a in node.args))
    if isinstance(node, ast.Subscript):
        return env[node.value.id][_index(node.slice)]
    raise RuleError(f"unexpected {type(node).__name__}")  # _check refused it already


def _index(node: ast.AST) -> Any:
    if isinstance(node, ast.Tuple):
        return tuple(_index(e) for e in node.elts)
    if isinstance(node, ast.Slice):
        return slice(*(None if b is None else _const(b) for b in (node.lower, node.upper, node.step)))
    return _const(node)


def _const(node: ast.AST) -> int:
    if isinstance(node, ast.UnaryOp):
        return -_const(node.operand)
    return node.value
