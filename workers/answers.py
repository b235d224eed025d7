"""What a drain loop does with vectors once computed: store them (one idempotent upsert per
cache scope), count the requests' usage, answer the waiters, count its own passes."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from redis.client import Pipeline

from accounts.quotas import inflight_key
from accounts.services import usage_record
from dispatch.frames import WorkItem, reply_push
from dispatch.keys import stats_key
from workers.faults import Backoff

if TYPE_CHECKING:
    from embeddings.registry import ModelSpec

logger = logging.getLogger(__name__)


def rows_by_scope(keyed: Iterable[tuple[int, bytes]], index: dict[bytes, int]) -> dict[int, dict[bytes, int]]:
    """{scope: {key: row of the pass}} for (scope, key) pairs: what each scope's upsert stores."""
    by_scope: dict[int, dict[bytes, int]] = defaultdict(dict)
    for scope, key in keyed:
        by_scope[scope][key] = index[key]
    return by_scope


def scope_rows(rows: dict[bytes, int], tokens: np.ndarray, vectors: np.ndarray) -> list[tuple]:
    """The (key, tokens, vector) rows of one scope's upsert."""
    return [(k, tokens[i], vectors[i]) for k, i in rows.items()]


@dataclass
class DrainStats:
    """A loop's own counters, in process (tests, logs); stats_add keeps the shared ones in Redis."""

    batches: int = 0
    texts: int = 0
    items: int = 0
    batch_items: list[int] = field(default_factory=list)  # items per batch, the last 1000

    def record(self, items: int, texts: int) -> None:
        self.batches += 1
        self.items += items
        self.texts += texts
        self.batch_items.append(items)
        del self.batch_items[:-1000]


# A loop's name carries its process id, so a restarted worker counts in a new hash: the old one goes
# a week after its last pass.
STATS_TTL = 7 * 24 * 3600


def stats_add(pipe: Pipeline, name: str, **counts: int) -> None:
    """Adds to the loop's counters hash (dispatch.keys.stats_key) on `pipe`."""
    key = stats_key(name)
    for field_name, n in counts.items():
        pipe.hincrby(key, field_name, n)
    pipe.expire(key, STATS_TTL)


def usage_add(pipe: Pipeline, model: str, item: WorkItem, tokens: Iterable[int], compute_ms: float) -> None:
    """The misses of `item`'s request (its inputs, duplicates included, and their tokens) and the
    compute time spent on them, in today's counters of its tenant (accounts.services), on `pipe`."""
    if item.tenant:
        inputs, n_tokens = item.usage(tokens)
        usage_record(tenant_id=item.tenant, model=model, cache_misses=inputs, tokens=n_tokens, compute_ms=compute_ms,
                     pipe=pipe)


def reply_add(pipe: Pipeline, item: WorkItem, payload: bytes) -> None:
    """Answers `item` on `pipe`; its request's wait ends here, so its in-flight entry too (the web
    saves a round trip)."""
    reply_push(pipe, item.id, payload)
    if item.tenant:
        pipe.zrem(inflight_key(item.tenant), item.id)


class RequestStore:
    """Stores a pass's vectors for the requests it served: one idempotent upsert per scope, into
    a capped scope (a full tenant cache is served, not stored: embeddings/cachecap.py). A failure
    is logged, not raised: the waiters still get their vectors, and a lost cache write costs a
    recompute later."""

    def __init__(self, upsert: Callable | None):
        self.upsert = upsert
        self.backoff = Backoff("cache upsert of a request's vectors", log=logger)  # only its log lines are used

    def __call__(self, spec: ModelSpec, items: list[WorkItem], index: dict[bytes, int], tokens: np.ndarray,
                 vectors: np.ndarray) -> None:
        if self.upsert is None:
            return
        for scope, rows in rows_by_scope(((it.scope, k) for it in items for k in it.keys), index).items():
            try:
                self.upsert(model=spec.name, version=spec.version, scope=scope, rows=scope_rows(rows, tokens, vectors),
                            capped=True)
                self.backoff.succeeded()
            except Exception as exc:
                self.backoff.failed(exc)
