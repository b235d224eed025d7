"""Bounded waiting (issue 16, part 1): `wait` is capped at SYNC_WAIT_MAX, and a tenant's sync
requests in flight (those that wait for a worker) are bounded by its tier's max_sync_in_flight,
so one tenant cannot hold the web's threads.

Through HTTP with real PostgreSQL and Redis. The "worker" is a thread that takes every work item
from the model's list and answers only the ones it is told to (bob's), so alice's requests wait
for as long as they asked: what a slow or stalled model worker, or an attacker's long waits, do.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from accounts.quotas import INFLIGHT_GRACE_SECONDS, inflight_count, inflight_key
from dispatch.frames import WorkItem, reply_error, reply_ok, reply_send
from dispatch.keys import alive_key, work_list
from tests.helpers import in_thread, poll_until, tier_limit

MODEL = "all-MiniLM-L6-v2"
DIMS = 384
pytestmark = pytest.mark.django_db(transaction=True)


class FakeWorker:
    """Takes every item of MODEL's list; answers those of `answer` tenants (vectors, or an error
    frame for `fail` tenants) and never the others."""

    def __init__(self, redis, *, answer=(), fail=()):
        self.redis, self.answer, self.fail = redis, set(answer), set(fail)
        self.taken: list[WorkItem] = []
        self._stop = threading.Event()
        redis.set(alive_key(MODEL), "1", ex=120)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-worker")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            popped = self.redis.blpop([work_list(MODEL, "hi")], timeout=0.1)
            if popped is None:
                continue
            item = WorkItem.loads(popped[1])
            self.taken.append(item)
            if item.tenant in self.fail:
                reply_send(item.id, reply_error("the fake worker refuses this text"))
            elif item.tenant in self.answer:
                n = len(item.texts)
                reply_send(item.id, reply_ok(np.full(n, 3), np.ones((n, DIMS), dtype=np.float32)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def worker(redis_db, alice, bob):
    fake = FakeWorker(redis_db, answer={bob.tenant.pk})
    yield fake
    fake.stop()


# --- wait is bounded by SYNC_WAIT_MAX ----------------------------------------------------------

@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", {"model": MODEL, "input": "x"}),
    ("/v1/embed", {"text": "x"}),
    ("/v1/embed/batch", {"texts": ["x"]}),
    ("/v1/jobs", {"texts": ["x"]}),
])
def test_a_wait_over_sync_wait_max_is_a_400_naming_the_maximum(alice, client_for, redis_db, path, body):
    """GIVEN SYNC_WAIT_MAX at its default (60 s) WHEN a request asks to wait 61 s (it could ask
    600 before) THEN 400 on `wait`, naming the maximum, and no text is counted."""
    response = client_for(alice).post(path, {**body, "wait": 61}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "wait"
    assert "at most 60 seconds" in error["message"] and "SYNC_WAIT_MAX" in error["message"]


def test_sync_wait_max_is_the_servers_setting_and_wait_0_keeps_its_meaning(alice, client_for, redis_db, settings):
    settings.SYNC_WAIT_MAX = 5
    client = client_for(alice)
    over = client.post("/v1/embed", {"text": "x", "wait": 5.5}, format="json")
    assert over.status_code == 400 and "at most 5 seconds" in over.json()["error"]["message"]
    # wait 0: /v1/embed and /v1/embed/batch answer 202 with a job at once; /v1/embeddings refuses it.
    job = client.post("/v1/embed/batch", {"texts": ["zero wait"], "wait": 0}, format="json")
    assert job.status_code == 202 and job.json()["object"] == "job"
    refused = client.post("/v1/embeddings", {"model": MODEL, "input": "x", "wait": 0}, format="json")
    assert refused.status_code == 400 and "/v1/embed/batch" in refused.json()["error"]["message"]


# --- a tenant's sync requests in flight are bounded --------------------------------------------

def test_the_n_plus_first_waiting_request_of_a_tenant_is_429_while_others_are_served(
        alice, bob, client_for, worker, redis_db):
    """GIVEN alice's tier allows 2 sync requests in flight and the worker never answers her
    WHEN 2 of her requests wait THEN her 3rd is 429 too_many_in_flight (Retry-After 1, the
    X-RateLimit headers, nothing counted), her cache hits are still served, bob is served; once
    her waits end (job fallback, timeout) the slots are free again."""
    tier_limit(alice, max_sync_in_flight=2)
    from embeddings.cache import cache_upsert, text_key

    cache_upsert(model=MODEL, version=_version(), scope=alice.tenant.pk,
                 rows=[(text_key("cached text"), 2, np.ones(DIMS, dtype=np.float32))])
    waiting = [
        in_thread(lambda i=i: client_for(alice).post("/v1/embed/batch", {"texts": [f"slow {i}"], "wait": 2},
                                                     format="json"))
        for i in range(2)
    ]
    poll_until(lambda: inflight_count(alice.tenant.pk) == 2, timeout=5, message="both requests to wait")
    assert 0 < redis_db.ttl(inflight_key(alice.tenant.pk)) <= 60 + 2 * INFLIGHT_GRACE_SECONDS  # a leak ends

    client = client_for(alice)
    refused = client.post("/v1/embeddings", {"model": MODEL, "input": ["a", "b"]}, format="json")
    assert refused.status_code == 429, refused.content
    error = refused.json()["error"]
    assert error["code"] == "too_many_in_flight" and error["type"] == "rate_limit_error"
    assert "2 requests waiting" in error["message"] and "/v1/jobs" in error["message"]
    assert refused["Retry-After"] == "1"
    assert refused["X-RateLimit-Limit-Requests"] == str(alice.tenant.tier.requests_per_minute)
    daily = alice.tenant.tier.daily_limit
    assert refused["X-RateLimit-Remaining"] == str(daily - 2)  # the two waiting texts only: none of its own

    hit = client.post("/v1/embed", {"text": "cached text"}, format="json")  # a pure hit waits for nothing
    assert hit.status_code == 200 and hit.json()["cached"] is True
    other = client_for(bob).post("/v1/embeddings", {"model": MODEL, "input": ["bob's text"]}, format="json")
    assert other.status_code == 200, other.content

    for thread, out in waiting:
        thread.join(timeout=10)
        assert out[0].status_code == 202  # the wait ran out: a job
    assert inflight_count(alice.tenant.pk) == 0
    timed_out = client.post("/v1/embeddings", {"model": MODEL, "input": ["again"], "wait": 0.3}, format="json")
    assert timed_out.status_code == 504  # admitted again (then the worker let it time out)
    assert inflight_count(alice.tenant.pk) == 0  # released after the timeout too


def test_an_error_reply_releases_the_slot(alice, client_for, redis_db):
    tier_limit(alice, max_sync_in_flight=1)
    fake = FakeWorker(redis_db, fail={alice.tenant.pk})
    try:
        client = client_for(alice)
        for text in ("one", "two", "three"):  # with a bound of 1, each needs the slot the last one freed
            response = client.post("/v1/embeddings", {"model": MODEL, "input": [text]}, format="json")
            assert response.status_code == 400 and "fake worker refuses" in response.json()["error"]["message"]
        assert len(fake.taken) == 3
        assert inflight_count(alice.tenant.pk) == 0
    finally:
        fake.stop()


def test_a_slot_left_by_a_killed_web_process_ends_at_its_deadline(alice, bob, client_for, worker, redis_db):
    """A web process killed mid-wait never releases its slot: the entry carries its deadline and
    the next admission trims it, and the set itself has a TTL."""
    tier_limit(alice, max_sync_in_flight=1)
    key = inflight_key(alice.tenant.pk)
    redis_db.zadd(key, {"killed-live": time.time() + 30})
    refused = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": ["x"], "wait": 0.3}, format="json")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_in_flight"
    # wait 0 queues no sync work (a job at once): it is never refused by the bound
    assert client_for(alice).post("/v1/embed", {"text": "y", "wait": 0}, format="json").status_code == 202

    redis_db.zadd(key, {"killed-live": time.time() - 1})  # its deadline passed
    admitted = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": ["x"], "wait": 0.3}, format="json")
    assert admitted.status_code == 504  # admitted (the fake worker never answers alice)
    assert redis_db.zcard(key) == 0


def _version() -> str:
    from embeddings.registry import model_get

    return model_get(MODEL).version


def test_the_drain_loop_that_answers_ends_the_in_flight_entry(alice, client_for, drainer, monkeypatch):
    """The worker's reply ends the request's in-flight entry in the same round trip, so the web
    spends no round trip of its own on it after a served miss."""
    from embeddings import serving

    released = []
    monkeypatch.setattr(serving, "inflight_release", lambda inflight: released.append(inflight))
    response = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": "a miss to compute"}, format="json")
    assert response.status_code == 200, response.content
    assert released == []  # the web did not release it ...
    assert inflight_count(alice.tenant.pk) == 0  # ... the drain loop did
