"""Jobs survive what production does to them: real Celery worker subprocesses on one queue,
SIGKILL in the middle of a job, and a flushed broker. Real PostgreSQL and Redis throughout."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from embeddings.models import CachedEmbedding, Job, JobChunk
from embeddings.selectors import job_results_iter
from tests.factories import JobFactory
from tests.helpers import poll_until

MODEL = "all-MiniLM-L6-v2"
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def _until(predicate, timeout: float, what: str, procs=()):
    """poll_until, failing with the tails of the workers' logs."""
    return poll_until(predicate, timeout=timeout, interval=0.2, message=what, logs=[p.log_path for p in procs])


def redis_keys(redis, pattern: str) -> list[bytes]:
    return list(redis.scan_iter(match=pattern))


def _assert_complete(alice, job: Job, texts: list[str]) -> None:
    job.refresh_from_db()
    assert (job.status, job.done, job.total) == ("succeeded", len(texts), len(texts))
    _, rows = job_results_iter(tenant=alice.tenant, job_id=job.pk)
    assert [r.index for r in rows] == list(range(len(texts)))  # every index, once, in order
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == len(set(texts))  # no duplicates


def test_two_workers_share_a_job_and_a_killed_one_loses_nothing(alice, worker_procs, settings):
    """GIVEN two worker processes on one model queue WHEN one is SIGKILLed in the middle of a
    job THEN the other takes back the chunks it held within seconds, on its own (no sweep, a
    120 s lease), and finishes the job."""
    settings.JOB_CHUNK_TEXTS = 32
    for key in redis_keys(worker_procs.redis, "embed:stats:[ab]@*"):
        worker_procs.redis.delete(key)  # counters of an earlier run
    a = worker_procs("a", JOB_LEASE_SECONDS="120")
    b = worker_procs("b", JOB_LEASE_SECONDS="120")
    redis = worker_procs.redis

    def both_alive() -> bool:  # models loaded, drain loops beating: the job starts for both at once
        beats = {k.decode().rsplit(":", 1)[1][:2] for k in redis.scan_iter(match=f"embed:hb:{MODEL}:*")}
        return {"a@", "b@"} <= beats

    _until(both_alive, 120, "both workers to load the model", (a, b))
    texts = [f"durable {i} {uuid.uuid4().hex[:8]}" for i in range(3000)]
    job = JobFactory(tenant=alice.tenant, texts=texts)

    def both_working() -> bool:  # summed over each worker's drain loops (one or two: DECISIONS #22, #23)
        chunks = [sum(int(redis.hget(k, "job_chunks") or 0) for k in redis.scan_iter(match=f"embed:stats:{w}@*"))
                  for w in ("a", "b")]
        return all(c > 0 for c in chunks)

    _until(both_working, 60, "both workers to take job chunks", (a, b))

    def a_holds_a_claim() -> bool:  # leases name their loop: "<claim>@<token>:a@<host>"
        return JobChunk.objects.filter(job=job, status="running", lease__contains=":a@").exists()

    _until(a_holds_a_claim, 30, "worker a to hold a claim", (a, b))
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    orphaned = set(
        JobChunk.objects.filter(job=job, status="running", lease__contains=":a@").values_list("id", flat=True)
    )
    killed = time.monotonic()
    assert orphaned  # what the dead worker held
    assert Job.objects.get(pk=job.pk).status == "running"

    def taken_back() -> bool:  # by b: a's heartbeat stopped (6 s), b looks every 2 s
        return not JobChunk.objects.filter(pk__in=orphaned, status="running", lease__contains=":a@").exists()

    _until(taken_back, 30, "worker b to take back a's chunks", (b,))
    assert time.monotonic() - killed < 15

    def finished() -> bool:
        return Job.objects.get(pk=job.pk).is_final

    _until(finished, 240, "the job to finish", (b,))
    _assert_complete(alice, job, texts)
    # the killed worker's chunk was claimed again and done once
    for chunk in JobChunk.objects.filter(pk__in=orphaned):
        assert chunk.status == "done" and chunk.attempts >= 2


def test_a_job_completes_after_the_broker_is_flushed(alice, worker_procs, settings):
    """GIVEN a queued job and no worker WHEN the broker's Redis is flushed (signals and all)
    THEN a worker started afterwards still finds the job in Postgres and finishes it."""
    settings.JOB_CHUNK_TEXTS = 64
    texts = [f"flushed {i} {uuid.uuid4().hex[:8]}" for i in range(200)]
    job = JobFactory(tenant=alice.tenant, texts=texts)
    worker_procs.redis.flushdb()
    worker = worker_procs("c")
    _until(lambda: Job.objects.get(pk=job.pk).is_final, 120, "the job to finish", (worker,))
    _assert_complete(alice, job, texts)
