"""Telemetry side modules: metrics, traces and drift monitoring, reached from the batch path only through the
narrow hooks a model version exposes (``ModelVersion.batch_observer``); the hot path never imports them."""
