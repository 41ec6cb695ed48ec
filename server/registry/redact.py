"""Error text from a store, made safe to log and to show in RepositoryIndex: credentials never leave."""

from __future__ import annotations

import os
import re

_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS",
                "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN")
_USERINFO = re.compile(r"(://)[^/@\s]+@")
_SIGNED = re.compile(r"((?:X-Amz-(?:Credential|Signature|Security-Token)|Signature|AWSAccessKeyId|"
                     r"x-amz-security-token)=)[^&\s\"']+", re.I)


def redact(text: str) -> str:
    """``text`` without URL user info, presigned-URL credentials, or the values of credential variables."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _SIGNED.sub(r"\1***", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def describe_error(exc: BaseException) -> str:
    """One line naming the failure, redacted."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
