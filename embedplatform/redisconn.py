"""The one Redis client of a process (per thread), for everything but the Django cache.

Work lists, replies, quotas and usage counters all use REDIS_URL. The client has no read
timeout because BLPOP callers pass their own.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_local = threading.local()


def redis_client() -> redis.Redis:
    """A per-thread client on settings.REDIS_URL, created on first use."""
    client = getattr(_local, "client", None)
    if client is None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None, health_check_interval=30)
        _local.client = client
    return client


def script(source: str):
    """A registered Lua script bound to this thread's client (EVALSHA, loads it on a miss)."""
    scripts = getattr(_local, "scripts", None)
    if scripts is None:
        scripts = _local.scripts = {}
    registered = scripts.get(source)
    if registered is None:
        registered = scripts[source] = redis_client().register_script(source)
    return registered
