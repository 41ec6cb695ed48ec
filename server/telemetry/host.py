"""Process and GPU figures: CPU time, resident memory, open file descriptors; NVML utilisation and memory.

GPU figures come from NVML (nvidia-ml-py, installed with the ``gpu`` extra) and are simply absent where it
cannot start (no driver, no GPU, package not installed): one log line says why, nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psutil
from opentelemetry.metrics import CallbackOptions, Observation

from .spec import MetricSpec, by_name

log = logging.getLogger(__name__)

METRICS = (
    MetricSpec("skewless_process_cpu_seconds", "counter", "CPU time of the server process, user and system",
               unit="s"),
    MetricSpec("skewless_process_resident_memory_bytes", "gauge", "Resident memory of the server process",
               unit="By"),
    MetricSpec("skewless_process_open_fds", "gauge", "Open file descriptors of the server process"),
    MetricSpec("skewless_gpu_utilization_ratio", "gauge", "GPU busy fraction over NVML's last sample period",
               ("gpu",)),
    MetricSpec("skewless_gpu_memory_used_bytes", "gauge", "GPU memory in use (all processes)", ("gpu",), "By"),
    MetricSpec("skewless_gpu_memory_total_bytes", "gauge", "GPU memory in all", ("gpu",), "By"),
)
SPEC = by_name(METRICS)


class HostMetrics:
    def __init__(self) -> None:
        self.process = psutil.Process()
        self.nvml = _open_nvml()

    def register(self, meter) -> None:
        SPEC["skewless_process_cpu_seconds"].observe(meter, [self._cpu])
        SPEC["skewless_process_resident_memory_bytes"].observe(meter, [self._rss])
        SPEC["skewless_process_open_fds"].observe(meter, [self._fds])
        if self.nvml is not None:
            SPEC["skewless_gpu_utilization_ratio"].observe(meter, [self._gpu_util])
            SPEC["skewless_gpu_memory_used_bytes"].observe(meter, [self._gpu_used])
            SPEC["skewless_gpu_memory_total_bytes"].observe(meter, [self._gpu_total])

    def _cpu(self, _options: CallbackOptions) -> Iterator[Observation]:
        t = self.process.cpu_times()
        yield Observation(t.user + t.system)

    def _rss(self, _options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(self.process.memory_info().rss)

    def _fds(self, _options: CallbackOptions) -> Iterator[Observation]:
        try:
            yield Observation(self.process.num_fds())
        except (AttributeError, psutil.Error):  # not on this platform
            return

    def _gpus(self):
        nvml = self.nvml
        for i in range(nvml.nvmlDeviceGetCount()):
            yield {"gpu": str(i)}, nvml.nvmlDeviceGetHandleByIndex(i)

    def _gpu_util(self, _options: CallbackOptions) -> Iterator[Observation]:
        for attrs, handle in self._gpus():
            yield Observation(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0, attrs)

    def _gpu_used(self, _options: CallbackOptions) -> Iterator[Observation]:
        for attrs, handle in self._gpus():
            yield Observation(self.nvml.nvmlDeviceGetMemoryInfo(handle).used, attrs)

    def _gpu_total(self, _options: CallbackOptions) -> Iterator[Observation]:
        for attrs, handle in self._gpus():
            yield Observation(self.nvml.nvmlDeviceGetMemoryInfo(handle).total, attrs)


def _open_nvml():
    try:
        import pynvml
    except ImportError:
        log.debug("no GPU metrics: nvidia-ml-py is not installed")
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("no GPU metrics: NVML did not start (%s)", exc)
        return None
    return pynvml
