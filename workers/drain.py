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
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis as redis_lib

from accounts.services import usage_record
from embeddings.cache import text_key
from embeddings.waiting import REPLY_TTL_SECONDS, WorkItem, reply_error, reply_ok
from embedplatform import metrics
from embedplatform.logs import batch_request_ids
from workers.queues import alive_key, heartbeat_key, job_signal_key, reply_key, stats_key, work_list

logger = logging.getLogger(__name__)

HEARTBEAT_TTL = 10
HEARTBEAT_EVERY = 2.0


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
        pipe.execute()
        self._last_beat = now

    def run(self) -> None:
        logger.info("drain loop %s serving %s", self.name, ", ".join(self.runtimes))
        while not self._stop.is_set():
            try:
                self.heartbeat()
                self.run_once(block=self.block)
            except redis_lib.ConnectionError as exc:
                logger.warning("redis unavailable (%s); retrying in 1s", exc)
                time.sleep(1.0)
            except Exception:
                logger.exception("drain step failed")
                time.sleep(0.1)
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
            self.redis.delete(*[heartbeat_key(m, self.name) for m in self.runtimes])

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
        if room > 0:
            # Both lists in one round trip, hi before lo. Items are indivisible and each list
            # may give up to (room) items, so a take can overshoot max_texts: the runtime splits
            # whatever it gets into passes of at most max_texts.
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpop(work_list(first.model, "hi"), room)
            pipe.lpop(work_list(first.model, "lo"), room)
            for raw in [r for got in pipe.execute() for r in (got or [])]:
                items.append(WorkItem.loads(raw))
        return first.model, items

    def run_once(self, block: float = 1.0) -> int:
        if self.jobs is not None and self._job_turn():
            chunks = self.jobs.claim(self._served, owner=self.name)
            if chunks:
                return sum(self._run_chunks([c for c in chunks if c.model == m]) for m in {c.model for c in chunks})
            self._next_claim = time.monotonic() + self.jobs.poll_seconds
            self.flush()  # no more chunks: let the last pass finish before idling
        return self._serve(*self._take(block))

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
        its vectors are stored), then mark each chunk done, once, even if its lease was taken over."""
        model, version = chunks[0].model, chunks[0].version
        try:
            if index and self.upsert is not None:
                by_scope: dict[int, dict[bytes, int]] = defaultdict(dict)
                for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
                    for key in chunk_keys:
                        if key not in chunk_hits:
                            by_scope[chunk.scope][key] = index[key]
                for scope, rows in by_scope.items():
                    self.upsert(model=model, version=version, scope=scope,
                                rows=[(k, tokens[i], vectors[i]) for k, i in rows.items()])
            total = sum(len(c.texts) for c in chunks)
            for chunk, chunk_keys, chunk_hits in zip(chunks, keys, hits, strict=True):
                n_tokens = sum(int(chunk_hits[k].tokens) if k in chunk_hits else int(tokens[index[k]]) for k in chunk_keys)
                self.jobs.complete(chunk, cached=[k in chunk_hits for k in chunk_keys], tokens=n_tokens,
                                   compute_ms=compute_ms * len(chunk.texts) / total)
        except Exception as exc:
            self._release(chunks, exc)

    def _release(self, chunks, exc: Exception) -> None:
        logger.error("job chunks %s failed: %s", ", ".join(f"{c.job_id}@{c.start}" for c in chunks), exc, exc_info=exc)
        for chunk in chunks:
            try:
                self.jobs.release(chunk, error=f"{exc.__class__.__name__}: {exc}"[:500])
            except Exception:
                logger.exception("could not give back chunk %s@%d; the sweeper will", chunk.job_id, chunk.start)

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
                )
            except Exception:
                # The callers already have their vectors; a lost cache write costs a recompute later.
                logger.exception("cache upsert of %d vectors failed", len(rows))
