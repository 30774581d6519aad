"""Lock files and marker files under the storage root: who trains a trial, who creates a grid's parent run.

Layout (all under one storage root, shared by every launch and every node):
  trials/<trial id>/claim.lock   held (flock, exclusive) by the one process that trains the trial
  trials/<trial id>/tags.lock    held for the moment of a read-modify-write of a run's grid tags
  grids/<grid>/parent.lock       held while a launch finds or creates the grid's parent run
  grids/<grid>/launch.lock       held *shared* by every live launch of the grid (the last one closes the parent)
  grids/<grid>/cancel            the cancel marker: trials of the grid stop at their next step

``fcntl.flock`` locks belong to an open file description and vanish when the process that holds
them dies (also on SIGKILL), so a crashed trainer never leaves a stale claim behind. On NFS, Linux
maps flock to POSIX byte-range locks, which work across nodes when the mount supports locking.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FileLock:
    """An flock on ``path`` (created if needed), exclusive or shared, released by ``release()`` or death.

    ``acquire(blocking=True)`` polls every ``poll_s`` seconds so that a waiter can give up when
    ``abort()`` turns true (e.g. a cancel marker appeared) or after ``timeout`` seconds.
    """

    def __init__(self, path: Path | str, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._fd = fd
        if not self.shared:  # who holds it, for people reading the folder (the lock itself is the flock)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.uname().nodename} {os.getpid()} {int(time.time())}\n".encode())
        return True

    def acquire(
        self,
        blocking: bool = True,
        timeout: Optional[float] = None,
        poll_s: float = 0.5,
        abort: Optional[Callable[[], bool]] = None,
    ) -> bool:
        """True once held; False when non-blocking and taken, on timeout, or when ``abort()`` is true."""
        if self._fd is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try():
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            if abort is not None and abort():
                return False
            time.sleep(poll_s)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: Path | str) -> bool:
    """Whether some process holds an flock on ``path`` right now (a missing file is not locked)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def safe_name(name: str) -> str:
    """A grid name as a folder name (grid names are already restricted; this is belt and braces)."""
    return _SAFE.sub("_", name)


def storage_root(storage: Path | str) -> Path:
    return Path(storage).expanduser().resolve()


def claim_path(storage: Path | str, trial_id: str) -> Path:
    return storage_root(storage) / "trials" / trial_id / "claim.lock"


def tags_lock_path(storage: Path | str, trial_id: str) -> Path:
    return storage_root(storage) / "trials" / trial_id / "tags.lock"


def grid_dir(storage: Path | str, grid: str) -> Path:
    return storage_root(storage) / "grids" / safe_name(grid)


def parent_lock_path(storage: Path | str, grid: str) -> Path:
    return grid_dir(storage, grid) / "parent.lock"


def launch_lock_path(storage: Path | str, grid: str) -> Path:
    return grid_dir(storage, grid) / "launch.lock"


def cancel_marker(storage: Path | str, grid: str) -> Path:
    return grid_dir(storage, grid) / "cancel"


def request_cancel(storage: Path | str, grid: str) -> Path:
    """Write the grid's cancel marker (atomically); returns its path."""
    marker = cancel_marker(storage, grid)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f"cancel.tmp{os.getpid()}")
    tmp.write_text(f"cancelled at {int(time.time())} by {os.uname().nodename} pid {os.getpid()}\n")
    os.replace(tmp, marker)
    return marker


def clear_cancel(storage: Path | str, grid: str) -> bool:
    """Remove the grid's cancel marker; True if there was one."""
    try:
        cancel_marker(storage, grid).unlink()
        return True
    except FileNotFoundError:
        return False
