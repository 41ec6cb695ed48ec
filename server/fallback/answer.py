"""The reply's error branch for models with a fallback: a failure it covers completes with its outputs.

Reached only through ``ModelVersion.fallback`` (server/hooks.py's FailureAnswer), so models without one pay
nothing. The fallback model variant runs the failed request on another serving model, later.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..hooks import Complete
from ..models.stats import failure_reason

log = logging.getLogger(__name__)


def completed(fallback: Any, feeds: dict[str, np.ndarray], rows: int, names: list[str], complete: Complete,
              outcome: Any, exc: BaseException | None, cancelled: bool) -> None:
    """The wrapped completion (``fallback``: policy.Fallback): a covered failure is answered by the fallback; a success ends an episode."""
    if exc is not None and not cancelled:
        reason = fallback.reason_for(exc)
        if reason is not None and fallback.model is not None:
            if _run_fallback_model(fallback, feeds, rows, names, complete, outcome, exc, reason):
                return
        elif reason is not None:
            try:
                outcome = (fallback.compute(feeds, rows, names, reason, failure_reason(exc)), 0, None)
                exc = None
            except Exception:
                log.exception("model %s: its fallback failed; the request fails as the model did", fallback.label)
    elif not cancelled:
        fallback.answered()
    complete(outcome, exc, cancelled)


def _run_fallback_model(fallback: Any, feeds: dict[str, np.ndarray], rows: int, names: list[str],
                        complete: Complete, outcome: Any, exc: BaseException, reason: str) -> bool:
    """Run the failed request on the fallback model; its answer (or, failing that, the original error) goes
    to ``complete`` later. False when it cannot be started (the caller completes with the error)."""
    other = fallback.target(names)
    if other is None:
        return False

    def done(result, error: BaseException | None, cancelled: bool) -> None:
        other.leave()
        if error is None and not cancelled:
            arrays = fallback.served(list(result[0]), reason, failure_reason(exc))
            complete((arrays, 0, None), None, False)
        else:
            if error is not None:
                log.error("model %s: fallback model %s failed too: %s", fallback.label, other.label, error)
            complete(outcome, exc, False)

    other.enter()
    try:
        other.scheduler.start(feeds, names, rows, 0, None, None, done)
    except Exception as start_error:
        other.leave()
        log.error("model %s: fallback model %s refused the request: %s", fallback.label, other.label, start_error)
        return False
    return True
