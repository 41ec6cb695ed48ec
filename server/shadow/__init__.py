"""Shadow traffic and canary rollout: a side module reached from the request path through ``ModelVersion.traffic``.

``traffic.TrafficManager`` keeps the per-model settings (from config parameters and the ``skewless.v1``
TrafficAdmin RPC) and sets ``mv.traffic`` on the versions that need it; everywhere else it stays None, and
the data plane's only cost is that None check.
"""
