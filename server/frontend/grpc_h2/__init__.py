"""gRPC over HTTP/2 on the event loop's own sockets (``--grpc-transport h2``): see server.py."""
