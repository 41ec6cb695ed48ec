"""Lineage: the prediction log, delayed-label joins and rolling live quality per model version."""
