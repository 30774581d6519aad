"""Peak-RSS bookkeeping: a trial's peak must not include what an earlier trial in the same process used."""

import numpy as np
import pytest

from dinolab.memory import peak_rss_mb, proc_status_kb, reset_peak_rss


@pytest.mark.skipif(proc_status_kb("VmHWM") is None, reason="needs Linux /proc/self/status")
def test_reset_forgets_an_earlier_peak():
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched: resident
    with_block = peak_rss_mb()
    del block  # a large allocation is an mmap: freeing it returns the pages to the OS
    if not reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    after_reset = peak_rss_mb()
    assert after_reset < with_block - 250  # the 300 MiB peak is forgotten
    assert after_reset >= proc_status_kb("VmRSS") / 1024.0 - 1  # and the mark restarts at the current RSS
    again = np.ones(100 * 2**20 // 8)
    assert peak_rss_mb() >= after_reset + 90  # new growth is seen
    del again
