"""A small in-memory tier in front of the Postgres cache, one per web process.

A vector is a pure function of (text, model, model version), so a copy of a cache row can
never go stale: the key holds everything that could change it, and the scope (tenant or
public) keeps tenants apart exactly as the table does. Recently served vectors stay here,
least recently used first out, within HOT_CACHE_MB; a repeated text then costs no query.
Postgres stays the source of truth: this tier is filled only from what it returned or what
the workers just stored. HOT_CACHE_MB=0 turns it off. DECISIONS #19.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from django.conf import settings

# Bytes a cached entry costs beyond its vector: the key tuple, the Hit, the array header.
_OVERHEAD = 400


class HotCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, model: str, version: str, scopes, keys) -> dict[bytes, object]:
        """The entries held for `keys` in any of `scopes` (the first scope that has one wins)."""
        found = {}
        if not self.max_bytes:
            return found
        with self._lock:
            items = self._items
            for key in keys:
                for scope in scopes:
                    entry = items.get((key, scope, model, version))
                    if entry is not None:
                        items.move_to_end((key, scope, model, version))
                        found[key] = entry
                        break
        return found

    def put_many(self, model: str, version: str, entries) -> None:
        """Stores (key, scope, hit) entries, then drops the least recently used beyond the budget."""
        if not self.max_bytes:
            return
        with self._lock:
            items = self._items
            for key, scope, hit in entries:
                k = (key, scope, model, version)
                if k in items:
                    items.move_to_end(k)
                    continue
                items[k] = hit
                self.bytes += hit.vector.nbytes + _OVERHEAD
            while self.bytes > self.max_bytes and items:
                _, old = items.popitem(last=False)
                self.bytes -= old.vector.nbytes + _OVERHEAD

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
