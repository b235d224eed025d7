"""What the drain loop needs from Postgres to run job chunks (embeddings/jobs.py does the work).

Kept apart from drain.py so the loop itself has no database code and tests can run it with
or without jobs.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import close_old_connections, connection

from embeddings import cache
from embeddings.jobs import (
    ClaimedChunk,
    job_chunk_complete,
    job_chunk_release,
    job_chunks_claim,
    job_orphans_requeue,
)
from embeddings.retention import cache_hits_record


class JobFeed:
    def __init__(self, *, lease_seconds: float, poll_seconds: float, chunks_per_pass: int = 1):
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.chunks_per_pass = chunks_per_pass  # ~ MAX_BATCH_TEXTS / JOB_CHUNK_TEXTS: fill one forward pass

    def claim(self, models: list[tuple[str, str]], *, owner: str = "") -> list[ClaimedChunk]:
        close_old_connections()  # a long-lived thread: drop a connection the server closed
        return job_chunks_claim(models=models, lease_seconds=self.lease_seconds, limit=self.chunks_per_pass,
                                owner=owner)

    def lookup(self, chunk: ClaimedChunk, keys: list[bytes]) -> dict[bytes, cache.Hit]:
        """The chunk's texts already cached; each one found counts a hit in its entry's stats
        (one Redis round trip, flushed with the usage: embeddings/retention.py)."""
        hits = cache.cache_lookup(model=chunk.model, version=chunk.version, keys=list(set(keys)),
                                  scopes=cache.read_scopes(chunk.scope))
        if hits:
            cache_hits_record(model=chunk.model, version=chunk.version, hits=[(h.scope, k) for k, h in hits.items()])
        return hits

    def complete(self, chunk: ClaimedChunk, *, cached: list[bool], tokens: int, compute_ms: float) -> bool:
        return job_chunk_complete(chunk=chunk, cached=cached, tokens=tokens, compute_ms=compute_ms)

    def release(self, chunk: ClaimedChunk, *, error: str, counts: bool = True) -> None:
        job_chunk_release(chunk=chunk, error=error, counts=counts)

    def orphans(self, *, alive: Callable[[list[str]], set[str]]) -> int:
        """Re-queues chunks held by drain loops that stopped beating (`alive(tokens)` -> live tokens)."""
        close_old_connections()
        return job_orphans_requeue(alive=alive)

    def close(self) -> None:
        """Closes this thread's database connection (the drain loop's writer thread calls it last)."""
        connection.close()
