"""Load-test and baseline tools for skewless and any other KServe v2 gRPC server (``skewless bench``).

Scripts, not tests (see DESIGN.md): each writes JSON plus a PNG; the test suite only runs them for a second.
"""
