"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from django.db import connections

T = TypeVar("T")


def tier_limit(world, **fields) -> None:
    """Sets fields of the world's tier (e.g. max_sync_in_flight=1) and saves it."""
    tier = world.tenant.tier
    for name, value in fields.items():
        setattr(tier, name, value)
    tier.save()


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Runs fn() in a daemon thread (closing its database connections after); its result lands in the list."""
    out: list = []

    def run():
        try:
            out.append(fn())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def poll_until(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05,
               message: str | Callable[[], str] = "", logs: Iterable[Path] = ()) -> T:
    """Calls predicate() every `interval` seconds until it returns something truthy, and returns that.

    The one way tests wait for something to happen (a worker to take work, a job to finish, a
    process to come up): a fixed sleep is too short on a loaded machine, so the test is flaky, and
    too long everywhere else. After `timeout` seconds the test fails, saying what it waited for
    (`message`, or a callable that builds it then, e.g. from the latest state) with the tail of
    each file in `logs` (the subprocesses' logs of the live tests).
    """
    ends = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = ends - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    what = message() if callable(message) else message
    tails = "".join(f"\n--- {path}:\n{Path(path).read_text(errors='replace')[-3000:]}" for path in logs)
    raise AssertionError(f"timed out ({timeout:g} s) waiting for {what or predicate}{tails}")
