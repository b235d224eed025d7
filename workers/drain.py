"""The drain loop: take everything waiting for a model, one forward pass, answer all.

Continuous batching, as TEI does: whenever the model is free the loop takes every
pending work item of the model (up to max_batch_texts), so batches grow with the load
and a lone request waits for nothing but its own pass. See docs/DECISIONS.md for why
this is not one Celery message per text.

`Drainer.run_once()` is one step that returns the number of texts it embedded, so tests
drive it step by step; `Drainer.run()` loops until stopped.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis as redis_lib
from django.db import InterfaceError, OperationalError

from accounts.quotas import inflight_key
from accounts.services import usage_record
from embeddings.cache import text_key
from embeddings.waiting import REPLY_TTL_SECONDS, WorkItem, reply_error, reply_ok
from embedplatform import metrics
from embedplatform.logs import batch_request_ids
from workers.queues import (
    alive_key,
    heartbeat_key,
    job_signal_key,
    owner_key,
    reply_key,
    stats_key,
    taken_key,
    work_list,
)

logger = logging.getLogger(__name__)

# A loop beats from a thread of its own every HEARTBEAT_EVERY seconds, whatever its forward pass
# is doing; HEARTBEAT_TTL after its last beat it counts as dead and its work is taken over
# (job chunks by the other loops, taken requests by the web that waits for them).
HEARTBEAT_TTL = 6
HEARTBEAT_EVERY = 1.5
ORPHANS_EVERY = 2.0  # how often a loop looks for job chunks held by a dead loop
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds after a failed step, doubling while it keeps failing

# Failures that are not the work's fault: a dependency is away. Work given back after one keeps its attempts.
OUTAGES = (OperationalError, InterfaceError, redis_lib.ConnectionError, redis_lib.TimeoutError)


class Backoff:
    """Consecutive failures of one kind of step: the delay before the next try doubles up to a
    bound, and only the first failure of a run is logged with its traceback (an outage of the
    database would otherwise log one per step)."""

    def __init__(self, what: str, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX):
        self.what, self.first, self.most = what, first, most
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Records a failure and returns the delay before the next try."""
        self.failures += 1
        delay = min(self.first * 2 ** (self.failures - 1), self.most)
        if self.failures == 1:
            logger.error("%s failed; retrying with backoff", self.what, exc_info=exc)
        elif self.failures & (self.failures - 1) == 0:  # 2, 4, 8, ...: a short line now and then
            logger.warning("%s still failing (%d times in a row: %s: %s); next try in %.1fs",
                           self.what, self.failures, exc.__class__.__name__, str(exc)[:200], delay)
        return delay

    def succeeded(self) -> None:
        if self.failures:
            logger.info("%s works again after %d failures", self.what, self.failures)
        self.failures = 0


@dataclass
class DrainStats:
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


