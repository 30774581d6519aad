"""Peak-RSS bookkeeping: a trial's peak must not include what an earlier trial in the same process used."""

import subprocess
import sys
import textwrap

import pytest

from dinolab.memory import proc_status_kb

# Run in a fresh process: the pytest process's heap (after the training tests) says nothing dependable about
# what a freed block returns to the OS. An anonymous mmap, touched and closed, is resident and then returned.
SCRIPT = textwrap.dedent("""
    import mmap, sys
    from dinolab.memory import peak_rss_mb, proc_status_kb, reset_peak_rss

    def resident_block(mib):
        block = mmap.mmap(-1, mib * 2**20)
        for offset in range(0, len(block), 4096):
            block[offset] = 1  # touch every page: resident
        return block

    block = resident_block(300)
    with_block = peak_rss_mb()
    block.close()  # munmap: the pages go back to the OS
    if not reset_peak_rss():
        print("SKIP the kernel does not reset VmHWM here"); sys.exit(0)
    after_reset = peak_rss_mb()
    assert after_reset < with_block - 250, (after_reset, with_block)  # the 300 MiB peak is forgotten
    assert after_reset >= proc_status_kb("VmRSS") / 1024.0 - 1, after_reset  # the mark restarts at the RSS
    again = resident_block(100)
    assert peak_rss_mb() >= after_reset + 90, (peak_rss_mb(), after_reset)  # new growth is seen
    print("OK")
""")


@pytest.mark.skipif(proc_status_kb("VmHWM") is None, reason="needs Linux /proc/self/status")
def test_reset_forgets_an_earlier_peak():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip()[5:])
    assert done.stdout.strip() == "OK"


def test_a_kernel_that_ignores_the_reset_is_reported(monkeypatch):
    """A sandbox may take the write to clear_refs and keep the old mark: reset_peak_rss must then say False."""
    import dinolab.memory as memory

    if not memory.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    marks = {"VmHWM": 2_500_000.0, "VmRSS": 2_000_000.0}  # KiB: the mark stayed 500 MiB above the RSS
    monkeypatch.setattr(memory, "proc_status_kb", lambda key: marks[key])
    assert memory.reset_peak_rss() is False
    marks["VmHWM"] = marks["VmRSS"] + 1024  # a mark that did restart (1 MiB of growth since)
    assert memory.reset_peak_rss() is True
