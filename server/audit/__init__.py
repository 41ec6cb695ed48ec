"""The audit log of serving changes (loads, swaps, rollbacks, canary and shadow changes), hash-chained."""

from .log import AuditLog, caller, install, record, verify

__all__ = ["AuditLog", "caller", "install", "record", "verify"]
