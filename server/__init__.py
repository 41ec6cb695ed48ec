"""skewless server: KServe v2 / Triton gRPC front end, model repository, runtime and side modules."""
