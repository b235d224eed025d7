"""Reads for the operators' admin, across tenants (the API's selectors each take `tenant=`:
embeddings/selectors.py): a job's progress, rate and ETA; the work waiting per model; the live
workers with their throughput. Never reached from the API.

What serves a model and how much waits for it come from models_catalog.model_serving (what
GET /v1/models/{id} shows). Throughput comes from the drain loops' counters
(dispatch.keys.stats_key, added to after every pass: workers/answers.stats_add), which are
totals since the loop started: a rate needs two readings, so each reading is kept for
WORKER_RATE_WINDOW seconds in Django's cache and the rate is taken against the oldest one kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.core.cache import cache
from django.db.models import Count, F, Sum
from django.utils import timezone

from dispatch.keys import heartbeat_key, stats_key
from embeddings.models import Job
from embeddings.models_catalog import WorkerServing, model_serving
from embeddings.registry import model_specs
from embedplatform.redisconn import redis_client

ACTIVE = (Job.Status.QUEUED, Job.Status.RUNNING)
WORKER_RATE_WINDOW = 300.0  # seconds of counter readings kept for the workers' rates
WORKER_RATE_MIN_GAP = 1.0  # a rate needs readings at least this far apart
_SAMPLES_KEY = "admin:worker-stats-samples"


# --- Jobs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobProgress:
    """A job's progress. `rate`: texts done per second since it started (until it ended, for a
    finished job); None before it started. `eta_seconds`: the time left at that rate, for a queued
    or running job that has a rate above 0; None otherwise."""

    done: int
    total: int
    rate: float | None
    eta_seconds: float | None

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


def job_progress(job: Job, *, now: datetime | None = None) -> JobProgress:
    """`job`'s progress at `now` (default: the current time). Pure: reads only the row's fields."""
    now = now or timezone.now()
    rate = None
    if job.started_at is not None:
        end = job.finished_at or now
        elapsed = (end - job.started_at).total_seconds()
        rate = job.done / elapsed if elapsed > 0 else None
    eta = None
    if job.status in ACTIVE and rate and job.done < job.total:
        eta = (job.total - job.done) / rate
    return JobProgress(done=job.done, total=job.total, rate=rate, eta_seconds=eta)


def duration_text(seconds: float | None) -> str:
    """`1 h 02 min`, `3 min 05 s`, `42 s`; "-" for None."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


# --- Work waiting per model ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelWork:
    """What waits for one served model: requests in its work lists (queue_depth, as GET
    /v1/models/{id} shows it), the texts its queued and running jobs have left, and its live loops."""

    model: str
    workers: list[WorkerServing]
    queue_depth: int
    jobs_queued: int
    jobs_running: int
    job_texts_left: int


def work_waiting() -> list[ModelWork]:
    """Every served model's waiting work, by model name: a Redis round trip per model and one query."""
    jobs: dict[str, dict[str, int]] = {}
    rows = (Job.objects.filter(status__in=ACTIVE).values("model", "status")
            .annotate(n=Count("pk"), left=Sum(F("total") - F("done"))).order_by())
    for row in rows:
        entry = jobs.setdefault(row["model"], {"queued": 0, "running": 0, "left": 0})
        entry[row["status"]] += row["n"]
        entry["left"] += int(row["left"] or 0)
    out = []
    for name in sorted(set(model_specs()) | set(jobs)):
        workers, depth = model_serving(name)
        entry = jobs.get(name, {})
        out.append(ModelWork(model=name, workers=workers, queue_depth=depth, jobs_queued=entry.get("queued", 0),
                             jobs_running=entry.get("running", 0), job_texts_left=entry.get("left", 0)))
    return out


# --- Workers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerCounters:
    """A drain loop's counters since it started: passes (batches), requests (items) and texts
    drained, job chunks finished."""

    batches: int = 0
    items: int = 0
    texts: int = 0
    job_chunks: int = 0


@dataclass(frozen=True)
class WorkerStatus:
    """One live drain loop. Rates are over the last `window_s` seconds (None: no earlier reading);
    pass sizes are texts per forward pass over that window, else since the loop started."""

    id: str
    models: list[str]
    serving: list[WorkerServing]  # per model, what it runs it on (backend, precision, device)
    last_beat: datetime | None
    counters: WorkerCounters
    window_s: float | None
    texts_per_s: float | None
    passes_per_s: float | None
    texts_per_pass: float | None
    queue_depth: int  # requests waiting for its models

    @property
    def beat_age_s(self) -> float | None:
        return None if self.last_beat is None else max(0.0, (datetime.now(UTC) - self.last_beat).total_seconds())


