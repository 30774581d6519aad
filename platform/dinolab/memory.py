"""Process memory on Linux: the kernel's peak-RSS mark (VmHWM), which can be reset, and its reading.

A trial's ``peak_rss_mb`` must be its own even when Ray Tune reuses the actor process of an earlier trial,
so the training loop resets the mark when it starts; ``ru_maxrss`` (the process's lifetime peak) is the
fallback where /proc is not there or not writable.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Optional


def proc_status_kb(key: str) -> Optional[float]:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), or None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0).

    False where the file cannot be written, or where the kernel took the write but left the mark above the
    current RSS (a sandbox that ignores ``clear_refs``): then ``peak_rss_mb`` stays the lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = proc_status_kb("VmHWM"), proc_status_kb("VmRSS")
    # Right after a reset the mark equals the RSS; 16 MiB allows for growth between the write and the read.
    return hwm is not None and rss is not None and hwm <= rss + 16 * 1024


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last ``reset_peak_rss`` (VmHWM), else the process's lifetime
    peak (``ru_maxrss``, KiB on Linux)."""
    hwm = proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
