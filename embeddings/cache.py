"""The durable embedding cache: keys, one-query bulk lookup, idempotent bulk upsert.

Reads take every key of a request in one query; writes take every vector of a batch in
one INSERT ... ON CONFLICT DO NOTHING, so a re-delivered batch or two workers embedding
the same text write one row. A hit never writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import connection

from embeddings import cachecap
from embeddings.hotcache import HotCache, hot_cache
from embeddings.models import CachedEmbedding

PUBLIC_SCOPE = CachedEmbedding.PUBLIC_SCOPE
_TABLE = CachedEmbedding._meta.db_table


def read_scopes(scope: int) -> list[int]:
    """The scopes a request or job of `scope` reads from: its own and the public one."""
    return [PUBLIC_SCOPE] if scope == PUBLIC_SCOPE else [scope, PUBLIC_SCOPE]


def text_key(model_input: str) -> bytes:
    """sha256 of exactly what the model sees (prompt + text). surrogatepass: never raise."""
    return hashlib.sha256(model_input.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Hit:
    vector: np.ndarray
    tokens: int
    scope: int  # where it was found


def cache_lookup(*, model: str, version: str, keys: Sequence[bytes], scopes: Sequence[int]) -> dict[bytes, Hit]:
    """Every stored vector among `keys` in any of `scopes`, in one query."""
    if not keys:
        return {}
    with connection.cursor() as cur:
        cur.execute(
            # `scope + 0`: keeps the planner on the cache_key index (text_sha256 first). With stale
            # statistics after a bulk load it otherwise picks the (scope, model) index and reads
            # every row of the tenant's scope (DECISIONS #18; docs/BENCHMARKS.md, "Database: cache
            # lookups and pruning").
            f"SELECT text_sha256, tokens, vector, scope FROM {_TABLE} "
            "WHERE text_sha256 = ANY(%s) AND model = %s AND model_version = %s AND scope + 0 = ANY(%s)",
            [list(keys), model, version, list(scopes)],
        )
        rows = cur.fetchall()
    return {bytes(k): Hit(np.frombuffer(v, dtype="<f4"), t, s) for k, t, v, s in rows}


def _hot_scopes(hot: HotCache, scopes: Sequence[int]) -> list[int]:
    """The scopes the hot tier may serve: the public one, and a tenant's once this process knows
    its epoch (learnt by the admission script; embeddings/hotcache.py): entries kept before
    that could predate a DELETE /v1/cache that this process has not heard of."""
    return [s for s in scopes if s == PUBLIC_SCOPE or hot.scope_epoch(s) is not None]


def cache_lookup_served(*, model: str, version: str, keys: Sequence[bytes], scopes: Sequence[int]) -> dict[bytes, Hit]:
    """cache_lookup for the API: this process's hot tier (embeddings/hotcache.py) first, one
    query for the rest, and what the query found is remembered."""
    hot = hot_cache()
    hot_scopes = _hot_scopes(hot, scopes)
    gens = hot.generations(hot_scopes)  # before the reads: a scope deleted meanwhile is not remembered
    found = hot.get_many(model, version, hot_scopes, keys) if hot_scopes else {}
    rest = [k for k in keys if k not in found] if found else keys
    if rest:
        stored = cache_lookup(model=model, version=version, keys=rest, scopes=scopes)
        hot.put_many(model, version, [(k, h.scope, h) for k, h in stored.items() if h.scope in gens], gens=gens)
        found.update(stored)
    return found


def hot_remember(*, model: str, version: str, scope: int, keys: Sequence[bytes], tokens: np.ndarray,
                 vectors: np.ndarray) -> None:
    """Puts vectors the workers just computed (and stored) for `scope` into the hot tier."""
    hot = hot_cache()
    if not _hot_scopes(hot, [scope]):
        return
    hot.put_many(model, version, [
        (k, scope, Hit(np.array(vectors[i], dtype="<f4"), int(tokens[i]), scope)) for i, k in enumerate(keys)
    ])


def scope_epoch_known(scope: int) -> str | None:
    """The epoch of a tenant's cache scope this process last saw (None: not yet); read it before
    the lookup and hand it to the admission, which refuses the request if it moved."""
    return hot_cache().scope_epoch(scope)


def scope_epoch_learn(scope: int, epoch: str) -> None:
    """Records the epoch the admission read (a moved one kills this process's copies of the scope)."""
    if epoch:
        hot_cache().scope_epoch_set(scope, epoch)


def cache_upsert(*, model: str, version: str, scope: int, rows: Iterable[tuple[bytes, int, np.ndarray]],
                 capped: bool = False) -> int:
    """Stores (key, tokens, vector) rows in one statement; existing keys are left alone.

    Returns how many rows were new; their bytes count toward the scope's cap (embeddings/cachecap.py).
    `capped`: store nothing if the tenant's cache is at its tier's max_cache_bytes (the sync
    paths; a job's results must be stored, so jobs are refused at creation instead). Commits without waiting for the WAL flush: a vector lost
    to a crash is recomputed on the next miss, and a job chunk is marked done by a later,
    synchronous commit, which flushes this one too (the WAL is sequential).
    """
    keys, tokens, vectors, dims = [], [], [], []
    for key, n_tokens, vector in rows:
        vec = np.ascontiguousarray(vector, dtype="<f4")
        keys.append(key)
        tokens.append(int(n_tokens))
        vectors.append(vec.tobytes())
        dims.append(vec.shape[0])
    if not keys:
        return 0
    if capped and cachecap.cache_cap_full(scope):
        cachecap.cache_cap_skipped(vectors=len(keys))
        return 0
    with connection.cursor() as cur:
        # One statement, one round trip: set_config(..., true) makes this statement's own
        # transaction commit asynchronously (outside a transaction; inside one, the caller's).
        cur.execute(
            f"INSERT INTO {_TABLE} (text_sha256, model, model_version, scope, dims, tokens, vector, created_at) "
            "SELECT k, %s, %s, %s, d, t, v, now() FROM unnest(%s::bytea[], %s::int[], %s::int[], %s::bytea[]) AS u(k, d, t, v) "
            "WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL "
            "ON CONFLICT (text_sha256, model, model_version, scope) DO NOTHING",
            [model, version, scope, keys, dims, tokens, vectors],
        )
        stored = cur.rowcount
    cachecap.cache_cap_add(scope, stored * dims[0] * 4)
    return stored
