"""Work held by a drain loop that died is taken over within seconds, not after a lease.

A loop beats under its own token (dispatch.keys.owner_key); its job leases and the work items
it takes carry that token. These tests kill a loop the way SIGKILL does (it just stops beating:
its owner key is gone) and watch the job chunks and the waiting request it held.
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np
import pytest
import redis as redis_lib

from dispatch import local
from dispatch.keys import owner_key, taken_key, work_list
from embeddings.cache import cache_upsert, text_key
from embeddings.jobs import (
    job_chunks_claim,
    job_orphans_requeue,
    job_sweep,
    lease_owner,
)
from embeddings.models import CachedEmbedding, JobChunk
from embedplatform.errors import Overloaded
from tests import handoff
from tests.factories import JobFactory
from tests.helpers import poll_until
from workers.drain import Drainer
from workers.jobfeed import JobFeed

MODEL = "all-MiniLM-L6-v2"
VERSION = "gt-0.1.0"


@pytest.fixture
def loops(transactional_db, redis_db, minilm):
    """Makes drain loops (with jobs) on the real model, driven step by step; closed at the end."""
    made = []

    def make(name: str, upsert=cache_upsert) -> Drainer:
        loop = Drainer(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=upsert,
                       name=name, block=0.1, jobs=JobFeed(lease_seconds=120, poll_seconds=0))
        loop.heartbeat(force=True)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.close()


def _die(loop: Drainer, redis_db) -> None:
    """What SIGKILL leaves: the loop's keys expire (here at once) and it never runs again."""
    redis_db.delete(owner_key(loop.token))


def test_the_lease_names_the_loops_token_and_its_name(alice, redis_db, transactional_db):
    JobFactory(tenant=alice.tenant, texts=["a"])
    [chunk] = job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=120, owner="1a2b3c4d:embed-cpu@host")
    assert lease_owner(chunk.lease) == "1a2b3c4d"
    assert chunk.lease.endswith("@1a2b3c4d:embed-cpu@host") and len(chunk.lease) <= 32
    assert lease_owner("") == "" and lease_owner(uuid.uuid4().hex) == ""  # leases without an owner are never orphans


def test_chunks_of_a_loop_that_stopped_beating_are_requeued_at_once(alice, redis_db, transactional_db, settings):
    settings.JOB_CHUNK_TEXTS = 2
    job = JobFactory(tenant=alice.tenant, texts=[f"t{i}" for i in range(6)])
    dead = job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=120, owner="deadbeef:ghost", limit=2)
    live = job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=120, owner="a11ce000:alive")
    assert len(dead) == 2 and len(live) == 1

    assert job_orphans_requeue(alive=lambda tokens: {"a11ce000"}) == 2
    by_id = {c.id: c for c in JobChunk.objects.filter(job=job)}
    assert all(by_id[c.id].status == "queued" and by_id[c.id].lease == "" for c in dead)
    assert by_id[live[0].id].status == "running"  # a live loop's chunk is left alone, lease unexpired
    assert redis_db.lrange(f"embed:jobs:{MODEL}", 0, -1)  # the workers are poked


def test_the_sweep_takes_over_orphans_without_waiting_for_their_lease(alice, redis_db, transactional_db):
    JobFactory(tenant=alice.tenant, texts=["x", "y"])
    [chunk] = job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=3600, owner="deadbeef:ghost")
    redis_db.set(owner_key("deadbeef"), "ghost")
    assert job_sweep() == 0  # its loop still beats: nothing to do for an hour
    redis_db.delete(owner_key("deadbeef"))
    assert job_sweep() == 1
    assert JobChunk.objects.get(pk=chunk.id).status == "queued"


def test_a_chunk_that_killed_its_worker_every_time_fails_its_job(alice, redis_db, transactional_db, settings):
    settings.JOB_MAX_ATTEMPTS = 2
    job = JobFactory(tenant=alice.tenant, texts=["oom"])
    for _ in range(2):
        job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=3600, owner="deadbeef:ghost")
        job_orphans_requeue(alive=lambda tokens: set())
    job.refresh_from_db()
    assert job.status == "failed" and "its worker died" in job.error


def test_a_surviving_loop_finishes_a_dead_loops_job_within_seconds(loops, alice, redis_db, settings):
    """GIVEN a job whose chunks a loop claimed before it was killed
    WHEN another loop runs
    THEN it re-queues and finishes them within seconds (not JOB_LEASE_SECONDS), each text once."""
    settings.JOB_CHUNK_TEXTS = 4
    job = JobFactory(tenant=alice.tenant, texts=[f"orphan {i}" for i in range(12)])
    doomed = loops("doomed")
    held = job_chunks_claim(models=[(MODEL, VERSION)], lease_seconds=120, owner=f"{doomed.token}:doomed", limit=3)
    assert len(held) == 3
    _die(doomed, redis_db)

    survivor = loops("survivor")

    def step_finishes() -> bool:  # one step of the surviving loop; then, is the job done?
        survivor.run_once(block=0.1)
        survivor.flush()
        job.refresh_from_db()
        return job.status == "succeeded"

    started = time.monotonic()
    poll_until(step_finishes, timeout=20, interval=0, message=lambda: f"the job to finish ({job.status}, {job.done} done)")
    took = time.monotonic() - started
    assert (job.status, job.done) == ("succeeded", 12)
    assert took < 5, f"took {took:.1f}s"
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == 12
    assert sorted(JobChunk.objects.filter(job=job).values_list("attempts", flat=True)) == [2, 2, 2]


