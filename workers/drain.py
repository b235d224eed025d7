"""The drain loop: take everything waiting for a model, one forward pass, answer all.

Continuous batching, as TEI does: whenever the model is free the loop takes every
pending work item of the model (up to max_batch_texts), so batches grow with the load
and a lone request waits for nothing but its own pass. See docs/DECISIONS.md for why
this is not one Celery message per text.

The loop's parts: taking work (workers/intake.py), the forward pass for requests (here),
storing, counting and answering (workers/answers.py), and job chunks when no request waits
(workers/jobpasses.py, over workers/jobfeed.py). A heartbeat thread keeps its liveness token
alive. `Drainer.run_once()` is one step that returns the number of texts it embedded, so
tests drive it step by step; `Drainer.run()` loops until stopped.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
import redis as redis_lib

from dispatch.frames import WorkItem, reply_error, reply_ok
from dispatch.keys import alive_key, heartbeat_key, model_workers_key, owner_key
from dispatch.local import owners_alive
from embedplatform import metrics
from embedplatform.logs import batch_request_ids
from workers.answers import DrainStats, RequestStore, reply_add, stats_add, usage_add
from workers.faults import Backoff
from workers.intake import Intake
from workers.jobpasses import JobPasses
from workers.taskevents import task_names

if TYPE_CHECKING:
    from workers.jobfeed import JobFeed
    from workers.runtime import ModelRuntime
    from workers.taskevents import PassEvents

logger = logging.getLogger(__name__)

# A loop beats from a thread of its own every HEARTBEAT_EVERY seconds, whatever its forward pass
# is doing; HEARTBEAT_TTL after its last beat it counts as dead and its work is taken over
# (job chunks by the other loops, taken requests by the web that waits for them).
HEARTBEAT_TTL = 6
HEARTBEAT_EVERY = 1.5
# The precision a backend computes in (workers/backends.py names); any other runs float32.
_BACKEND_PRECISION = {"bf16": "bf16"}


def serving_info(runtime: object) -> dict[str, str | None]:
    """What a loop runs a model on, as GET /v1/models/{id} shows it: the device, the small passes'
    backend (ModelRuntime.backend) and the precision, "small/big" where big passes compute in
    another one than small passes (bfloat16 on a CPU). The runtime's own `precision` wins where it
    states one. Read with getattr: tests drive loops with stand-in runtimes."""
    precision = getattr(runtime, "precision", None)
    if not isinstance(precision, str):
        passes = [getattr(runtime, side, None) for side in ("small", "big")]
        names = [_BACKEND_PRECISION.get(getattr(b, "name", ""), "fp32") for b in passes if b is not None]
        precision = "/".join(dict.fromkeys(names)) or None
    backend, device = getattr(runtime, "backend", None), getattr(runtime, "device", None)
    return {"backend": backend if isinstance(backend, str) else None, "precision": precision,
            "device": device if isinstance(device, str) else None}


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
        jobs: JobFeed | None = None,
        job_forward_texts: int | None = None,
        events: PassEvents | None = None,
    ) -> None:
        self.runtimes = runtimes  # model name -> ModelRuntime
        self.redis = redis
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.name = name or f"{socket.gethostname()}-{threading.get_native_id()}"
        # This loop's liveness token: its job leases and taken work items carry it, and
        # owner_key(token) lives while it beats (a restarted worker gets a new one, so its
        # predecessor's work is recognised as orphaned).
        self.token = uuid.uuid4().hex[:8]
        self.stats = DrainStats()
        self.block = block
        self._stop = threading.Event()
        self._last_beat = 0.0
        self._serving = {model: serving_info(runtime) for model, runtime in runtimes.items()}
        # Each pass reported as a Celery task event, for Flower (workers/taskevents.py); None: not reported.
        self.events = events
        self._task_names = task_names(runtimes)
        self.intake = Intake(redis, list(runtimes), token=self.token, max_texts=max_texts, jobs=jobs is not None)
        self.store = RequestStore(upsert)
        # Jobs (workers/jobfeed.py): chunks are claimed from Postgres when no request waits.
        self.jobs = jobs
        self.job_passes = None if jobs is None else JobPasses(
            jobs, runtimes=runtimes, redis=redis, upsert=upsert, name=self.name, owner=f"{self.token}:{self.name}",
            max_texts=max_texts, max_tokens=max_tokens,
            # A job pass runs in forward passes of this many texts, serving waiting requests between
            # them: what a sync request waits for behind a job.
            forward_texts=job_forward_texts or max_texts, stats=self.stats,
            interactive_waiting=self.intake.waiting, serve_waiting=lambda: self.serve(*self.take(0.01)),
            owners_alive=lambda tokens: owners_alive(tokens, client=self.redis), events=events,
        )
        self._step_backoff = Backoff("drain step", log=logger)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Lets the job pass being written finish, then stops the writer thread and closes its
        database connection. run() calls it on the way out; a caller of run_once() calls it last."""
        if self.job_passes is not None:
            self.job_passes.close()

    def flush(self) -> None:
        """Waits for the job pass being written, if any (run() does this when idle and at the end)."""
        if self.job_passes is not None:
            self.job_passes.flush()

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_EVERY:
            return
        pipe = self.redis.pipeline(transaction=False)
        beat = int(time.time())
        for model in self.runtimes:
            pipe.set(heartbeat_key(model, self.name), beat, ex=HEARTBEAT_TTL)
            pipe.set(alive_key(model), self.name, ex=HEARTBEAT_TTL)
            pipe.hset(model_workers_key(model), self.name, orjson.dumps({**self._serving[model], "until": beat + HEARTBEAT_TTL}))
            pipe.expire(model_workers_key(model), HEARTBEAT_TTL)
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
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(*[heartbeat_key(m, self.name) for m in self.runtimes], owner_key(self.token))
            for model in self.runtimes:
                pipe.hdel(model_workers_key(model), self.name)
            pipe.execute()

    def take(self, block: float) -> tuple[str, list[WorkItem]]:
        """Blocks for the first item, then takes what else waits for that model, hi before lo."""
        model, items, signalled = self.intake.take(block)
        if signalled and self.job_passes is not None:
            self.job_passes.signalled()
        return model, items

    def run_once(self, block: float = 1.0) -> int:
        if self.job_passes is not None:
            done = self.job_passes.step()
            if done is not None:
                return done
        return self.serve(*self.take(block))

    def serve(self, model: str, items: list[WorkItem]) -> int:
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
        began = time.time()
        started = time.perf_counter()
        try:
            tokens, vectors = runtime.encode(texts, max_texts=self.max_texts, max_tokens=self.max_tokens)
        except Exception as exc:
            logger.exception("batch of %d texts failed; retrying item by item", len(texts))
            if self.events is not None:
                self.events.report(self._task_names[model], started=began, runtime=time.perf_counter() - started,
                                   error=f"{exc.__class__.__name__}: {exc}"[:500], texts=len(texts),
                                   requests=len(live), tenants=len({it.tenant for it in live}))
            return self._one_by_one(runtime, live)
        compute_ms = (time.perf_counter() - started) * 1000
        metrics.batch_observe(model=model, texts=len(texts), tokens=int(tokens.sum()), seconds=time.perf_counter() - started)
        self.stats.record(len(live), len(texts))
        # Store first, then wake: a client that repeats a text right after its answer
        # finds it cached, and a job is never told "done" before its vectors are durable.
        self.store(runtime.spec, live, index, tokens, vectors)
        pipe = self.redis.pipeline(transaction=False)
        share = compute_ms / sum(len(it.texts) for it in live)
        for it in live:
            rows = [index[k] for k in it.keys]
            # Usage goes in the replies' round trip, ahead of the reply: a client that reads its
            # usage after its answer finds the misses counted.
            usage_add(pipe, model, it, tokens[rows], share * len(it.texts))
            reply_add(pipe, it, reply_ok(tokens[rows], vectors[rows]))
        pipe.execute()  # the waiters first; the bookkeeping below is nobody's latency
        stats_add(pipe, self.name, batches=1, items=len(live), texts=len(texts))
        pipe.execute()
        if self.events is not None:
            self.events.report(self._task_names[model], started=began, runtime=compute_ms / 1000, texts=len(texts),
                               requests=len(live), tenants=len({it.tenant for it in live}), tokens=int(tokens.sum()))
        return len(texts)

    def _one_by_one(self, runtime: ModelRuntime, items: list[WorkItem]) -> int:
        """After a failed pass: each item on its own, so one bad text fails only its own request."""
        pipe = self.redis.pipeline(transaction=False)
        done = 0
        began, seconds, served = time.time(), 0.0, []
        for it in items:
            started = time.perf_counter()
            try:
                tokens, vectors = runtime.encode(it.texts, max_texts=self.max_texts, max_tokens=self.max_tokens)
            except Exception as exc:
                reply_add(pipe, it, reply_error(f"{exc.__class__.__name__}: {exc}"[:500]))
                continue
            compute_ms = (time.perf_counter() - started) * 1000
            seconds += compute_ms / 1000
            self.store(runtime.spec, [it], {k: i for i, k in enumerate(it.keys)}, tokens, vectors)
            usage_add(pipe, runtime.spec.name, it, tokens, compute_ms)
            reply_add(pipe, it, reply_ok(tokens, vectors))
            done += len(it.texts)
            served.append(it)
        pipe.execute()
        if self.events is not None and served:  # the retried requests that went through, as one task
            self.events.report(self._task_names[runtime.spec.name], started=began, runtime=seconds, texts=done,
                               requests=len(served), tenants=len({it.tenant for it in served}))
        return done
