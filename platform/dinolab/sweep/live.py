"""A table redrawn in place at the bottom of a terminal, with other output scrolling above it.

While ``LiveTable`` runs, ``sys.stdout`` and ``sys.stderr`` (and logging handlers writing to them) go
through it: every complete line written by anyone (Ray's worker log lines, warnings, this process's
logging) is printed above the table and the table is drawn again below, so nothing tears it. The table
is erased with ANSI cursor movement (``ESC[nA`` up n lines, ``ESC[J`` clear to the end of the screen);
its lines are cut to the terminal's width so that each takes exactly one screen line.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import Callable, Optional, TextIO


class _Lines:
    """A text stream that hands complete lines to ``emit`` (what ``print`` and loggers write to)."""

    def __init__(self, emit: Callable[[str], None], real: TextIO):
        self.emit, self.real, self.buf = emit, real, ""

    def write(self, text: str) -> int:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.emit(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False  # what prints through here is not redrawn: a tqdm bar inside would tear the table

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.real, "encoding", "utf-8")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LiveTable:
    """``render()`` -> lines, drawn on ``stream`` (a terminal) at most every ``interval`` seconds."""

    def __init__(self, render: Callable[[], list[str]], stream: Optional[TextIO] = None, interval: float = 0.5):
        self.render, self.stream, self.interval = render, stream or sys.stderr, interval
        self.lock = threading.RLock()
        self.drawn = 0  # lines of the table on screen now
        self.last = 0.0
        self.saved: Optional[tuple] = None
        self.handlers: list[tuple[logging.StreamHandler, TextIO]] = []

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks (and so this table) into its experiment state: locks and streams stay here.
        return {k: v for k, v in self.__dict__.items() if k not in ("lock", "stream", "saved", "handlers")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.RLock(), stream=sys.stderr, saved=None, handlers=[])

    def __enter__(self) -> "LiveTable":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        out, err = sys.stdout, sys.stderr
        self.saved = (out, err)
        # Only streams that reach the terminal go through the table (a redirected stdout stays a file).
        proxies = {id(s): _Lines(self.print_above, s) for s in (out, err) if _isatty(s)}
        sys.stdout, sys.stderr = proxies.get(id(out), out), proxies.get(id(err), err)
        for logger in [logging.getLogger()] + [logging.getLogger(n) for n in logging.root.manager.loggerDict]:
            for h in getattr(logger, "handlers", []):
                if isinstance(h, logging.StreamHandler) and id(h.stream) in proxies:
                    self.handlers.append((h, h.stream))
                    h.setStream(proxies[id(h.stream)])
        self.draw(force=True)

    def stop(self) -> None:
        with self.lock:
            self.draw(force=True)
            for h, stream in self.handlers:
                h.setStream(stream)
            self.handlers = []
            if self.saved is not None:
                for proxy in (sys.stdout, sys.stderr):
                    if isinstance(proxy, _Lines) and proxy.buf:
                        self.print_above(proxy.buf)
                        proxy.buf = ""
                sys.stdout, sys.stderr = self.saved
                self.saved = None
            self.drawn = 0  # the last table stays on screen, above what follows

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write(f"\r\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0

    def _draw_lines(self) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        lines = [line[: max(1, width - 1)] for line in self.render()]
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)
        self.last = time.monotonic()

    def draw(self, force: bool = False) -> None:
        with self.lock:
            if not force and time.monotonic() - self.last < self.interval:
                return
            self._erase()
            self._draw_lines()

    def print_above(self, text: str) -> None:
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw_lines()
