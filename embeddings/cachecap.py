"""The tier's cap on the bytes a tenant's private cache scope may hold (Tier.max_cache_bytes).

Enforced by the writers, never on the hit path: before a worker stores a sync request's (or a
provider call's) new vectors in a tenant's scope it reads the scope's state, one Redis hash
`cachecap:<scope>` = {bytes, limit}; at or over the limit the vectors are still returned to
the caller but not stored (embed_cache_store_skipped counts them). Every insert into a private
scope adds its new rows' bytes to the hash (cache_upsert), so the figure moves with the writes.
The hash lives CACHE_CAP_RECOUNT_SECONDS: then the next writer recounts it from Postgres (the
index-only count behind GET /v1/usage) with the tier's current limit, which corrects any drift
(the retention prune, a tier change, increments lost to a race with a recount). DELETE
/v1/cache drops it at once (cache_cap_forget), so freed room is usable straight away.

Jobs are not capped here: their results are read back from the cache, so a job always stores,
and instead a tenant whose cache is full cannot create one (cache_cap_check, 403 cache_full).
The public scope (seed_cache, operator-only) has no cap. The check happens before a batch is
stored, so a scope may end one batch (or one running job) over its limit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import redis as redis_lib
from django.conf import settings
from django.db import connection, transaction

from accounts.models import Tenant
from accounts.selectors import CacheFigures
from embeddings.models import CachedEmbedding
from embedplatform import metrics
from embedplatform.errors import NotAllowed
from embedplatform.redisconn import redis_client, script

logger = logging.getLogger(__name__)

PUBLIC_SCOPE = CachedEmbedding.PUBLIC_SCOPE
_KEY = "cachecap:"

CACHE_FULL = (
    "Your cache holds {bytes} bytes of vectors, the most your tier ({tier}) keeps ({limit} bytes), and a job's "
    "results are read back from the cache. Delete entries (DELETE /v1/cache), wait for unused ones to expire, "
    "or move to a tier with a bigger cache. /v1/usage shows the figures."
)

# Adds to a scope's byte count only while the hash exists (a missing one is recounted whole);
# returns {bytes, limit} after the add, or false.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[1])
  return redis.call('HMGET', KEYS[1], 'bytes', 'limit')
end
return false
"""

# Per process: scope -> (full?, until). A writer's check reuses what this process learnt in the last
# MEMO_SECONDS (from its last check or its last add), so a busy scope costs one Redis round trip per
# store (the add) instead of two. A cap reached by another process is seen at most that late.
MEMO_SECONDS = 1.0
_memo: dict[int, tuple[bool, float]] = {}


@dataclass(frozen=True)
class CapState:
    bytes: int
    limit: int  # 0: no limit

    @property
    def full(self) -> bool:
        return self.limit > 0 and self.bytes >= self.limit


def _key(scope: int) -> str:
    return f"{_KEY}{int(scope)}"


def _count(scope: int) -> CapState:
    """From Postgres: the scope's bytes (cache_size) and its tier's limit."""
    tenant = Tenant.objects.select_related("tier").filter(pk=scope).first()
    if tenant is None:
        return CapState(0, 0)
    limit = int(tenant.tier.max_cache_bytes or 0)
    used = sum(c["bytes"] for c in cache_size(tenant=tenant)) if limit else 0  # no limit: nothing to count
    return CapState(used, limit)


def cache_size(*, tenant: Tenant) -> list[dict]:
    """Entries and vector bytes per model in the tenant's cache scope, largest first.

    Counted from the (scope, model) index; bytes are entries x dims x 4 (float32 vectors), with
    the dims of one entry of the model (every entry of a model has its dims): summing each row's
    vector length would read every row of the scope on each GET /v1/usage.
    """
    table = CachedEmbedding._meta.db_table
    with transaction.atomic(), connection.cursor() as cur:
        # Both parts on the (scope, model) index: the counts as an index-only scan, the dims from
        # the model's first entry. Left to itself the planner reads the dims with a sequential scan
        # "until a row matches", which on a big table of many tenants can be most of it.
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(
            f"SELECT m.model, m.n, (SELECT dims FROM {table} d WHERE d.scope = %s AND d.model = m.model LIMIT 1) "
            f"FROM (SELECT model, count(*) AS n FROM {table} WHERE scope = %s GROUP BY model) m "
            "ORDER BY m.n DESC, m.model",
            [tenant.pk, tenant.pk],
        )
        rows = cur.fetchall()
    return [{"model": m, "entries": int(n), "bytes": int(n) * int(d or 0) * 4} for m, n, d in rows]