class Drainer:
    def __init__(
        self,
        *,
        runtimes: dict,
        redis: redis_lib.Redis,
        max_texts: int,
        max_tokens: int,
        upsert: Callable | None = None,
        name: str | None = None,
        block: float = 1.0,
        jobs=None,
        job_forward_texts: int | None = None,
    ):
        self.runtimes = runtimes  # model name -> ModelRuntime
        self.redis = redis
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.upsert = upsert
        self.name = name or f"{socket.gethostname()}-{threading.get_native_id()}"
        # This loop's liveness token: its job leases and taken work items carry it, and
        # owner_key(token) lives while it beats (a restarted worker gets a new one, so its
        # predecessor's work is recognised as orphaned).
        self.token = uuid.uuid4().hex[:8]
        self.stats = DrainStats()
        self.block = block
        self._stop = threading.Event()
        self._last_beat = 0.0
        self._lists = [work_list(m, "hi") for m in runtimes] + [work_list(m, "lo") for m in runtimes]
        # Jobs (workers/jobfeed.py): chunks are claimed from Postgres when no request waits.
        self.jobs = jobs
        # A job pass (JOB_PASS_TEXTS) runs in forward passes of this many texts, serving waiting requests between
        # them (_encode_yielding): what a sync request waits for behind a job.
        self.job_forward_texts = job_forward_texts or max_texts
        self._signals = [job_signal_key(m) for m in runtimes] if jobs is not None else []
        self._served = [(m, rt.spec.version) for m, rt in runtimes.items()]
        self._next_claim = 0.0
        # A job pass's store + mark-done runs on this one thread while the next pass claims and
        # embeds: the database work overlaps the model instead of adding to it. At most one
        # pass is in flight, so memory stays flat and chunks finish in order.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="job-writer") if jobs is not None else None
        self._pending: Future | None = None
        self._next_orphans = 0.0
        self._unreleased: list[tuple] = []  # (chunk, error, counts): give-backs that failed, retried later
        self._step_backoff = Backoff("drain step")
        self._job_backoff = Backoff("job claim")
        self._store_backoff = Backoff("cache upsert of a request's vectors")  # only its log lines are used

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Lets the job pass being written finish, then stops the writer thread and closes its
        database connection. run() calls it on the way out; a caller of run_once() calls it last."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            self.flush()
        writer.submit(self.jobs.close)
        writer.shutdown(wait=True)

    def flush(self) -> None:
        """Waits for the job pass being written, if any (run() does this when idle and at the end)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_EVERY:
            return
        pipe = self.redis.pipeline(transaction=False)
        for model in self.runtimes:
            pipe.set(heartbeat_key(model, self.name), int(time.time()), ex=HEARTBEAT_TTL)
            pipe.set(alive_key(model), self.name, ex=HEARTBEAT_TTL)
        pipe.set(owner_key(self.token), self.name, ex=HEARTBEAT_TTL)
        pipe.execute()
        self._last_beat = now

    def _beat_forever(self) -> None:
        """The heartbeat thread: beats while the loop runs, however long a forward pass takes."""
        failing = False
        while not self._stop.is_set():
            try:
                self.heartbeat(force=True)
                failing = False
            except redis_lib.RedisError as exc:
                if not failing:
                    logger.warning("heartbeat failed (%s); retrying", exc.__class__.__name__)
                failing = True
            self._stop.wait(HEARTBEAT_EVERY)

    def run(self) -> None:
        logger.info("drain loop %s (%s) serving %s", self.name, self.token, ", ".join(self.runtimes))
        beat = threading.Thread(target=self._beat_forever, name=f"heartbeat-{self.name}", daemon=True)
        beat.start()
        while not self._stop.is_set():
            try:
                self.run_once(block=self.block)
                self._step_backoff.succeeded()
            except Exception as exc:  # Redis or the database away, or a bug: back off, never spin
                self._stop.wait(self._step_backoff.failed(exc))
        beat.join(timeout=HEARTBEAT_EVERY + 1)
        self.close()
        self._clear_heartbeat()

    def start(self, *, name: str = "drain", on_exit: Callable[[], None] | None = None) -> threading.Thread:
        """Runs run() in a daemon thread of its own and returns it; `on_exit` runs in that thread
        once the loop has ended. The worker and the tests pass Django's `connections.close_all`,
        which closes the connections of the thread it runs in (`connection.close` would be bound
        to the caller's)."""

        def target() -> None:
            try:
                self.run()
            finally:
                if on_exit is not None:
                    on_exit()

        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _clear_heartbeat(self) -> None:
        with contextlib.suppress(redis_lib.RedisError):
            self.redis.delete(*[heartbeat_key(m, self.name) for m in self.runtimes], owner_key(self.token))

    def _take(self, block: float) -> tuple[str, list[WorkItem]]:
        """Blocks for the first item, then takes what else waits for that model, hi before lo."""
        popped = self.redis.blpop(self._lists + self._signals, timeout=block)
        if popped is None:
            return "", []
        if popped[0].decode() in self._signals:  # a job was queued: claim at once
            self._next_claim = 0.0
            return "", []
        first = WorkItem.loads(popped[1])
        items = [first]
        room = self.max_texts - len(first.texts)
        # Each taken item is marked with this loop's token, so that the request waiting for it
        # can tell when this loop dies with it (embeddings.waiting.work_wait): the first in the
        # round trip that takes the others.
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(taken_key(first.id), self.token, ex=REPLY_TTL_SECONDS)
        if room > 0:
            # Both lists in one round trip, hi before lo. Items are indivisible and each list
            # may give up to (room) items, so a take can overshoot max_texts: the runtime splits
            # whatever it gets into passes of at most max_texts.
            pipe.lpop(work_list(first.model, "hi"), room)
            pipe.lpop(work_list(first.model, "lo"), room)
        more = [WorkItem.loads(raw) for got in pipe.execute()[1:] for raw in (got or [])]
        if more:
            pipe = self.redis.pipeline(transaction=False)
            for it in more:
                pipe.set(taken_key(it.id), self.token, ex=REPLY_TTL_SECONDS)
            pipe.execute()
        return first.model, items + more

    def run_once(self, block: float = 1.0) -> int:
        if self.jobs is not None:
            self._job_upkeep()
            if self._job_turn():
                try:
                    chunks = self.jobs.claim(self._served, owner=f"{self.token}:{self.name}")
                    self._job_backoff.succeeded()
                except Exception as exc:  # the database away: serve requests meanwhile, claim again later
                    chunks = []
                    self._next_claim = time.monotonic() + max(self.jobs.poll_seconds, self._job_backoff.failed(exc))
                if chunks:
                    return sum(self._run_chunks([c for c in chunks if c.model == m]) for m in {c.model for c in chunks})
                if not self._job_backoff.failures:
                    self._next_claim = time.monotonic() + self.jobs.poll_seconds
                self.flush()  # no more chunks: let the last pass finish before idling
        return self._serve(*self._take(block))

    def _job_upkeep(self) -> None:
        """Every few seconds: gives back chunks whose release failed earlier (the database was
        away), and re-queues chunks held by loops that stopped beating (a killed worker), so that
        their job resumes within seconds rather than after a lease."""
        now = time.monotonic()
        if now < self._next_orphans:
            return
        self._next_orphans = now + ORPHANS_EVERY
        try:
            while self._unreleased:
                chunk, error, counts = self._unreleased[0]
                self.jobs.release(chunk, error=error, counts=counts)
                self._unreleased.pop(0)
            self.jobs.orphans(alive=self._owners_alive)
        except Exception as exc:
            self._next_orphans = now + max(ORPHANS_EVERY, self._job_backoff.failed(exc))

    def _owners_alive(self, tokens: list[str]) -> set[str]:
        found = self.redis.mget([owner_key(t) for t in tokens])
        return {t for t, v in zip(tokens, found, strict=True) if v is not None}

    def _serve(self, model: str, items: list[WorkItem]) -> int:
        """One forward pass for interactive work items of `model`; stores, then wakes each."""
        if not items:
            return 0
        now = time.time()
        live = [it for it in items if it.deadline > now]  # nobody waits for the rest
        if not live:
            return 0
        batch_request_ids(it.rid for it in live)  # this batch's log lines name its requests
        runtime = self.runtimes[model]
        texts: list[str] = []
        index: dict[bytes, int] = {}  # the same text from several requests is embedded once
        for it in live:
            for key, text in zip(it.keys, it.texts, strict=True):
                if key not in index:
                    index[key] = len(texts)
                    texts.append(text)
        started = time.perf_counter()
        try:
            tokens, vectors = runtime.encode(texts, max_texts=self.max_texts, max_tokens=self.max_tokens)
        except Exception:
            logger.exception("batch of %d texts failed; retrying item by item", len(texts))
            return self._one_by_one(runtime, live)
        compute_ms = (time.perf_counter() - started) * 1000
        metrics.batch_observe(model=model, texts=len(texts), tokens=int(tokens.sum()), seconds=time.perf_counter() - started)
        self.stats.record(len(live), len(texts))
        # Store first, then wake: a client that repeats a text right after its answer
        # finds it cached, and a job is never told "done" before its vectors are durable.
        self._store(runtime.spec, live, index, tokens, vectors)
        pipe = self.redis.pipeline(transaction=False)
        share = compute_ms / sum(len(it.texts) for it in live)
        for it in live:
            rows = [index[k] for k in it.keys]
            # Usage goes in the replies' round trip, ahead of the reply: a client that reads its
            # usage after its answer finds the misses counted.
            self._usage(pipe, model, it, tokens[rows], share * len(it.texts))
            self._reply(pipe, it, reply_ok(tokens[rows], vectors[rows]))
        pipe.execute()  # the waiters first; the bookkeeping below is nobody's latency
        stats = stats_key(self.name)
        pipe.hincrby(stats, "batches", 1)
        pipe.hincrby(stats, "items", len(live))
        pipe.hincrby(stats, "texts", len(texts))
        pipe.execute()
        return len(texts)

    @staticmethod
    def _usage(pipe, model: str, item: WorkItem, tokens, compute_ms: float) -> None:
        """The misses of `item`'s request (its inputs, duplicates included, and their tokens) and
        the compute time spent on them, in today's counters of its tenant (accounts.services)."""
        if item.tenant:
            inputs, n_tokens = item.usage(tokens)
            usage_record(tenant_id=item.tenant, model=model, cache_misses=inputs, tokens=n_tokens,
                         compute_ms=compute_ms, pipe=pipe)

    def _interactive_waiting(self) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        for name in self._lists:
            pipe.llen(name)
        return any(pipe.execute())

    def _encode_yielding(self, runtime, texts: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """runtime.encode for a job pass, one forward pass at a time (shortest texts first), serving
        any interactive request that arrived in between: a sync request waits for one forward
        pass, not for a whole job pass. Returns (tokens, vectors, seconds spent in the model)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        tokens = np.empty(len(texts), dtype=np.int32)
        vectors = np.empty((len(texts), runtime.spec.dims), dtype=np.float32)
        seconds = 0.0
        step = self.job_forward_texts
        for start in range(0, len(order), step):
            if start and self._interactive_waiting():
                self._serve(*self._take(0.01))
            part = order[start:start + step]
            began = time.perf_counter()
            tokens[part], vectors[part] = runtime.encode(
                [texts[i] for i in part], max_texts=self.max_texts, max_tokens=self.max_tokens
            )
            seconds += time.perf_counter() - began
        return tokens, vectors, seconds

    def _job_turn(self) -> bool:
        """Job chunks run only when no interactive request waits (they go first) and, after an
        empty claim, once per poll interval or when a job signal arrives."""
        if time.monotonic() < self._next_claim:
            return False
        return not self._interactive_waiting()

    def _run_chunks(self, chunks: list) -> int:
        """Embeds claimed job chunks of one model in one forward pass (cache hits are reused),
        then hands the store and mark-done to the writer thread (_finish_chunks)."""
        model = chunks[0].model
        runtime = self.runtimes[model]
        try:
            keys = [[text_key(t) for t in c.texts] for c in chunks]
            hits = [self.jobs.lookup(c, k) for c, k in zip(chunks, keys, strict=True)]
            index: dict[bytes, int] = {}
            texts: list[str] = []
            for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
                for key, text in zip(chunk_keys, chunk.texts, strict=True):
                    if key not in chunk_hits and key not in index:
                        index[key] = len(texts)
                        texts.append(text)
            tokens = vectors = None
            compute_ms = 0.0
            if texts:
                tokens, vectors, seconds = self._encode_yielding(runtime, texts)
                compute_ms = seconds * 1000
                metrics.batch_observe(model=model, texts=len(texts), tokens=int(tokens.sum()), seconds=seconds)
        except Exception as exc:
            if len(chunks) > 1 and not isinstance(exc, OUTAGES):
                # One chunk's texts may be what failed: each chunk on its own, so the others of the
                # pass (other jobs, other tenants) are not charged an attempt for it.
                logger.warning("a pass of %d job chunks failed (%s); retrying chunk by chunk", len(chunks), exc)
                return sum(self._run_chunks([chunk]) for chunk in chunks)
            self._release(chunks, exc)
            return 0
        self.flush()  # the previous pass is stored before this one is handed over
        self._pending = self._writer.submit(self._finish_chunks, chunks, keys, hits, index, tokens, vectors, compute_ms)
        self.stats.record(len(chunks), len(texts))
        with contextlib.suppress(redis_lib.RedisError):
            pipe = self.redis.pipeline(transaction=False)
            stats = stats_key(self.name)
            pipe.hincrby(stats, "batches", 1)
            pipe.hincrby(stats, "job_chunks", len(chunks))
            pipe.hincrby(stats, "texts", len(texts))
            pipe.execute()
        return sum(len(c.texts) for c in chunks)

    def _finish_chunks(self, chunks, keys, hits, index, tokens, vectors, compute_ms) -> None:
        """On the writer thread: store the new vectors (not swallowed: a chunk is done only once
        its vectors are stored), then mark each chunk done, once, even if its lease was taken over.

        Each scope (tenant) is stored on its own and each chunk completed on its own: a failure
        gives back only the chunks it concerns, never another tenant's that shared the pass."""
        model, version = chunks[0].model, chunks[0].version
        failed: dict[int, Exception] = {}  # chunk id -> why
        if index and self.upsert is not None:
            by_scope: dict[int, dict[bytes, int]] = defaultdict(dict)
            for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
                for key in chunk_keys:
                    if key not in chunk_hits:
                        by_scope[chunk.scope][key] = index[key]
            for scope, rows in by_scope.items():
                try:
                    self.upsert(model=model, version=version, scope=scope,
                                rows=[(k, tokens[i], vectors[i]) for k, i in rows.items()])
                except Exception as exc:
                    failed.update({c.id: exc for c in chunks if c.scope == scope})
        total = sum(len(c.texts) for c in chunks)
        for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
            if chunk.id in failed:
                continue
            n_tokens = sum(int(chunk_hits[k].tokens) if k in chunk_hits else int(tokens[index[k]]) for k in chunk_keys)
            try:
                self.jobs.complete(chunk, cached=[k in chunk_hits for k in chunk_keys], tokens=n_tokens,
                                   compute_ms=compute_ms * len(chunk.texts) / total)
            except Exception as exc:
                failed[chunk.id] = exc
        for chunk in chunks:
            if chunk.id in failed:
                self._release([chunk], failed[chunk.id])

    def _release(self, chunks, exc: Exception) -> None:
        """Gives chunks back after `exc`. An outage (database, Redis) is not the chunks' fault and
        costs them no attempt; a give-back that fails (the database is what is away) is kept and
        retried by _job_upkeep, so the chunks resume once the database is back, not after a lease."""
        counts = not isinstance(exc, OUTAGES)
        log = logger.error if counts else logger.warning
        log("job chunks %s failed: %s: %s", ", ".join(f"{c.job_id}@{c.start}" for c in chunks),
            exc.__class__.__name__, exc, exc_info=exc if counts else None)
        error = f"{exc.__class__.__name__}: {exc}"[:500]
        for chunk in chunks:
            try:
                self.jobs.release(chunk, error=error, counts=counts)
            except Exception:
                self._unreleased.append((chunk, error, counts))

    def _one_by_one(self, runtime, items: list[WorkItem]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        done = 0
        for it in items:
            started = time.perf_counter()
            try:
                tokens, vectors = runtime.encode(it.texts, max_texts=self.max_texts, max_tokens=self.max_tokens)
            except Exception as exc:
                self._reply(pipe, it, reply_error(f"{exc.__class__.__name__}: {exc}"[:500]))
                continue
            compute_ms = (time.perf_counter() - started) * 1000
            self._store(runtime.spec, [it], {k: i for i, k in enumerate(it.keys)}, tokens, vectors)
            self._usage(pipe, runtime.spec.name, it, tokens, compute_ms)
            self._reply(pipe, it, reply_ok(tokens, vectors))
            done += len(it.texts)
        pipe.execute()
        return done

    @staticmethod
    def _reply(pipe, item: WorkItem, payload: bytes) -> None:
        key = reply_key(item.id)
        pipe.rpush(key, payload)
        pipe.expire(key, REPLY_TTL_SECONDS)
        if item.tenant:  # the request's wait ends here: its in-flight entry too, saving the web a round trip
            pipe.zrem(inflight_key(item.tenant), item.id)

    def _store(self, spec, items: list[WorkItem], index: dict[bytes, int], tokens: np.ndarray, vectors: np.ndarray) -> None:
        """One idempotent upsert per scope. A failure is logged, not raised: the waiters still get their vectors."""
        if self.upsert is None:
            return
        by_scope: dict[int, dict[bytes, int]] = defaultdict(dict)
        for it in items:
            for key in it.keys:
                by_scope[it.scope][key] = index[key]
        for scope, rows in by_scope.items():
            try:
                self.upsert(
                    model=spec.name, version=spec.version, scope=scope,
                    rows=[(k, tokens[i], vectors[i]) for k, i in rows.items()],
                    capped=True,  # a full tenant cache is served, not stored (embeddings/cachecap.py)
                )
                self._store_backoff.succeeded()
            except Exception as exc:
                # The callers already have their vectors; a lost cache write costs a recompute later.
                self._store_backoff.failed(exc)
