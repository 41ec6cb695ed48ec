"""Telemetry: metrics (Triton's names and ours, Prometheus and OTLP) and drift, hanging off the request path.

Nothing on the request path imports this package: it reads what the path already counts (models/stats.py)
when it is collected, and gets batches through ModelVersion.batch_observer.
"""
