"""Progress that people can follow: a bar on a terminal, lines in a log.

On a terminal, :class:`Progress` is a tqdm bar. When the output goes to a file or a pipe (a batch job,
``nohup``, CI), a bar is a blur of carriage returns that says nothing until the end, so instead
it writes log lines: one per finished input (``restoring 3/7: photo.jpg``), and, while one step
takes long, one at least every :data:`HEARTBEAT_S` seconds (``restoring 3/7: still working on
photo.jpg, 20 s``), so a log shows the job is alive and where it is.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Optional

from tqdm import tqdm

__all__ = ["HEARTBEAT_S", "Progress"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 10.0  # a line at least this often while a step runs, when the output is not a terminal


class Progress:
    """A count of finished items towards a total: a bar on a terminal, log lines elsewhere.

    ``per_item``: a line per finished item (files); False: one per ``heartbeat_s`` at most (video
    frames). ``lines``: force log lines (True) or a bar (False); None decides by whether stderr is a
    terminal. ``enabled=False``: nothing at all.
    """

    def __init__(self, *, total: Optional[int], desc: str, unit: str, enabled: bool = True,
                 lines: Optional[bool] = None, per_item: bool = True, leave: bool = True,
                 heartbeat_s: float = HEARTBEAT_S, initial: int = 0) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.count = initial
        self._lines = enabled and (not sys.stderr.isatty() if lines is None else lines)
        self._per_item = per_item
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave,
                         disable=not enabled or self._lines)
        self._current: Optional[str] = None
        self._since = time.monotonic()
        self._last_line = self._since
        self._interval = heartbeat_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None
        if self._lines:
            self._heartbeat = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
            self._heartbeat.start()

    def working_on(self, item: str) -> None:
        """The item now being worked on (named by the heartbeat lines)."""
        with self._lock:
            self._current, self._since = item, time.monotonic()

    def update(self, n: int = 1, item: Optional[str] = None) -> None:
        """``n`` more items finished (``item``: the one that just did, for the log line)."""
        with self._lock:
            self.count += n
            self._since = time.monotonic()
            if item is not None and self._current == item:
                self._current = None
            if self._lines and (self._per_item or self._since - self._last_line >= self._interval):
                self._log(item)
        self._bar.update(n)

    def _position(self) -> str:
        return f"{self.desc} {self.count}/{self.total}" if self.total else f"{self.desc} {self.count} {self.unit}s"

    def _log(self, item: Optional[str]) -> None:
        self._last_line = time.monotonic()
        logger.info("%s%s", self._position(), f": {item}" if item else "")

    def _beat(self) -> None:
        while not self._stop.wait(min(self._interval, 1.0)):
            with self._lock:
                now = time.monotonic()
                if now - self._last_line < self._interval:
                    continue
                working = f"still working on {self._current}, " if self._current else "still working, "
                self._last_line = now
                logger.info("%s: %s%d s", self._position(), working, now - self._since)

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()

