"""Cache retention: per-entry hit stats, pruning of unused entries, a tenant's own deletions.

Hit stats never cost the hit path a query or a round trip: the admission script that every
embedding request already runs (accounts/quotas.admit) adds one HINCRBY per entry served to a
Redis hash per (model, version), hot-tier hits included; the job path adds its hits from the
worker. `cache_hits_flush` (celery beat, with the usage flush) moves those hashes into
`last_hit_at` / `hit_count` with one UPDATE per batch. `cache_prune` deletes entries unused
(last hit, else creation) for a while, a few thousand rows per short transaction.
`cache_delete` is DELETE /v1/cache: a tenant's own entries only, and it moves the epoch of the
tenant's scope so no web process serves its in-memory copies again (embeddings/hotcache.py).
docs/DECISIONS.md, "Cache retention".
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import redis
from django.db import connection, transaction
from django.utils import timezone

from accounts.authcache import epoch_new
from accounts.models import Tenant
from accounts.quotas import CacheUse
from embeddings.cache import PUBLIC_SCOPE, text_key
from embeddings.cachecap import cache_cap_forget
from embeddings.models import CachedEmbedding
from embeddings.registry import model_get, model_specs
from embedplatform.redisconn import dirty_hashes_take, redis_client, redis_lock
from providers.dispatch import byok_key_prefixes

logger = logging.getLogger(__name__)

_TABLE = CachedEmbedding._meta.db_table
_HITS = "cachehits:"  # + member: hash of b"<scope>:<sha256>" -> hits since the last flush
_HITS_DIRTY = "cachehits:dirty"  # members whose hash has counts
_HITS_FLUSHING = "cachehits:flushing:"  # + "<uuid>:<member>": a hash being flushed
_HITS_LOCK = "cachehits:flush-lock"
_EPOCH = "cache:epoch:"  # + scope: moved by every cache_delete of that scope

PRUNE_BATCH = 5000
DELETE_KEYS_BATCH = 1000


def _member(model: str, version: str) -> str:
    return json.dumps([model, version], separators=(",", ":"))


def _field(scope: int, key: bytes) -> bytes:
    return b"%d:" % scope + key


def cache_use(*, scope: int, epoch: str | None, model: str, version: str,
              hits: Iterable[tuple[int, bytes]] = ()) -> CacheUse:
    """What the admission script does for the cache on a request in `scope` (the tenant's):
    checks the scope's epoch against `epoch` (what this process knew before its lookup; None:
    nothing known, no check) and counts one hit for each (scope found in, key) in `hits`."""
    member = _member(model, version)
    return CacheUse(scope=scope, epoch_key=_EPOCH + str(scope), epoch=epoch, hits_key=_HITS + member,
                    hits_dirty=_HITS_DIRTY, hits_member=member, fields=[_field(s, k) for s, k in hits])


def cache_hits_record(*, model: str, version: str, hits: Iterable[tuple[int, bytes]],
                      client: redis.Redis | None = None) -> None:
    """Counts one hit for each (scope, key), for a path without an admission (job chunks): one
    Redis round trip, no database write."""
    fields = [_field(s, k) for s, k in hits]
    if not fields:
        return
    member = _member(model, version)
    with (client or redis_client()).pipeline(transaction=False) as pipe:
        for f in fields:
            pipe.hincrby(_HITS + member, f, 1)
        pipe.sadd(_HITS_DIRTY, member)
        pipe.execute()


_HITS_UPDATE = f"""
UPDATE {_TABLE} AS c SET hit_count = c.hit_count + v.n, last_hit_at = GREATEST(c.last_hit_at, %s)
FROM (SELECT * FROM unnest(%s::bigint[], %s::bytea[], %s::bigint[]) AS u(scope, k, n) ORDER BY k, scope) AS v
WHERE c.text_sha256 = v.k AND c.model = %s AND c.model_version = %s AND c.scope = v.scope
"""


def cache_hits_flush(*, batch_size: int = 1000) -> int:
    """Moves the hit counts waiting in Redis into the cache rows (hit_count += n, last_hit_at =
    the flush's start); returns the rows updated. Entries deleted meanwhile are skipped.

    As usage_flush: each hash is RENAMEd away first (hits landing meanwhile start a fresh one),
    one flusher at a time, and a hash a dead flusher left is picked up by the next. Each batch
    is one UPDATE in its own short transaction, then its fields are removed from the hash, so
    a flusher that dies re-applies at most one batch. last_hit_at is precise to the flush
    period (USAGE_FLUSH_SECONDS), late rather than early, so it never makes an entry look older.
    """
    client = redis_client()
    with redis_lock(_HITS_LOCK, seconds=300) as held:
        if not held:
            return 0
        now = timezone.now()
        updated = 0
        for tmp, member in dirty_hashes_take(dirty=_HITS_DIRTY, prefix=_HITS, flushing=_HITS_FLUSHING):
            model, version = json.loads(member)
            batch: list[tuple[bytes, bytes]] = []
            for field_, count in client.hscan_iter(tmp, count=batch_size):
                batch.append((field_, count))
                if len(batch) >= batch_size:
                    updated += _hits_apply(client, tmp, model, version, batch, now)
                    batch = []
            if batch:
                updated += _hits_apply(client, tmp, model, version, batch, now)
            client.delete(tmp)
        return updated


def _hits_apply(client: redis.Redis, tmp: str, model: str, version: str, batch: list[tuple[bytes, bytes]],
                now: datetime) -> int:
    scopes, keys, counts = [], [], []
    for field_, count in batch:
        scope, _, key = field_.partition(b":")
        scopes.append(int(scope))
        keys.append(key)
        counts.append(int(count))
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit TO OFF")  # stats lost to a crash are only stats
        cur.execute(_HITS_UPDATE, [now, scopes, keys, counts, model, version])
        rows = cur.rowcount
    client.hdel(tmp, *[f for f, _ in batch])
    return rows


# --- Pruning -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def duration_parse(text: str) -> timedelta:
    """'90d', '12h', '30m' -> timedelta. Raises ValueError for anything else."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"`{text}` is not a duration: use a number of days, hours or minutes, e.g. 90d, 12h, 30m.")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _prune_where(cutoff: datetime, tenant_id: int | None, model: str | None) -> tuple[str, list]:
    where = ["COALESCE(last_hit_at, created_at) < %s"]
    params: list[object] = [cutoff]
    if tenant_id is not None:
        where.append("scope = %s")
        params.append(tenant_id)
    if model is not None:
        where.append("model = %s")
        params.append(model)
    return " AND ".join(where), params


def cache_prune(*, unused_for: timedelta, tenant_id: int | None = None, model: str | None = None,
                dry_run: bool = False, batch_size: int = PRUNE_BATCH,
                on_batch: Callable[[int], None] | None = None) -> int:
    """Deletes the cache entries not used (last hit, else created) for `unused_for`; returns how
    many (with `dry_run`, how many would be, deleting nothing).

    `tenant_id` limits it to one scope (0 is the public scope), `model` to one model. Pending hit
    stats are flushed first, so an entry hit a moment ago is not taken for unused. Deletes
    `batch_size` rows per statement, each its own short transaction, so writers and readers of
    the table never wait long; `on_batch(total so far)` follows each batch. Web processes may
    keep serving a pruned vector from memory until it leaves their LRU tier: it is the exact
    vector, only no longer stored (docs/DECISIONS.md, "Cache retention").
    """
    if unused_for <= timedelta(0):
        raise ValueError("unused_for must be positive.")
    cache_hits_flush()
    cutoff = timezone.now() - unused_for
    where, params = _prune_where(cutoff, tenant_id, model)
    if dry_run:
        with connection.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {_TABLE} WHERE {where}", params)
            return int(cur.fetchone()[0])
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cur:
            # = ANY(ARRAY(...)): the batch's ids first (an index scan), then each row by primary key;
            # `id IN (SELECT ...)` was planned as a hash join over a sequential scan of the table.
            cur.execute(f"DELETE FROM {_TABLE} WHERE id = ANY(ARRAY(SELECT id FROM {_TABLE} WHERE {where} LIMIT %s))",
                        [*params, batch_size])
            deleted = cur.rowcount
        total += deleted
        if on_batch is not None and deleted:
            on_batch(total)
        if deleted < batch_size:
            logger.info("cache_prune: %d entries unused since %s deleted", total, cutoff.isoformat())
            return total


# --- A tenant's own entries -----------------------------------------------------------------------

def _prompts(model: str | None, input_type: str | None) -> set[str]:
    """The prompts the embedding path may have put before a text (embeddings/serving.embed_plan
    keys sha256(prompt + text)): of `model`, or of every served model; with `input_type`, only
    its prompt (which is "" where the model has none). Provider models (`<name>/<model>`, or
    every model) add their input_type key prefixes (providers.dispatch.byok_key_prefix)."""
    byok = byok_key_prefixes(input_type) if model is None or "/" in model else set()  # a provider's keys
    if model is not None:
        spec = model_get(model)
        specs = [spec] if spec is not None else []
    else:
        specs = list(model_specs().values())
    if input_type is not None:
        return {s.prompt(input_type) for s in specs} | byok or {""}
    return {""} | {p for s in specs for p in s.prompts.values()} | byok


def cache_delete(*, tenant: Tenant, texts: list[str] | None = None, model: str | None = None,
                 input_type: str | None = None, batch_size: int = PRUNE_BATCH) -> int:
    """Deletes entries of the tenant's own scope (never the public scope, never another tenant's);
    returns how many.

    `texts` given: each text's entries, keyed as the embedding path keys them: the plain text
    and, for models with prompts, the text behind each prompt (only `input_type`'s prompt when
    given), of `model` or of every model. No `texts`: every entry of the scope (of `model` only,
    when given). Deletes in short batches, then moves the scope's epoch: from then on no web
    process serves its in-memory copies of the scope (embeddings/hotcache.py).
    """
    scope = int(tenant.pk)
    assert scope != PUBLIC_SCOPE
    total = 0
    model_sql, model_params = (" AND model = %s", [model]) if model is not None else ("", [])
    if texts is not None:
        prompts = _prompts(model, input_type)
        keys = sorted({text_key(p + t) for t in texts for p in prompts})
        for i in range(0, len(keys), DELETE_KEYS_BATCH):
            with transaction.atomic(), connection.cursor() as cur:
                # `scope + 0`: the cache_key index (text_sha256 first), as cache_lookup (DECISIONS #18).
                cur.execute(f"DELETE FROM {_TABLE} WHERE text_sha256 = ANY(%s) AND scope + 0 = %s{model_sql}",
                            [keys[i:i + DELETE_KEYS_BATCH], scope, *model_params])
                total += cur.rowcount
    else:
        while True:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(f"DELETE FROM {_TABLE} WHERE id = ANY(ARRAY("
                            f"SELECT id FROM {_TABLE} WHERE scope = %s{model_sql} LIMIT %s))",
                            [scope, *model_params, batch_size])
                deleted = cur.rowcount
            total += deleted
            if deleted < batch_size:
                break
    cache_cap_forget(scope)  # the room freed counts at once toward the tier's max_cache_bytes
    scope_epoch_move(scope)
    return total


def scope_epoch_move(scope: int) -> None:
    """Gives the scope a new epoch: every web process drops its in-memory copies of the scope at
    its next admission there (accounts/quotas.admit refuses the request once, CacheEpochMoved)."""
    redis_client().set(_EPOCH + str(scope), epoch_new())

