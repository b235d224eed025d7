"""A process-local cache of API keys (with tenant and tier), kept exact by one Redis value.

Reading a key, its tenant and its tier from Postgres was the largest single cost of a cache
hit (DECISIONS #19). Each web process now keeps the keys it has seen, each stamped with the
*auth epoch* current when it was read. Every change to a key, tenant or tier (save, delete,
revoke, a tier edit in the admin) sets the epoch `auth:epoch` in Redis to a new random value
(`auth_epoch_bump`). The data plane reads the epoch in the same Redis round trip as the
request's limits (accounts/quotas.admit) and reloads a key whose stamp differs
before anything is served, so a revoked key still fails on its very next request in every
process. Other views compare the epoch themselves (one GET).

Backstops: an entry lives at most AUTH_CACHE_SECONDS (a bump lost to a Redis outage cannot
keep a revoked key alive longer than that), and a flushed Redis gets a fresh epoch, which
matches no stamp.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings
from django.db import transaction

from accounts.models import ApiKey
from embedplatform.redisconn import redis_client, script

logger = logging.getLogger(__name__)

EPOCH_KEY = "auth:epoch"
MAX_ENTRIES = 10_000

_entries: dict[str, tuple[ApiKey, str, float]] = {}  # prefix -> (key with tenant and tier, epoch, expiry)
_lock = threading.Lock()

# GET the epoch; a missing one (first start, flushed Redis) is set to ARGV[1], a fresh value.
EPOCH_GET = """
local e = redis.call('GET', KEYS[1])
if not e then e = ARGV[1]; redis.call('SET', KEYS[1], e) end
return e
"""


def epoch_new() -> str:
    return os.urandom(8).hex()


def auth_epoch_get() -> str:
    """The current auth epoch (one Redis round trip)."""
    value = script(EPOCH_GET)(keys=[EPOCH_KEY], args=[epoch_new()], client=redis_client())
    return value.decode() if isinstance(value, bytes) else str(value)


def auth_epoch_bump() -> None:
    """Invalidates every process's cached keys: now, and again when the caller's transaction
    commits (a reload in between could read the old rows). Failures are logged, not raised:
    the change itself is already made, and entries expire after AUTH_CACHE_SECONDS anyway."""

    def bump() -> None:
        try:
            redis_client().set(EPOCH_KEY, epoch_new())
        except Exception:
            logger.exception("could not bump the auth epoch; cached API keys expire within %ss",
                             settings.AUTH_CACHE_SECONDS)

    bump()
    transaction.on_commit(bump, robust=True)


def key_cached(prefix: str) -> tuple[ApiKey, str] | None:
    """(key, the epoch it was read at) if this process holds an unexpired copy."""
    entry = _entries.get(prefix)
    if entry is None:
        return None
    key, epoch, expires = entry
    if time.monotonic() >= expires:
        _entries.pop(prefix, None)
        return None
    return key, epoch


def key_remember(prefix: str, key: ApiKey, epoch: str) -> None:
    seconds = settings.AUTH_CACHE_SECONDS
    if seconds <= 0:
        return
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()  # bounded; a reload costs one query per key
        _entries[prefix] = (key, epoch, time.monotonic() + seconds)


def key_forget(prefix: str) -> None:
    _entries.pop(prefix, None)


def cache_clear() -> None:
    """Drops every cached key of this process (tests)."""
    _entries.clear()
