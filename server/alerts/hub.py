"""Alert hooks ("intervention"): drift, quality and guardrail thresholds call configured webhooks and commands.

``notify`` is cheap and never blocks: it decides under a lock whether the (kind, subject) episode fires — once
when its threshold is crossed, again only after it cleared and re-crossed, or after ``renotify_s`` while it
stays crossed — and puts the alert on a bounded queue (``background.BackgroundWriter``; full: dropped,
counted, logged). One background thread delivers: webhooks (JSON POST, timeout, retries with exponential
backoff) and commands (argv, timeout, the alert as JSON in ``SKEWLESS_ALERT``). Every call is counted by (hook, kind, outcome) and logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..background import BackgroundWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    kinds: frozenset[str] | None = None  # None: every kind


@dataclass(frozen=True)
class Command:
    name: str
    argv: tuple[str, ...]
    timeout_s: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    kinds: frozenset[str] | None = None


@dataclass
class AlertSettings:
    webhooks: list[Webhook] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    renotify_s: float = 3600.0  # 0: only when an episode starts
    queue_size: int = 256
    drift_level: str = "alert"  # the drift level that opens an episode: warn or alert


def load_settings(path: Path | str) -> AlertSettings:
    """Read ``--alerts FILE``: JSON, TOML, or YAML (when pyyaml is installed). Raises ValueError saying what is
    wrong and what was expected."""
    path = Path(path)
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomllib

        doc = tomllib.loads(text)
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML needs pyyaml (pip install 'skewless[features]'); or use JSON or "
                             "TOML") from None
        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    return parse_settings(doc, str(path))


def _kinds(entry: dict, where: str) -> frozenset[str] | None:
    kinds = entry.get("kinds")
    if kinds is None:
        return None
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise ValueError(f"{where}: 'kinds' must be a list of alert kinds (e.g. [\"drift\", \"canary_rollback\"])")
    return frozenset(kinds)


def parse_settings(doc: Any, where: str) -> AlertSettings:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping with 'webhooks' and/or 'commands'")
    unknown = set(doc) - {"webhooks", "commands", "renotify_s", "queue_size", "drift_level"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected webhooks, commands, renotify_s, "
                         "queue_size, drift_level")
    s = AlertSettings(renotify_s=float(doc.get("renotify_s", 3600.0)), queue_size=int(doc.get("queue_size", 256)),
                      drift_level=str(doc.get("drift_level", "alert")))
    if s.drift_level not in ("warn", "alert") or s.renotify_s < 0 or s.queue_size < 1:
        raise ValueError(f"{where}: drift_level must be warn or alert, renotify_s >= 0, queue_size >= 1")
    for i, w in enumerate(doc.get("webhooks", [])):
        at = f"{where}: webhooks[{i}]"
        if not isinstance(w, dict) or not str(w.get("url", "")).startswith(("http://", "https://")):
            raise ValueError(f"{at}: needs 'url' starting with http:// or https://")
        s.webhooks.append(Webhook(str(w.get("name", f"webhook{i}")), w["url"], dict(w.get("headers", {})),
                                  float(w.get("timeout_s", 5.0)), int(w.get("retries", 3)),
                                  float(w.get("backoff_s", 0.5)), _kinds(w, at)))
    for i, c in enumerate(doc.get("commands", [])):
        at = f"{where}: commands[{i}]"
        argv = c.get("argv") if isinstance(c, dict) else None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"{at}: needs 'argv', a non-empty list of strings (no shell)")
        s.commands.append(Command(str(c.get("name", f"command{i}")), tuple(argv), float(c.get("timeout_s", 10.0)),
                                  {str(k): str(v) for k, v in dict(c.get("env", {})).items()}, _kinds(c, at)))
    if not s.webhooks and not s.commands:
        raise ValueError(f"{where}: no webhooks or commands configured")
    return s


class AlertHub:
    """Episodes, the bounded queue and the delivery thread."""

    def __init__(self, settings: AlertSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._episodes: dict[tuple[str, str], float | None] = {}  # open episode -> when it last fired
        self.counts: dict[tuple[str, str, str], int] = {}  # (hook, kind, outcome) -> calls
        self.dropped = 0
        self._writer: BackgroundWriter[dict[str, Any]] = BackgroundWriter(
            "alert-hooks", self._deliver, capacity=settings.queue_size, label="alert delivery")
        self._writer.start()

    def notify(self, kind: str, subject: str, value: float | None = None, threshold: float | None = None,
               active: bool | None = True, **details: Any) -> bool:
        """A threshold state: ``active`` True (crossed), False (cleared), or None for a one-off event (a
        rollback) that always fires. Returns whether an alert was queued."""
        now = time.monotonic()
        key = (kind, subject)
        with self._lock:
            if active is False:
                self._episodes.pop(key, None)
                return False
            if active:
                last = self._episodes.get(key)
                if last is not None and (not self.settings.renotify_s or now - last < self.settings.renotify_s):
                    return False
                self._episodes[key] = now
        alert = {"kind": kind, "subject": subject, "value": value, "threshold": threshold, "details": details,
                 "time": time.time(), "state": "firing" if active else "event"}
        if not self._writer.offer(alert):
            with self._lock:
                self.dropped += 1
            log.error("alert queue full (%d): dropped %s alert for %s", self.settings.queue_size, kind, subject)
            return False
        return True

    def status(self) -> dict[str, Any]:
        """Hooks, the queue, calls per hook by outcome, and the episodes open now (any thread)."""
        with self._lock:
            per_hook: dict[str, dict[str, int]] = {}
            for (hook, _kind, outcome), n in self.counts.items():
                per_hook.setdefault(hook, {})[outcome] = per_hook.setdefault(hook, {}).get(outcome, 0) + n
            episodes = [{"kind": k, "subject": s} for (k, s) in self._episodes]
            dropped = self.dropped
        hooks = [{"name": h.name, "type": "webhook" if isinstance(h, Webhook) else "command",
                  "calls": per_hook.get(h.name, {})} for h in [*self.settings.webhooks, *self.settings.commands]]
        return {"hooks": hooks, "queued": len(self._writer), "dropped": dropped, "open_episodes": episodes}

    def _deliver(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            for hook in [*self.settings.webhooks, *self.settings.commands]:
                if hook.kinds is not None and alert["kind"] not in hook.kinds:
                    continue
                try:
                    outcome = self._post(hook, alert) if isinstance(hook, Webhook) else self._exec(hook, alert)
                except Exception as exc:  # a hook bug must not stop the others
                    outcome = "failed"
                    log.exception("alert hook '%s' raised: %s", hook.name, exc)
                with self._lock:
                    k = (hook.name, alert["kind"], outcome)
                    self.counts[k] = self.counts.get(k, 0) + 1
                log.warning("alert %s %s (value %s, threshold %s) -> hook '%s': %s", alert["kind"],
                            alert["subject"], alert["value"], alert["threshold"], hook.name, outcome)

    def _post(self, hook: Webhook, alert: dict[str, Any]) -> str:
        body = json.dumps(alert, default=str).encode()
        headers = {"Content-Type": "application/json", **hook.headers}
        why = ""
        for attempt in range(hook.retries + 1):
            if attempt:
                time.sleep(hook.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(hook.url, body, headers, method="POST")
                with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:
                    resp.read()
                return "ok" if attempt == 0 else "ok_after_retry"
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                why = str(getattr(exc, "reason", exc))
            log.info("alert webhook '%s' attempt %d failed: %s", hook.name, attempt + 1, why)
        log.error("alert webhook '%s' failed after %d attempts: %s", hook.name, hook.retries + 1, why)
        return "failed"

    def _exec(self, hook: Command, alert: dict[str, Any]) -> str:
        env = {**os.environ, **hook.env, "SKEWLESS_ALERT": json.dumps(alert, default=str)}
        try:
            done = subprocess.run(hook.argv, env=env, timeout=hook.timeout_s, capture_output=True, check=False)
        except subprocess.TimeoutExpired:
            return "timeout"
        except OSError as exc:
            log.error("alert command '%s' could not run: %s", hook.name, exc)
            return "failed"
        if done.returncode != 0:
            log.error("alert command '%s' exited %d: %s", hook.name, done.returncode,
                      done.stderr.decode(errors="replace")[-500:])
            return "failed"
        return "ok"

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the thread."""
        self._writer.close(timeout)

    # -- sources ---------------------------------------------------------------------------------------------
    def attach_drift(self, mv: Any) -> None:
        """The repository's version hook: alert on the version's drift monitor's level changes."""
        from ..telemetry.drift import DriftMonitor

        monitor = mv.batch_observer
        if not isinstance(monitor, DriftMonitor):
            return
        t = monitor.settings.thresholds
        threshold = t.alert if self.settings.drift_level == "alert" else t.warn
        rank = {"ok": 0, "warn": 1, "alert": 2}
        need = rank[self.settings.drift_level]

        def on_level(ev) -> None:
            self.notify("drift", f"{ev.model}/{ev.version}/{ev.kind}/{ev.name}", ev.psi, threshold,
                        rank.get(ev.level, 0) >= need, level=ev.level, previous=ev.previous,
                        window_rows=ev.window_rows, model=ev.model, version=ev.version)

        monitor.subscribe(on_level)

    def attach_quality(self, monitor: Any) -> None:
        """Alert on live-quality breaches (lineage's QualityMonitor): raised on a breach, cleared when back."""

        def on_breach(b) -> None:
            self.notify("quality", f"{b.model}/{b.version}/{b.metric}/{b.window_s:g}s", b.value, b.threshold,
                        b.active, model=b.model, version=b.version, metric=b.metric, window_s=b.window_s)

        monitor.on_breach(on_breach)


# -- the process's hub: None unless --alerts; notify() is then a no-op -------------------------------------
_current: AlertHub | None = None


def install(hub: AlertHub | None) -> None:
    global _current
    _current = hub


def notify(kind: str, subject: str, value: float | None = None, threshold: float | None = None,
           active: bool | None = None, **details: Any) -> bool:
    """Raise (``active`` True), clear (False) or send a one-off (None) alert through the server's hooks."""
    hub = _current
    return hub.notify(kind, subject, value, threshold, active, **details) if hub is not None else False
