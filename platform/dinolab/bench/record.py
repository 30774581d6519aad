"""What a benchmark figure returns, and the measuring tools every figure shares.

A ``Record`` is one figure measured on one machine: its value and the baseline measured in the same run,
the ratio the target is read on, pass/fail, the repeats and their spread, peak memory, and where, when and
how it was measured. Records are plain data (``to_dict`` / ``from_dict``) kept in bench/results/<machine>.json.
"""

from __future__ import annotations

import datetime
import os
import platform as _platform
import re
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from dinolab.memory import proc_status_kb, reset_peak_rss


@dataclass
class Record:
    """One figure's result. ``ratio`` is what ``target`` is read on (its meaning is in ``ratio_desc``)."""

    name: str
    title: str
    config: dict
    value: float
    unit: str
    baseline: Optional[float]
    baseline_desc: str
    ratio: Optional[float]
    ratio_desc: str
    target: str
    passed: Optional[bool]  # None: the figure has no target (a reference rate)
    repeats: int
    spread: dict  # {"min", "median", "max"} of the value over the repeats
    baseline_spread: dict
    peak_memory_mb: Optional[float]
    peak_memory_kind: str
    extra: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    torch: str = torch.__version__
    date: str = ""
    command: str = ""
    quick: bool = False
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def summary(values: Sequence[float]) -> dict:
    """{"min", "median", "max", "n"} of repeated measurements ({} when there are none)."""
    values = [float(v) for v in values]
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown cpu"


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: a file name for a machine."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_info() -> dict:
    """The machine: its slug (GPU name when CUDA is there, else the CPU model), CPU, GPU, versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = cpu_model()
    return {
        "slug": slug(gpu) if gpu else f"cpu-{slug(cpu)}",
        "cpu": cpu,
        "cpus": available_cpus(),
        "gpu": gpu,
        "gpus": torch.cuda.device_count() if gpu else 0,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": _platform.python_version(),
    }


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- memory


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc malloc_trim), so an RSS delta sees this figure's allocations."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak memory of the code inside ``with``, in MiB (``.mb``, described by ``.kind``).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (the tensors' peak, model included).
    CPU: the process's peak RSS minus its RSS at entry (tracemalloc does not see torch's allocator):
    the kernel's VmHWM after resetting it through /proc/self/clear_refs, else the growth of ru_maxrss
    (which under-reads when the process was larger before). Freed heap memory is handed back to the OS
    first (malloc_trim), else memory an earlier figure freed would serve this one unseen.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb: Optional[float] = None
        self.kind = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "CUDA max_memory_allocated"
            return self
        _release_free_memory()
        self._hwm = reset_peak_rss() and proc_status_kb("VmHWM") is not None
        if self._hwm:
            self._start_kb = proc_status_kb("VmRSS") or 0.0
            self.kind = "peak RSS - RSS at start (VmHWM)"
        else:
            self._start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "growth of peak RSS (ru_maxrss)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._hwm:
            self.mb = max(0.0, ((proc_status_kb("VmHWM") or 0.0) - self._start_kb) / 1024.0)
        else:
            self.mb = max(0.0, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._start_kb) / 1024.0)
