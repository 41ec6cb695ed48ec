"""Triton's trace and logging extensions at the edges: TraceSetting / LogSettings messages and the REST
``/v2/trace/setting``, ``/v2/models/{m}/trace/setting`` and ``/v2/logging`` bodies <-> the controls the wiring
hands over (hooks.TraceControl, hooks.LogControl). Both are admin calls (security/guard.py)."""

from __future__ import annotations

from typing import Any

from skewless.protos import grpc_service_pb2 as pb

from ..dataplane import DataPlane
from ..errors import InvalidArgument, NotFound, Unimplemented
from ..hooks import LogControl, TraceControl


def trace_control(control: TraceControl | None) -> TraceControl:
    if control is None:
        raise Unimplemented("trace settings are not available on this server")
    return control


def log_control(control: LogControl | None) -> LogControl:
    if control is None:
        raise Unimplemented("log settings are not available on this server")
    return control


def check_model(dp: DataPlane, model: str) -> None:
    if model and model not in dp.repository.models:
        raise NotFound(f"Request for unknown model : {model}")


# -- gRPC ------------------------------------------------------------------------------------------------------
def trace_setting(control: TraceControl | None, dp: DataPlane,
                  req: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
    control = trace_control(control)
    check_model(dp, req.model_name)
    changes = {k: list(v.value) for k, v in req.settings.items()}
    values = control.update(req.model_name, changes) if changes else control.get(req.model_name)
    resp = pb.TraceSettingResponse()
    for key, value in values.items():
        resp.settings[key].value.extend(value)
    return resp


_LOG_CHOICE = {bool: "bool_param", int: "uint32_param", str: "string_param"}


def log_settings(control: LogControl | None, req: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
    control = log_control(control)
    changes = {}
    for key, value in req.settings.items():
        which = value.WhichOneof("parameter_choice")
        changes[key] = None if which is None else getattr(value, which)
    values = control.update(changes) if changes else control.get()
    resp = pb.LogSettingsResponse()
    for key, value in values.items():
        setattr(resp.settings[key], _LOG_CHOICE[type(value)], value)
    return resp


# -- REST (a change is forwarded to the sibling workers as the gRPC request) --------------------------------------
# the peer keys of the inference servicer's @everywhere TraceSetting and LogSettings
TRACE_KEY = "inference.GRPCInferenceService/TraceSetting"
LOG_KEY = "inference.GRPCInferenceService/LogSettings"


def trace_request(model: str, changes: dict[str, list[str] | None]) -> pb.TraceSettingRequest:
    req = pb.TraceSettingRequest(model_name=model)
    for key, values in changes.items():
        req.settings[key].value.extend(values or [])
    return req


def log_request(changes: dict[str, Any]) -> pb.LogSettingsRequest:
    req = pb.LogSettingsRequest()
    for key, value in changes.items():
        entry = req.settings[key]
        if value is not None:
            setattr(entry, _LOG_CHOICE[type(value)], value)
    return req


# -- REST ------------------------------------------------------------------------------------------------------
def rest_trace_changes(doc: dict) -> dict[str, list[str] | None]:
    """A trace settings body: each value a string, a list of strings, or null (clear)."""
    changes: dict[str, list[str] | None] = {}
    for key, value in doc.items():
        if value is None:
            changes[key] = None
        elif isinstance(value, str):
            changes[key] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            changes[key] = value
        else:
            raise InvalidArgument(f"trace setting '{key}' must be a string, a list of strings or null")
    return changes


def rest_trace_reply(values: dict[str, list[str]]) -> dict[str, Any]:
    """Triton's JSON: trace_level a list, every other setting one string."""
    return {k: v if k == "trace_level" else (v[0] if v else "") for k, v in values.items()}


__all__ = ["LOG_KEY", "TRACE_KEY", "check_model", "log_request", "trace_request", "log_control", "log_settings", "rest_trace_changes", "rest_trace_reply", "trace_control",
           "trace_setting"]
