"""Dynamic batching: per-model queues, batch formation, the adaptive (SLO) controller, inline-or-thread cost."""
