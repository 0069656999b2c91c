"""The scheduler: turns due cron firings into ordinary jobs (``Store.fire_due``).

It runs inside every service replica; the database makes each firing happen once (jobs are
unique on schedule and due time), and a firing missed while the service was down runs once
at start-up, not once per missed time.
"""

from __future__ import annotations

import logging

from .background import BackgroundLoop
from .db import utcnow
from .store import Store

log = logging.getLogger("hwsearch.scheduler")


class Scheduler(BackgroundLoop):
    thread_name = "hwsearch-scheduler"

    def __init__(self, store: Store, *, poll_s: float = 5.0) -> None:
        super().__init__()
        self.store = store
        self.poll_s = poll_s

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                created = self.store.fire_due(utcnow())
                if created:
                    log.info("scheduled jobs created: %s", created)
            except Exception:  # a database hiccup must not kill the scheduler
                self.log_failure(log, "scheduler loop")
            self._stop.wait(self.poll_s)
