"""How a drain loop lives through failures: which ones are outages, and backing off while they last."""

from __future__ import annotations

import logging

import redis as redis_lib
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds after a failed step, doubling while it keeps failing

# Failures that are not the work's fault: a dependency is away. Work given back after one keeps its attempts.
OUTAGES = (OperationalError, InterfaceError, redis_lib.ConnectionError, redis_lib.TimeoutError)


class Backoff:
    """Consecutive failures of one kind of step: the delay before the next try doubles up to a
    bound, and only the first failure of a run is logged with its traceback (an outage of the
    database would otherwise log one per step)."""

    def __init__(self, what: str, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX,
                 log: logging.Logger = logger):
        self.what, self.first, self.most = what, first, most
        self.log = log  # the logger of the part that fails, so its lines read as that part's
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Records a failure and returns the delay before the next try."""
        self.failures += 1
        delay = min(self.first * 2 ** (self.failures - 1), self.most)
        if self.failures == 1:
            self.log.error("%s failed; retrying with backoff", self.what, exc_info=exc)
        elif self.failures & (self.failures - 1) == 0:  # 2, 4, 8, ...: a short line now and then
            self.log.warning("%s still failing (%d times in a row: %s: %s); next try in %.1fs",
                           self.what, self.failures, exc.__class__.__name__, str(exc)[:200], delay)
        return delay

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("%s works again after %d failures", self.what, self.failures)
        self.failures = 0
