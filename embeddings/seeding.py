"""Pre-computing texts into the cache (manage.py seed_cache), with the worker's runtime in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from django.conf import settings

from embeddings import cache
from embeddings.registry import ModelSpec


class Encoder(Protocol):
    """What cache_seed needs of a model runtime (workers.runtime.ModelRuntime)."""

    def encode(self, texts: list[str], *, max_texts: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class SeedProgress:
    seen: int = 0
    stored: int = 0
    cached: int = 0


def cache_seed(*, texts: Iterable[str], spec: ModelSpec, runtime: Encoder, scope: int = cache.PUBLIC_SCOPE,
               batch_size: int = 256, input_type: str | None = None,
               on_batch: Callable[[SeedProgress], object] | None = None) -> SeedProgress:
    """Pre-computes `texts` (any iterable, read batch by batch) into the cache under `scope`
    (default: the public scope every tenant reads). Texts already cached are skipped, so a
    re-run is cheap; `on_batch(progress)` is called after every batch.
    """
    progress = SeedProgress()
    prompt = spec.prompt(input_type)
    batch: list[str] = []

    def flush() -> None:
        inputs = list(dict.fromkeys(prompt + t for t in batch))  # unique, in order
        keys = [cache.text_key(t) for t in inputs]
        hits = cache.cache_lookup(model=spec.name, version=spec.version, keys=keys, scopes=cache.read_scopes(scope))
        todo = [(k, t) for k, t in zip(keys, inputs, strict=True) if k not in hits]
        if todo:
            tokens, vectors = runtime.encode([t for _, t in todo], max_texts=settings.MAX_BATCH_TEXTS,
                                             max_tokens=settings.MAX_BATCH_TOKENS)
            progress.stored += cache.cache_upsert(model=spec.name, version=spec.version, scope=scope,
                                                  rows=[(k, tokens[i], vectors[i]) for i, (k, _) in enumerate(todo)])
        progress.seen += len(batch)
        progress.cached += len(inputs) - len(todo)
        batch.clear()
        if on_batch is not None:
            on_batch(progress)

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return progress