def cache_figures(tenant: Tenant) -> CacheFigures:
    """The tenant's cache figures for GET /v1/usage (accounts.services.usage_report): counted now,
    and remembered as the scope's cap state, so the writers' cap check starts from a fresh count."""
    figures = CacheFigures(models=cache_size(tenant=tenant), limit=int(tenant.tier.max_cache_bytes or 0))
    with contextlib.suppress(redis_lib.RedisError):
        cache_cap_remember(tenant.pk, CapState(bytes=figures.bytes, limit=figures.limit))
    return figures


def cache_cap_remember(scope: int, state: CapState) -> None:
    pipe = redis_client().pipeline(transaction=True)
    pipe.hset(_key(scope), mapping={"bytes": state.bytes, "limit": state.limit})
    pipe.expire(_key(scope), max(1, int(settings.CACHE_CAP_RECOUNT_SECONDS)))
    pipe.execute()


def cache_cap_state(scope: int) -> CapState:
    """The scope's bytes and limit: one Redis read, or a recount (then kept in Redis)."""
    found = redis_client().hmget(_key(scope), ["bytes", "limit"])
    if found[0] is not None and found[1] is not None:
        return CapState(int(found[0]), int(found[1]))
    state = _count(scope)
    cache_cap_remember(scope, state)
    return state


def cache_cap_full(scope: int) -> bool:
    """True if new vectors must not be stored in `scope` (never the public one). A Redis or
    database failure answers False: the cap is a bound on growth, not worth failing a write."""
    if scope == PUBLIC_SCOPE:
        return False
    known = _memo.get(scope)
    if known is not None and known[1] > time.monotonic():
        return known[0]
    try:
        full = cache_cap_state(scope).full
        _memo[scope] = (full, time.monotonic() + MEMO_SECONDS)
        return full
    except Exception:
        logger.warning("cache cap of scope %s unreadable; storing", scope, exc_info=True)
        return False


def cache_cap_add(scope: int, nbytes: int) -> None:
    """Counts `nbytes` just stored in `scope` (best effort: a lost count is fixed by the recount)."""
    if scope == PUBLIC_SCOPE or nbytes <= 0:
        return
    with contextlib.suppress(redis_lib.RedisError):
        after = script(_ADD)(keys=[_key(scope)], args=[int(nbytes)])
        if after and after[0] is not None and after[1] is not None:
            _memo[scope] = (CapState(int(after[0]), int(after[1])).full, time.monotonic() + MEMO_SECONDS)


def cache_cap_forget(scope: int) -> None:
    """Drops the scope's count (entries were deleted): the next writer recounts it (a writer in
    another process may still skip stores for up to MEMO_SECONDS)."""
    _memo.pop(scope, None)
    with contextlib.suppress(redis_lib.RedisError):
        redis_client().delete(_key(scope))


def cache_cap_skipped(*, vectors: int) -> None:
    metrics.CACHE_STORE_SKIPPED.inc(vectors)


def cache_cap_check(*, tenant: Tenant) -> None:
    """Raises NotAllowed (403, cache_full) if the tenant's cache is at its tier's limit: a job
    would have nowhere to keep its results. Reads the tier from `tenant`, the bytes from Redis."""
    limit = int(tenant.tier.max_cache_bytes or 0)
    if not limit:
        return
    state = cache_cap_state(tenant.pk)
    if state.bytes >= limit:
        raise NotAllowed(CACHE_FULL.format(bytes=state.bytes, tier=tenant.tier.name, limit=limit), code="cache_full")
