"""A daemon thread that runs a loop until stopped: the dispatcher's and the scheduler's base."""

from __future__ import annotations

import abc
import logging
import threading
import time

#: The least time between two logged failures of one loop.
QUIET_S = 30.0


class BackgroundLoop(abc.ABC):
    """Contract: ``_loop`` returns soon after ``self._stop`` is set (wait on it, not sleep)."""

    thread_name = "hwsearch-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``time.monotonic()`` when the loop last came round (a loop sets it; /healthz reads it).
        self.last_tick = time.monotonic()
        self._failed_at = -1e9
        self._failures_unlogged = 0

    def log_failure(self, log: logging.Logger, what: str) -> None:
        """Log the exception being handled with its traceback at most every ``QUIET_S``
        seconds: a database away for a minute fails every poll, and one traceback (with the
        count of the ones left out) says as much as a hundred."""
        now = time.monotonic()
        if now - self._failed_at < QUIET_S:
            self._failures_unlogged += 1
            return
        skipped, self._failures_unlogged, self._failed_at = self._failures_unlogged, 0, now
        more = f" (and {skipped} more failures since the last report)" if skipped else ""
        log.exception("%s%s", what, more)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @abc.abstractmethod
    def _loop(self) -> None: ...
