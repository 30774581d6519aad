"""Claim locks and cancel markers under the storage root (no Ray, no MLflow)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dinolab.config import ConfigError
from dinolab.sweep.launcher import check_resources
from dinolab.sweep.locks import FileLock, cancel_marker, claim_path, clear_cancel, is_locked, request_cancel


def test_claim_is_exclusive_and_released(tmp_path):
    path = claim_path(tmp_path, "abc")
    assert not is_locked(path)  # no file yet: not locked, and nothing created
    assert not path.exists()
    first = FileLock(path)
    assert first.acquire(blocking=False)
    assert is_locked(path)
    second = FileLock(path)  # another open file description: flock conflicts even in one process
    assert not second.acquire(blocking=False)
    assert not second.acquire(timeout=0.2, poll_s=0.05)
    first.release()
    assert not is_locked(path)
    assert second.acquire(blocking=False)
    second.release()


def test_waiting_for_a_claim_gives_up_when_aborted(tmp_path):
    path = claim_path(tmp_path, "abc")
    holder = FileLock(path)
    holder.acquire()
    calls = []

    def abort() -> bool:
        calls.append(1)
        return len(calls) >= 3

    waiter = FileLock(path)
    assert waiter.acquire(blocking=True, poll_s=0.01, abort=abort) is False
    assert len(calls) == 3 and not waiter.held
    holder.release()


def test_shared_locks_coexist_and_block_an_exclusive_one(tmp_path):
    path = tmp_path / "launch.lock"
    a, b = FileLock(path, shared=True), FileLock(path, shared=True)
    assert a.acquire(blocking=False) and b.acquire(blocking=False)
    exclusive = FileLock(path)
    assert not exclusive.acquire(blocking=False)
    a.release()
    assert not exclusive.acquire(blocking=False)
    b.release()
    assert exclusive.acquire(blocking=False)  # the last launch out may close the parent run
    exclusive.release()


def test_a_claim_dies_with_its_process(tmp_path):
    """SIGKILL of the holder frees the claim: the next launch can take the trial over."""
    path = claim_path(tmp_path, "abc")
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2]);"
        "from dinolab.sweep.locks import FileLock; l = FileLock(sys.argv[1]); assert l.acquire(blocking=False);"
        "print('held', flush=True); time.sleep(60)"
    )
    import dinolab

    platform_dir = str(__import__("pathlib").Path(dinolab.__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), platform_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_locked(path)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while is_locked(path) and time.time() < deadline:
            time.sleep(0.05)
        assert not is_locked(path)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cancel_marker_round_trip(tmp_path):
    marker = request_cancel(tmp_path, "my-grid")
    assert marker == cancel_marker(tmp_path, "my-grid") and marker.exists()
    assert "cancelled at" in marker.read_text()
    assert clear_cancel(tmp_path, "my-grid") is True
    assert not marker.exists()
    assert clear_cancel(tmp_path, "my-grid") is False


NODE = {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}
SMALL = {"Alive": True, "Resources": {"CPU": 2.0}}


def test_resource_check_accepts_what_fits():
    check_resources([(1, 1.0, 0.0), (1, 4.0, 1.0), (2, 2.0, 0.5)], [NODE])
    check_resources([(3, 2.0, 0.0)], [NODE, SMALL])  # 2 workers on the big node, 1 on the small one
    check_resources([(1, 1.0, 0.0)], [NODE, {"Alive": False, "Resources": {"CPU": 64.0}}])


@pytest.mark.parametrize(
    "request_, words",
    [
        ((1, 1.0, 2.0), "no node has that much"),  # more GPUs than any node
        ((1, 8.0, 0.0), "no node has that much"),  # more CPUs than any node
        ((5, 1.0, 1.0), "holds only 1 such worker"),  # 5 workers x 1 GPU on a 1-GPU cluster
        ((4, 3.0, 0.0), "holds only 1 such worker"),  # bundles cannot straddle nodes: 3+3 > 4 on one node
    ],
)
def test_resource_check_rejects_the_impossible_in_one_line(request_, words):
    with pytest.raises(ConfigError) as err:
        check_resources([request_], [NODE, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    assert words in str(err.value) and "\n" not in str(err.value)
