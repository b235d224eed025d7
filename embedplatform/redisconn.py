"""The one Redis client of a process (per thread), for everything but the Django cache.

Work lists, replies, quotas and usage counters all use REDIS_URL. The client connects within
REDIS_CONNECT_TIMEOUT and gives up on a reply after REDIS_SOCKET_TIMEOUT, so a Redis that is
down or cut off by the network is a RedisError (a 503) within seconds, never a hung thread. A
blocking wait longer than that (BLPOP) waits in slices shorter than the socket timeout
(embeddings/waiting.py work_wait; the drain loop blocks for about a second at a time).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.commands.core import Script

_local = threading.local()
_generation = 0  # bumped when a Redis setting changes (tests): every thread makes a new client
_SETTINGS = {"REDIS_URL", "REDIS_CONNECT_TIMEOUT", "REDIS_SOCKET_TIMEOUT"}


def redis_client() -> redis.Redis:
    """A per-thread client on settings.REDIS_URL, created on first use."""
    client = getattr(_local, "client", None)
    if client is None or _local.generation != _generation:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            health_check_interval=30,
        )
        _local.client, _local.generation, _local.scripts = client, _generation, {}
    return client


def blocking_slice() -> float:
    """The longest a single blocking command (BLPOP) may block: well inside the socket timeout,
    whose clock runs while the server blocks."""
    return max(0.01, min(1.0, settings.REDIS_SOCKET_TIMEOUT / 2))


def script(source: str) -> Script:
    """A registered Lua script bound to this thread's client (EVALSHA, loads it on a miss)."""
    client = redis_client()
    registered = _local.scripts.get(source)
    if registered is None:
        registered = _local.scripts[source] = client.register_script(source)
    return registered


@receiver(setting_changed)
def _redis_setting_changed(*, setting: str, **kwargs: Any) -> None:
    global _generation
    if setting in _SETTINGS:
        _generation += 1


@contextmanager
def redis_lock(name: str, *, seconds: int) -> Iterator[bool]:
    """Holds the Redis lock `name` for at most `seconds`; yields False (and holds nothing) when
    another holder has it. Released on exit only if still ours."""
    client = redis_client()
    token = uuid.uuid4().hex
    held = bool(client.set(name, token, nx=True, ex=seconds))
    try:
        yield held
    finally:
        if held and client.get(name) == token.encode():
            client.delete(name)


def dirty_hashes_take(*, dirty: str, prefix: str, flushing: str) -> list[tuple[str, str]]:
    """The counter hashes waiting to be flushed, as (renamed key, member): each hash named in the
    set `dirty` is RENAMEd from `prefix + member` to `flushing + <random>:member` first, so that
    increments landing meanwhile start a fresh hash and nothing is lost or counted twice; hashes
    a dead flusher left renamed are taken too. Call it under a redis_lock (one flusher at a time)
    and delete each renamed key once it is stored."""
    client = redis_client()
    pending = [(key, key[len(flushing):].split(":", 1)[1])
               for key in (k.decode() for k in client.scan_iter(match=flushing + "*", count=1000))]
    while (member := client.spop(dirty)) is not None:
        member = cast(bytes, member).decode()
        renamed = f"{flushing}{uuid.uuid4().hex}:{member}"
        try:
            client.rename(prefix + member, renamed)
        except redis.ResponseError:  # no such key: an earlier flush took it
            continue
        pending.append((renamed, member))
    return pending
