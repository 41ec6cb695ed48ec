"""Transports only: the gRPC servicer, the HTTP/REST endpoint, app wiring and the CLI. No validation here."""
