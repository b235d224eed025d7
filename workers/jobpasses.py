"""The job side of a drain loop: when to claim chunks, one pass over them, storing and marking
them done on a writer thread, and giving back what failed (DECISIONS #16, #24).

Job chunks run only when no interactive request waits; a pass runs in forward passes of
`forward_texts`, serving the requests that arrive in between, so a sync request waits behind
one forward pass, not a whole job pass. The database side of each step is workers/jobfeed.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import redis as redis_lib

from embeddings.cache import Hit, text_key
from embeddings.jobs import ClaimedChunk
from embedplatform import metrics
from workers.answers import DrainStats, rows_by_scope, scope_rows, stats_add
from workers.faults import OUTAGES, Backoff
from workers.jobfeed import JobFeed
from workers.taskevents import task_names

if TYPE_CHECKING:
    from workers.runtime import ModelRuntime
    from workers.taskevents import PassEvents

logger = logging.getLogger(__name__)

ORPHANS_EVERY = 2.0  # how often a loop looks for job chunks held by a dead loop


class JobPasses:
    def __init__(self, feed: JobFeed, *, runtimes: dict, redis: redis_lib.Redis, upsert: Callable | None, name: str,
                 owner: str, max_texts: int, max_tokens: int, forward_texts: int, stats: DrainStats,
                 interactive_waiting: Callable[[], bool], serve_waiting: Callable[[], int],
                 owners_alive: Callable[[list[str]], set[str]], events: PassEvents | None = None):
        self.feed = feed
        self.runtimes = runtimes
        self.redis = redis
        self.upsert = upsert
        self.name = name
        self.owner = owner  # what this loop's leases name (lease_owner): its token, then its name
        self.max_texts, self.max_tokens = max_texts, max_tokens
        self.forward_texts = forward_texts
        self.stats = stats
        self.interactive_waiting = interactive_waiting
        self.serve_waiting = serve_waiting
        self.owners_alive = owners_alive
        self.events = events  # each pass reported as a Celery task event, for Flower (workers/taskevents.py)
        self.task_names = task_names(runtimes, job=True)
        self.served = [(m, rt.spec.version) for m, rt in runtimes.items()]
        self.next_claim = 0.0
        # A job pass's store + mark-done runs on this one thread while the next pass claims and
        # embeds: the database work overlaps the model instead of adding to it. At most one
        # pass is in flight, so memory stays flat and chunks finish in order.
        self.writer: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="job-writer")
        self.pending: Future | None = None
        self.next_orphans = 0.0
        self.unreleased: list[tuple] = []  # (chunk, error, counts): give-backs that failed, retried later
        self.backoff = Backoff("job claim", log=logger)

    def signalled(self) -> None:
        """A job was queued: claim at once."""
        self.next_claim = 0.0

    def flush(self) -> None:
        """Waits for the job pass being written, if any."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Lets the pass being written finish, then stops the writer thread and closes its database connection."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            self.flush()
        writer.submit(self.feed.close)
        writer.shutdown(wait=True)

    def step(self) -> int | None:
        """One job step when it is the jobs' turn: texts embedded, or None when there was nothing
        to run (the loop serves requests then)."""
        self.upkeep()
        if not self.turn():
            return None
        try:
            chunks = self.feed.claim(self.served, owner=self.owner)
            self.backoff.succeeded()
        except Exception as exc:  # the database away: serve requests meanwhile, claim again later
            chunks = []
            self.next_claim = time.monotonic() + max(self.feed.poll_seconds, self.backoff.failed(exc))
        if chunks:
            return sum(self.run([c for c in chunks if c.model == m]) for m in {c.model for c in chunks})
        if not self.backoff.failures:
            self.next_claim = time.monotonic() + self.feed.poll_seconds
        self.flush()  # no more chunks: let the last pass finish before idling
        return None

    def upkeep(self) -> None:
        """Every few seconds: gives back chunks whose release failed earlier (the database was
        away), and re-queues chunks held by loops that stopped beating (a killed worker), so that
        their job resumes within seconds rather than after a lease."""
        now = time.monotonic()
        if now < self.next_orphans:
            return
        self.next_orphans = now + ORPHANS_EVERY
        try:
            while self.unreleased:
                chunk, error, counts = self.unreleased[0]
                self.feed.release(chunk, error=error, counts=counts)
                self.unreleased.pop(0)
            self.feed.orphans(alive=self.owners_alive)
        except Exception as exc:
            self.next_orphans = now + max(ORPHANS_EVERY, self.backoff.failed(exc))

    def turn(self) -> bool:
        """Job chunks run only when no interactive request waits (they go first) and, after an
        empty claim, once per poll interval or when a job signal arrives."""
        if time.monotonic() < self.next_claim:
            return False
        return not self.interactive_waiting()

    def forward(self, runtime: ModelRuntime, texts: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """runtime.encode for a job pass, one forward pass at a time (shortest texts first), serving
        any interactive request that arrived in between. Returns (tokens, vectors, seconds spent
        in the model)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        tokens = np.empty(len(texts), dtype=np.int32)
        vectors = np.empty((len(texts), runtime.spec.dims), dtype=np.float32)
        seconds = 0.0
        step = self.forward_texts
        for start in range(0, len(order), step):
            if start and self.interactive_waiting():
                self.serve_waiting()
            part = order[start:start + step]
            began = time.perf_counter()
            tokens[part], vectors[part] = runtime.encode(
                [texts[i] for i in part], max_texts=self.max_texts, max_tokens=self.max_tokens
            )
            seconds += time.perf_counter() - began
        return tokens, vectors, seconds

    def run(self, chunks: list[ClaimedChunk]) -> int:
        """Embeds claimed chunks of one model in one pass (cache hits are reused), then hands the
        store and mark-done to the writer thread (finish)."""
        model = chunks[0].model
        runtime = self.runtimes[model]
        began, seconds = time.time(), 0.0
        try:
            keys = [[text_key(t) for t in c.texts] for c in chunks]
            hits = [self.feed.lookup(c, k) for c, k in zip(chunks, keys, strict=True)]
            index: dict[bytes, int] = {}
            texts: list[str] = []
            for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
                for key, text in zip(chunk_keys, chunk.texts, strict=True):
                    if key not in chunk_hits and key not in index:
                        index[key] = len(texts)
                        texts.append(text)
            tokens = np.empty(0, dtype=np.int32)  # every text cached: nothing computed
            vectors = np.empty((0, 0), dtype=np.float32)
            compute_ms = 0.0
            if texts:
                tokens, vectors, seconds = self.forward(runtime, texts)
                compute_ms = seconds * 1000
                metrics.batch_observe(model=model, texts=len(texts), tokens=int(tokens.sum()), seconds=seconds)
        except Exception as exc:
            self.report(chunks, began, time.time() - began, texts=0, cached=0, tokens=0,
                        error=f"{exc.__class__.__name__}: {exc}"[:500])
            if len(chunks) > 1 and not isinstance(exc, OUTAGES):
                # One chunk's texts may be what failed: each chunk on its own, so the others of the
                # pass (other jobs, other tenants) are not charged an attempt for it.
                logger.warning("a pass of %d job chunks failed (%s); retrying chunk by chunk", len(chunks), exc)
                return sum(self.run([chunk]) for chunk in chunks)
            self.release(chunks, exc)
            return 0
        self.flush()  # the previous pass is stored before this one is handed over
        assert self.writer is not None  # until close()
        self.pending = self.writer.submit(self.finish, chunks, keys, hits, index, tokens, vectors, compute_ms)
        self.stats.record(len(chunks), len(texts))
        with contextlib.suppress(redis_lib.RedisError):
            pipe = self.redis.pipeline(transaction=False)
            stats_add(pipe, self.name, batches=1, job_chunks=len(chunks), texts=len(texts))
            pipe.execute()
        self.report(chunks, began, seconds, texts=len(texts), cached=sum(len(c.texts) for c in chunks) - len(texts),
                    tokens=int(tokens.sum()))
        return sum(len(c.texts) for c in chunks)

    def report(self, chunks: list[ClaimedChunk], began: float, seconds: float, *, texts: int, cached: int,
               tokens: int, error: str | None = None) -> None:
        """The pass as a Celery task event (`embed.<model>.job`): texts computed, the chunks' other
        texts (cached, or repeated in the pass), chunks, jobs, tenants (counts), tokens; runtime:
        seconds in the model (a failed pass: since it began)."""
        if self.events is None:
            return
        self.events.report(self.task_names[chunks[0].model], started=began, runtime=seconds, error=error,
                           texts=texts, cached=cached, chunks=len(chunks),
                           jobs=len({c.job_id for c in chunks}), tenants=len({c.tenant_id for c in chunks}),
                           tokens=tokens)

    def finish(self, chunks: list[ClaimedChunk], keys: list[list[bytes]], hits: list[dict[bytes, Hit]],
               index: dict[bytes, int], tokens: np.ndarray, vectors: np.ndarray, compute_ms: float) -> None:
        """On the writer thread: store the new vectors (not swallowed: a chunk is done only once
        its vectors are stored), then mark each chunk done, once, even if its lease was taken over.

        Each scope (tenant) is stored on its own and each chunk completed on its own: a failure
        gives back only the chunks it concerns, never another tenant's that shared the pass."""
        model, version = chunks[0].model, chunks[0].version
        failed: dict[int, Exception] = {}  # chunk id -> why
        if index and self.upsert is not None:
            keyed = ((chunk.scope, key) for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True)
                     for key in chunk_keys if key not in chunk_hits)
            for scope, rows in rows_by_scope(keyed, index).items():
                try:
                    self.upsert(model=model, version=version, scope=scope, rows=scope_rows(rows, tokens, vectors))
                except Exception as exc:
                    failed.update({c.id: exc for c in chunks if c.scope == scope})
        total = sum(len(c.texts) for c in chunks)
        for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
            if chunk.id in failed:
                continue
            n_tokens = sum(int(chunk_hits[k].tokens) if k in chunk_hits else int(tokens[index[k]]) for k in chunk_keys)
            try:
                self.feed.complete(chunk, cached=[k in chunk_hits for k in chunk_keys], tokens=n_tokens,
                                   compute_ms=compute_ms * len(chunk.texts) / total)
            except Exception as exc:
                failed[chunk.id] = exc
        for chunk in chunks:
            if chunk.id in failed:
                self.release([chunk], failed[chunk.id])

    def release(self, chunks: list[ClaimedChunk], exc: Exception) -> None:
        """Gives chunks back after `exc`. An outage (database, Redis) is not the chunks' fault and
        costs them no attempt; a give-back that fails (the database is what is away) is kept and
        retried by upkeep, so the chunks resume once the database is back, not after a lease."""
        counts = not isinstance(exc, OUTAGES)
        log = logger.error if counts else logger.warning
        log("job chunks %s failed: %s: %s", ", ".join(f"{c.job_id}@{c.start}" for c in chunks),
            exc.__class__.__name__, exc, exc_info=exc if counts else None)
        error = f"{exc.__class__.__name__}: {exc}"[:500]
        for chunk in chunks:
            try:
                self.feed.release(chunk, error=error, counts=counts)
            except Exception:
                self.unreleased.append((chunk, error, counts))
