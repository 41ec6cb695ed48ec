"""Registry sync: models pulled from an object store, verified, cached, warmed and hot-swapped."""
