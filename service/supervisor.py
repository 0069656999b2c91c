"""The dispatcher in a process of its own, supervised by the service.

Ray ends a driver's process when it loses its cluster, and a driver that reconnected in the
same process was still ended by Ray about 15 s later in 1 of 4 runs. So the API process never
connects to Ray: ``DispatcherProcess`` runs the ``Dispatcher`` (jobs, fits, and the Ray
connection or the embedded Ray) in a child process, and reads its health from a pipe. When the
child ends, whatever ended it (its Ray lost, killed, crashed), the supervisor hands the child's
claims back to the queue at once and starts a new child after a back-off; the API, the
dashboard and the scheduler keep serving meanwhile, and /healthz says what is down.

The child dies with the service: it asks Linux for SIGKILL when its parent dies (Ray's own
processes die with it the same way), so a killed service never leaves a runner behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from .dispatcher import MAX_REQUEUES, STUCK_AFTER_S
from .settings import Settings
from .store import Store

__all__ = ["EXIT_RAY_LOST", "DispatcherProcess"]

log = logging.getLogger("hwsearch.supervisor")

#: The child's exit status when it ended because its Ray was lost (sysexits' EX_TEMPFAIL).
EXIT_RAY_LOST = 75
#: Seconds between a child's end and the next child, growing with each end in a row; a child
#: that lived longer than the last step starts the sequence again.
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How often the child reports its health.
REPORT_EVERY_S = 1.0


class DispatcherProcess:
    """Starts, watches and restarts the dispatcher's process; ``health`` and ``ray_state``
    answer /healthz from the child's last report."""

    thread_name = "hwsearch-supervisor"

    def __init__(self, store: Store, settings: Settings, *, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.store = store
        self.settings = settings
        #: A child that has not reported for this long counts as stuck (paused, or hung).
        self.stuck_after_s = stuck_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._child: Any = None  # multiprocessing.Process (its stubs type it per context)
        self._conn: Connection | None = None
        self._report: dict[str, Any] = {}
        self._reported_at = time.monotonic()
        self._down = "not started yet"  # why no child runs now ("" while one runs)
        #: Children started so far (a restarted child is the second, third, ...).
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between children)."""
        child = self._child
        return child.pid if child is not None and child.is_alive() else None

    def start(self) -> None:
        # The child is started from this thread, which lives until ``stop``: the parent-death
        # signal the child asks for is sent when the thread that forked it ends.
        self._thread = threading.Thread(target=self._supervise, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            child, conn = self._child, self._conn
        if conn is not None:
            with suppress(OSError, ValueError):  # the child may be gone already
                conn.send("stop")
        if child is not None:
            child.join(timeout_s)
            if child.is_alive():
                child.kill()
                child.join(5)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def health(self) -> str:
        """ "ok", or "error: ..." when no child runs, or the child stopped reporting, or the
        child's own loops report a problem."""
        if self._stop.is_set():
            return "ok"  # shutting down: not a failure
        if self._down:
            return f"error: {self._down}"
        quiet_s = time.monotonic() - self._reported_at
        if quiet_s > self.stuck_after_s:
            return f"error: the dispatcher process has not reported for {quiet_s:.0f} s"
        # Before its first report the child is importing and connecting: not a failure yet.
        return str(self._report.get("dispatcher", "starting"))

    def ray_state(self) -> str:
        """Ray as the child last saw it (the API process holds no Ray connection)."""
        if self._down:
            return f"error: no dispatcher process is connected to Ray ({self._down})"
        return str(self._report.get("ray", "not connected yet (the dispatcher process is starting)"))

    # ---- the supervising thread ---------------------------------------------------------------
    def _supervise(self) -> None:
        ends_in_a_row = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code, worker = self._run_child()
            except Exception as exc:  # the child could not even start (no memory, no fds): retry
                log.exception("could not start the dispatcher process")
                code, worker = None, ""
                self._report = {"ray_lost": f"it did not start: {type(exc).__name__}: {exc}"}
            if self._stop.is_set():
                break
            lived_s = time.monotonic() - started
            ends_in_a_row = 1 if lived_s > BACKOFF_S[-1] else ends_in_a_row + 1
            delay_s = BACKOFF_S[min(ends_in_a_row, len(BACKOFF_S)) - 1]
            why = "its Ray was lost" if code == EXIT_RAY_LOST else f"exit status {code}"
            reason = str(self._report.get("ray_lost") or why)
            try:
                released = (
                    []
                    if not worker
                    else self.store.release(
                        worker, f"the dispatcher process ended ({reason})", max_requeues=MAX_REQUEUES
                    )
                )
            except Exception:  # the database is away too: the orphan timeout requeues them later
                log.exception("could not hand back the claims of %s", worker)
                released = []
            log.warning(
                "the dispatcher process ended (%s) after %.0f s; %s handed back; a new one starts in %.0f s",
                reason,
                lived_s,
                released or "nothing",
                delay_s,
            )
            self._down = f"the dispatcher process ended ({reason}); a new one starts in {delay_s:.0f} s"
            self._stop.wait(delay_s)

    def _run_child(self) -> tuple[int | None, str]:
        """Start one child and relay its reports until it ends; its exit status and worker id."""
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent has threads and sockets
        parent_end, child_end = ctx.Pipe()
        worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        child = ctx.Process(
            target=_child_main,
            args=(self.settings, worker, child_end, os.getpid()),
            name="hwsearch-dispatcher",
        )
        with self._lock:
            if self._stop.is_set():
                return 0, worker
            child.start()
            self._child, self._conn = child, parent_end
        child_end.close()
        self.starts += 1
        self._report, self._reported_at, self._down = {}, time.monotonic(), ""
        while not self._stop.is_set():
            try:
                if parent_end.poll(0.5):
                    self._report = parent_end.recv()
                    self._reported_at = time.monotonic()
            except (EOFError, OSError):  # the child's end closed: it is ending
                child.join(10)
            if not child.is_alive():
                break
        child.join(10)
        with self._lock:
            self._child, self._conn = None, None
        parent_end.close()
        return child.exitcode, worker


def _child_main(settings: Settings, worker: str, conn: Connection, parent_pid: int) -> None:
    """The dispatcher's process: run the dispatcher, report its health, end when asked, when
    the parent is gone or when its Ray was lost."""
    _die_with_parent(parent_pid)
    from .db import make_engine
    from .dispatcher import Dispatcher, ray_health

    store = Store(make_engine(settings.database_url))
    dispatcher = Dispatcher(store, settings, worker=worker)
    dispatcher.start()
    try:
        while True:
            if conn.poll(REPORT_EVERY_S) and conn.recv() == "stop":
                dispatcher.stop()
                return
            if os.getppid() != parent_pid:
                break  # the service is gone (the death signal covers this; belt and braces)
            report = {
                "dispatcher": dispatcher.health(),
                "ray": ray_health(settings.ray_address, block=False),
                "ray_lost": dispatcher.ray_lost,
                "current": dispatcher.current,
            }
            conn.send(report)
            if dispatcher.ray_lost:
                dispatcher.stop()
                # No interpreter clean-up: Ray's exit hooks would wait on the lost cluster.
                os._exit(EXIT_RAY_LOST)
    except (EOFError, OSError):  # the pipe closed: the service is gone
        pass
    os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: the pipe's end and
    the parent-pid check in the loop end it)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request was made
        os._exit(1)