def test_a_failure_storing_one_tenants_chunk_does_not_charge_anothers(loops, alice, bob, redis_db, settings):
    settings.JOB_CHUNK_TEXTS = 2
    a = JobFactory(tenant=alice.tenant, texts=["alice 1", "alice 2"])
    b = JobFactory(tenant=bob.tenant, texts=["bob 1", "bob 2"])

    def upsert(**kwargs):
        if kwargs["scope"] == bob.tenant.pk:
            raise ValueError("bob's rows are refused")
        return cache_upsert(**kwargs)

    loop = loops("picky", upsert=upsert)
    loop.jobs.chunks_per_pass = 2
    assert loop.run_once(block=0.1) == 4  # both chunks in one forward pass
    loop.flush()
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.status, a.done) == ("succeeded", 2)
    assert (b.status, b.done) == ("running", 0)
    bob_chunk = JobChunk.objects.get(job=b)
    assert (bob_chunk.status, bob_chunk.attempts) == ("queued", 1)  # given back, charged to bob alone


def test_a_pass_whose_model_call_fails_is_retried_chunk_by_chunk(loops, alice, bob, redis_db, settings, monkeypatch):
    settings.JOB_CHUNK_TEXTS = 2
    a = JobFactory(tenant=alice.tenant, texts=["fine 1", "fine 2"])
    b = JobFactory(tenant=bob.tenant, texts=["poison 1", "poison 2"])
    loop = loops("careful")
    loop.jobs.chunks_per_pass = 2
    runtime = loop.runtimes[MODEL]
    real = runtime.encode

    def flaky(texts, **kw):
        if any("poison" in t for t in texts):
            raise RuntimeError("cannot embed poison")
        return real(texts, **kw)

    monkeypatch.setattr(runtime, "encode", flaky)
    loop.run_once(block=0.1)
    loop.flush()
    a.refresh_from_db()
    assert (a.status, a.done) == ("succeeded", 2)
    assert JobChunk.objects.get(job=b).attempts == 1 and JobChunk.objects.get(job=b).status == "queued"
    assert JobChunk.objects.get(job=a).attempts == 1


def _submit(texts, wait=10.0):
    item = handoff.work_item(model=MODEL, texts=texts, keys=[text_key(t) for t in texts], scope=1, wait=wait)
    handoff.work_queue(item)
    return item


def test_a_request_taken_by_a_dead_loop_is_served_by_another(loops, redis_db, minilm):
    doomed = loops("doomed")
    item = _submit(["taken, then its worker died"])
    popped = doomed.take(0.1)[1]  # the loop takes the item ... and is killed before it answers
    assert [it.id for it in popped] == [item.id]
    assert redis_db.get(taken_key(item.id)).decode() == doomed.token
    _die(doomed, redis_db)

    survivor = loops("survivor")
    survivor_thread = survivor.start(name="survivor")
    started = time.monotonic()
    try:
        _tokens, vectors = local.work_wait(item, wait=10, dims=384)
    finally:
        survivor.stop()
        survivor_thread.join(timeout=10)
    assert time.monotonic() - started < 4
    assert float(np.dot(vectors[0], minilm.model.encode(item.texts)[0])) > 0.999


def test_a_request_taken_by_a_dead_loop_gets_503_at_once_when_no_worker_is_left(loops, redis_db):
    doomed = loops("doomed")
    item = _submit(["nobody left"])
    doomed.take(0.1)
    _die(doomed, redis_db)
    redis_db.delete(f"embed:alive:{MODEL}")  # no worker beats for the model any more
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        local.work_wait(item, wait=20, dims=384)
    assert time.monotonic() - started < 3
    assert refused.value.status == 503 and refused.value.retry_after
    assert redis_db.llen(work_list(MODEL, "hi")) == 0


def test_a_failing_step_backs_off_and_logs_one_traceback(loops, redis_db, caplog, monkeypatch):
    """The database (here: the claim) failing for a second gives a handful of log lines, not hundreds."""
    loop = loops("unlucky")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise redis_lib.ConnectionError("Connection refused")

    monkeypatch.setattr(loop, "take", broken)
    thread = loop.start(name="unlucky")
    with caplog.at_level(logging.INFO, logger="workers.drain"):
        time.sleep(2.0)  # not a wait for an event: the window in which the failing steps are counted
        loop.stop()
        thread.join(timeout=10)
    failures = [r for r in caplog.records if "drain step" in r.getMessage()]
    assert 3 <= len(calls) <= 10, len(calls)  # 0.1, 0.2, 0.4, 0.8 s apart: not a busy loop
    assert len(failures) <= 4
    assert sum(1 for r in failures if r.exc_info) == 1


def test_a_queued_request_whose_only_worker_died_gets_503_at_once(loops, redis_db):
    """The worker died before taking it: when no worker of the model beats any more, the request
    leaves the list and ends with 503 (no_worker) instead of waiting out its time."""
    loops("doomed")  # beats once: the admission queues work for the model
    item = _submit(["queued, never taken"])
    redis_db.delete(f"embed:alive:{MODEL}")
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        local.work_wait(item, wait=20, dims=384)
    assert time.monotonic() - started < 3
    assert refused.value.code == "no_worker"
    assert redis_db.llen(work_list(MODEL, "hi")) == 0  # no worker will find it later
