"""The host's idle CPU share, and the shadow's admission gate on it.

The dispatcher's own gates (in-flight primaries, the event-loop thread's CPU) see only this process: with
another process keeping the host saturated, the loop thread is idle between requests and the challenger ran
on 29-41% of sampled requests, taking cores the primaries needed. ``HostIdle`` reads the whole host's idle
share from ``/proc/stat`` deltas (idle + iowait ticks over all ticks; psutil's ``cpu_times`` where there is no
/proc), at most once per ``window_s`` (a quarter second), so a reading costs four small file reads a second, off the request path (the
mirror hook only compares a cached float). ``BusyHostGate`` admits at most ``share`` of the sampled requests
while the host's idle share is under ``min_idle``, counted over each busy spell.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

MIN_IDLE = 0.10  # host idle share under which the host counts as busy
BUSY_SHARE = 0.05  # of sampled requests mirrored at most while the host is busy
WINDOW_S = 0.25  # one /proc/stat read per guard tick (traffic.py checks every 0.25 s): a busy spell is seen within ~0.5 s

Reading = tuple[float, float]  # (idle ticks or seconds, total), both cumulative since boot


def read_proc_stat(path: str = "/proc/stat") -> Reading:
    """Cumulative (idle + iowait, all) CPU time of the host, from the first line of /proc/stat."""
    try:
        with open(path, "rb") as f:
            fields = f.readline().split()
    except OSError:
        t = psutil.cpu_times()
        return t.idle + getattr(t, "iowait", 0.0), float(sum(t))
    ticks = [float(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[3] + ticks[4], float(sum(ticks))


class HostIdle:
    """The host's idle share over the last complete window (1.0 until the first window has passed). The
    traffic manager's guard task calls ``idle`` every quarter second, so the reading stays current while no
    request asks; the mirror hook's call then only compares the clock."""

    def __init__(self, read: Callable[[], Reading] = read_proc_stat, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.read = read  # swappable: tests inject readings
        self.window_s = window_s
        self.clock = clock
        self.share = 1.0
        self._mark: tuple[float, Reading] | None = None
        self.idle()  # the first window starts now: a reading is ready one window after the server starts

    def idle(self) -> float:
        now = self.clock()
        mark = self._mark
        if mark is None:
            self._mark = (now, self.read())
        elif now - mark[0] >= self.window_s:
            reading = self.read()
            total = reading[1] - mark[1][1]
            if total > 0:
                self.share = min(1.0, max(0.0, (reading[0] - mark[1][0]) / total))
            self._mark = (now, reading)
        return self.share


class BusyHostGate:
    """Whether a sampled request may be mirrored: always on an idle-enough host, else at most ``share`` of them."""

    def __init__(self, host: HostIdle | None = None, min_idle: float = MIN_IDLE, share: float = BUSY_SHARE):
        self.host = host if host is not None else HostIdle()
        self.min_idle = min_idle
        self.share = share
        self.busy = False
        self.offered = 0  # sampled requests in the current busy spell
        self.admitted = 0

    def admit(self) -> bool:
        if self.min_idle <= 0 or self.host.idle() >= self.min_idle:
            self.busy = False
            return True
        if not self.busy:
            self.busy, self.offered, self.admitted = True, 0, 0
        self.offered += 1
        if self.admitted + 1 <= self.share * self.offered:
            self.admitted += 1
            return True
        return False