@dataclass(frozen=True)
class WorkersOverview:
    workers: list[WorkerStatus]
    models: list[ModelWork]


def _counters(raw: dict) -> WorkerCounters:
    values = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
    return WorkerCounters(**{f: values.get(f, 0) for f in ("batches", "items", "texts", "job_chunks")})


def _read(models: list[ModelWork]) -> tuple[float, dict[str, WorkerCounters], dict[str, datetime]]:
    """(the time read, each live loop's counters, its latest heartbeat): one round trip."""
    names = sorted({w.id for m in models for w in m.workers})
    beats = [(m.model, w.id) for m in models for w in m.workers]
    pipe = redis_client().pipeline(transaction=False)
    for name in names:
        pipe.hgetall(stats_key(name))
    for model, name in beats:
        pipe.get(heartbeat_key(model, name))
    replies = pipe.execute()
    at = time.time()
    counters = {name: _counters(raw) for name, raw in zip(names, replies[:len(names)], strict=True)}
    last: dict[str, datetime] = {}
    for (_, name), beat in zip(beats, replies[len(names):], strict=True):
        if beat is not None:
            when = datetime.fromtimestamp(int(beat), UTC)
            last[name] = max(when, last.get(name, when))
    return at, counters, last


def _samples_add(at: float, counters: dict[str, WorkerCounters]) -> list[tuple[float, dict[str, list[int]]]]:
    """Keeps this reading with those of the last WORKER_RATE_WINDOW seconds; returns the earlier ones."""
    kept = [(t, c) for t, c in cache.get(_SAMPLES_KEY, []) if at - WORKER_RATE_WINDOW <= t < at]
    reading = {n: [c.batches, c.texts] for n, c in counters.items()}
    cache.set(_SAMPLES_KEY, [*kept, (at, reading)][-64:], timeout=int(WORKER_RATE_WINDOW) + 60)
    return kept


def worker_overview(*, wait: float = WORKER_RATE_MIN_GAP, sleep: Callable[[float], None] = time.sleep) -> WorkersOverview:
    """The live drain loops (those GET /v1/models/{id} lists) with their models, last heartbeat,
    counters, texts per second and texts per pass, and the work waiting per model.

    With no reading of the counters at least WORKER_RATE_MIN_GAP old (the first look in
    WORKER_RATE_WINDOW seconds), it reads them twice, `wait` seconds apart (wait=0: no rates then).
    """
    models = work_waiting()
    at, counters, beats = _read(models)
    earlier = [s for s in _samples_add(at, counters) if at - s[0] >= WORKER_RATE_MIN_GAP]
    if not earlier and wait > 0 and counters:
        sleep(wait)
        first = (at, {n: [c.batches, c.texts] for n, c in counters.items()})
        at, counters, beats = _read(models)
        _samples_add(at, counters)
        earlier = [first]
    depth_of = {m.model: m.queue_depth for m in models}
    workers = []
    for name in sorted(counters):
        serving = [(m.model, w) for m in models for w in m.workers if w.id == name]
        now = counters[name]
        base = next(((t, c[name]) for t, c in earlier if name in c), None)  # the oldest reading with this loop
        window = rate = passes = None
        per_pass = now.texts / now.batches if now.batches else None
        if base is not None:
            (t0, (batches0, texts0)) = base
            window = at - t0
            if now.texts >= texts0 and window > 0:  # a restarted loop has a new name, but be safe
                rate, passes = (now.texts - texts0) / window, (now.batches - batches0) / window
                if now.batches > batches0:
                    per_pass = (now.texts - texts0) / (now.batches - batches0)
        workers.append(WorkerStatus(
            id=name, models=[m for m, _ in serving], serving=[w for _, w in serving], last_beat=beats.get(name),
            counters=now, window_s=window, texts_per_s=rate, passes_per_s=passes, texts_per_pass=per_pass,
            queue_depth=sum(depth_of[m] for m, _ in serving)))
    return WorkersOverview(workers=workers, models=models)
