"""Triton's shared-memory extensions: client-registered regions that requests read inputs from and write
outputs into (system shared memory, and CUDA shared memory where a GPU is usable). On the request path:
imports nothing from the side modules."""
