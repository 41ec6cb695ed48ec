"""A sliding window of bin counts: the last ~N rows' counts, without keeping any row.

Rows arrive in small groups (one sampled batch at a time) as one count vector per group. Counts accumulate
in the current chunk; a chunk closes once it holds ``window_rows / chunks`` rows, and the oldest closed
chunks are dropped while the rest still cover ``window_rows``. The window therefore covers between
``window_rows`` and ``window_rows`` plus one chunk of the most recent rows, and sliding it costs one vector
subtraction per chunk. Totals are kept incrementally in int64, so they never drift from the chunks' sum.
"""

from __future__ import annotations

from collections import deque

import numpy as np

DEFAULT_CHUNKS = 10


class SlidingCounts:
    def __init__(self, n_bins: int, window_rows: int, chunks: int = DEFAULT_CHUNKS) -> None:
        if window_rows < 1 or chunks < 1:
            raise ValueError("window_rows and chunks must be >= 1")
        self.window_rows = window_rows
        self.chunk_rows = max(1, window_rows // chunks)
        self._closed: deque[tuple[int, np.ndarray]] = deque()
        self._current = np.zeros(n_bins, dtype=np.int64)
        self._current_rows = 0
        self._totals = np.zeros(n_bins, dtype=np.int64)
        self.rows = 0  # rows the window covers now

    def add(self, counts: np.ndarray, rows: int) -> None:
        """Add one group of rows' bin counts (``rows`` is the number of rows, whatever the bins sum to)."""
        self._current += counts
        self._totals += counts
        self._current_rows += rows
        self.rows += rows
        if self._current_rows >= self.chunk_rows:
            self._closed.append((self._current_rows, self._current))
            self._current = np.zeros_like(self._totals)
            self._current_rows = 0
            while self._closed and self.rows - self._closed[0][0] >= self.window_rows:
                old_rows, old = self._closed.popleft()
                self._totals -= old
                self.rows -= old_rows

    def totals(self) -> np.ndarray:
        """Counts per bin over the window (a copy)."""
        return self._totals.copy()
