"""Drift bins are counted in the tensor's units but labelled in the raw input's units (issue 24)."""

from __future__ import annotations

import numpy as np

from skewless.native.fit import fit
from skewless.server.telemetry.reference import HistogramBins, feature_bins


def _bins(config: dict, data: dict) -> dict[str, HistogramBins]:
    bins, _ = feature_bins(fit(config, data))
    return {b.name: b for b in bins if isinstance(b, HistogramBins)}


def test_labels_of_scaled_and_logged_features_are_raw_values():
    rng = np.random.default_rng(3)
    amount = rng.lognormal(4.0, 1.0, 5000)
    bins = _bins({"outputs": {"dense": "float32"},
                  "features": [{"name": "amount", "log1p": True, "scale": "standard"},
                               {"name": "plain", "input": "amount", "kind": "passthrough"}]},
                 {"amount": amount})
    scaled, plain = bins["amount"], bins["plain"]
    # The tensor's edges are standardized log values (around 0); the labels show amounts (tens to hundreds).
    assert abs(scaled.edges).max() < 5
    shown = [float(label.split()[-1]) for label in (scaled.labels[0], scaled.labels[-2])]
    assert shown[0] > 5 and shown[1] > 50
    # The raw deciles are what a person reads: the label of each edge is that decile of the raw column.
    deciles = np.quantile(amount, np.linspace(0.1, 0.9, 9))
    assert np.allclose([float(label.split()[-1]) for label in (scaled.labels[0], scaled.labels[-2])],
                       [deciles[0], deciles[-1]], rtol=0.01)
    # A feature without steps is labelled by its own edges, and both are counted the same way.
    assert np.allclose([float(label.split()[-1]) for label in (plain.labels[0], plain.labels[-2])],
                       [deciles[0], deciles[-1]], rtol=0.01)
    assert scaled.reference.sum() == plain.reference.sum() == amount.size
