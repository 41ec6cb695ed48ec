"""Decision-plane fallback: a constant or rule answer, flagged and counted, when a model fails or is shed."""

from .policy import PARAMETER, Fallback, FallbackArrays, FallbackHook, classify

__all__ = ["PARAMETER", "Fallback", "FallbackArrays", "FallbackHook", "classify"]
