"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time

from django.db import connections


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


def until(predicate, timeout: float = 5.0) -> None:
    """Polls predicate() every 20 ms; fails the test after `timeout` seconds."""
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, "timed out"
        time.sleep(0.02)
