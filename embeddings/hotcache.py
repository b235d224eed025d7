"""A small in-memory tier in front of the Postgres cache, one per web process.

A vector is a pure function of (text, model, model version), so a copy of a cache row can
never go stale: the key holds everything that could change it, and the scope (tenant or
public) keeps tenants apart exactly as the table does. Recently served vectors stay here,
least recently used first out, within HOT_CACHE_MB; a repeated text then costs no query.
Postgres stays the source of truth: this tier is filled only from what it returned or what
the workers just stored. HOT_CACHE_MB=0 turns it off. DECISIONS #19.

Deleted entries: a tenant may delete its cached vectors (DELETE /v1/cache), which moves the
Redis epoch of its scope (embeddings/retention.py). Each entry carries the generation of its
scope when it was read; the admission script reads the epoch in its one round trip, and a
process that sees it moved refuses the request (nothing counted), starts a new generation for
that scope (the old entries are dead at once, dropped as they are met) and plans the request
again. A tenant scope whose epoch this process does not know yet is neither read nor filled
here (cache.cache_lookup_served); the public scope is never deleted through the API.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from django.conf import settings

# Bytes a cached entry costs beyond its vector: the key tuple, the Hit, the array header.
_OVERHEAD = 400

# An entry: an embeddings.cache.Hit (not imported here: that module imports this one).
_Hit = Any


class HotCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple[_Hit, int]] = OrderedDict()  # -> (hit, generation)
        self._lock = threading.Lock()
        self._epochs: dict[int, str] = {}  # scope -> the Redis epoch this process last saw
        self._gens: dict[int, int] = {}  # scope -> generation of its live entries (absent: 0)

    def scope_epoch(self, scope: int) -> str | None:
        """The epoch of `scope` this process knows (None: not seen yet)."""
        return self._epochs.get(scope)

    def scope_epoch_set(self, scope: int, epoch: str) -> None:
        """Records the epoch the admission read; a new one starts a new generation for `scope`,
        so its entries read before are never served again."""
        with self._lock:
            if self._epochs.get(scope) != epoch:
                self._epochs[scope] = epoch
                self._gens[scope] = self._gens.get(scope, 0) + 1

    def generations(self, scopes: Iterable[int]) -> dict[int, int]:
        """The current generation of each scope: pass it to put_many for entries read now."""
        gens = self._gens
        return {s: gens.get(s, 0) for s in scopes}

    def get_many(self, model: str, version: str, scopes: Iterable[int], keys: Iterable[bytes]) -> dict[bytes, _Hit]:
        """The entries held for `keys` in any of `scopes` (the first scope that has one wins)."""
        found: dict[bytes, _Hit] = {}
        if not self.max_bytes:
            return found
        with self._lock:
            items, gens = self._items, self._gens
            for key in keys:
                for scope in scopes:
                    k = (key, scope, model, version)
                    entry = items.get(k)
                    if entry is not None:
                        if entry[1] != gens.get(scope, 0):  # read before its scope's entries were deleted
                            del items[k]
                            self.bytes -= entry[0].vector.nbytes + _OVERHEAD
                            continue
                        items.move_to_end(k)
                        found[key] = entry[0]
                        break
        return found

    def put_many(self, model: str, version: str, entries: Iterable[tuple[bytes, int, _Hit]],
                 gens: dict[int, int] | None = None) -> None:
        """Stores (key, scope, hit) entries, then drops the least recently used beyond the budget.

        `gens` (from generations(), taken before the entries were read): an entry whose scope
        started a new generation since is not stored.
        """
        if not self.max_bytes:
            return
        with self._lock:
            items, current = self._items, self._gens
            for key, scope, hit in entries:
                gen = current.get(scope, 0)
                if gens is not None and gens.get(scope) != gen:
                    continue
                k = (key, scope, model, version)
                old = items.get(k)
                if old is not None:
                    if old[1] == gen:
                        items.move_to_end(k)
                        continue
                    self.bytes -= old[0].vector.nbytes + _OVERHEAD
                items[k] = (hit, gen)
                items.move_to_end(k)
                self.bytes += hit.vector.nbytes + _OVERHEAD
            while self.bytes > self.max_bytes and items:
                _, old = items.popitem(last=False)
                self.bytes -= old[0].vector.nbytes + _OVERHEAD

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


_hot: HotCache | None = None


def hot_cache() -> HotCache:
    """This process's tier, sized from HOT_CACHE_MB on first use."""
    global _hot
    if _hot is None:
        _hot = HotCache(int(settings.HOT_CACHE_MB * 1024 * 1024))
    return _hot


def hot_cache_reset() -> None:
    """Forgets this process's tier (tests: a rolled-back database must not be remembered)."""
    global _hot
    _hot = None
