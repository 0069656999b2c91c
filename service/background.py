"""A daemon thread that runs a loop until stopped: the dispatcher's and the scheduler's base."""

from __future__ import annotations

import abc
import threading
import time


class BackgroundLoop(abc.ABC):
    """Contract: ``_loop`` returns soon after ``self._stop`` is set (wait on it, not sleep)."""

    thread_name = "hwsearch-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``time.monotonic()`` when the loop last came round (a loop sets it; /healthz reads it).
        self.last_tick = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @abc.abstractmethod
    def _loop(self) -> None: ...
