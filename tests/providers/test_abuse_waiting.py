"""Bounded waiting through BYOK providers (issue 16, part 1): provider misses count as sync
requests in flight; a tenant's calls hold at most its bound of provider-worker threads; POST
/v1/providers/{id}/test ends within PROVIDER_TEST_TIMEOUT_SECONDS and is rate-limited per tenant.

A real Celery worker on the provider queue (threads pool, in this process) and the fake
upstream (tests/fakes/provider_server.py), which can be told to answer slowly."""

from __future__ import annotations

import time

import pytest
from celery.signals import task_postrun

from accounts.quotas import inflight_count, provider_slot_key
from dispatch.keys import PROVIDER_EMBED_TASK
from tests.factories import ProviderFactory
from tests.helpers import in_thread, poll_until, tier_limit
from tests.providers.conftest import openai_body

MODEL = "myopenai/text-embedding-3-small"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def charlie_provider(charlie, fake, provider_worker, redis_db):
    from dispatch.keys import provider_alive_key

    redis_db.set(provider_alive_key(), "1", ex=120)  # the in-process worker's beat may be later than the test
    return ProviderFactory(tenant=charlie.tenant, endpoint=fake.url())


def _embed(client, texts, **extra):
    return client.post("/v1/embeddings", {"model": MODEL, "input": texts, **extra}, format="json")


def test_provider_misses_count_as_sync_requests_in_flight(charlie, client_for, fake, charlie_provider):
    """GIVEN charlie's tier allows 1 sync request in flight and his upstream is slow WHEN one
    request waits for it THEN a second is 429 too_many_in_flight at once (no upstream call); the
    slot is free again when the first ends (here a 504: the upstream was too slow)."""
    tier_limit(charlie, max_sync_in_flight=1)
    fake.then(sleep=3)
    first = in_thread(lambda: _embed(client_for(charlie), ["slow"], wait=1.5))
    poll_until(lambda: inflight_count(charlie.tenant.pk) == 1, timeout=5, message="the first request to wait")
    started = time.monotonic()
    refused = _embed(client_for(charlie), ["another"])
    assert time.monotonic() - started < 1.0
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_in_flight"
    assert refused["Retry-After"] == "1" and "X-RateLimit-Remaining-Requests" in refused
    first[0].join(timeout=10)
    assert first[1][0].status_code == 504
    assert inflight_count(charlie.tenant.pk) == 0
    assert [r.body["input"] for r in fake.requests] == [["slow"]]


def test_a_tenant_holds_at_most_its_bound_of_provider_worker_threads(charlie, client_for, fake, charlie_provider,
                                                                     redis_db):
    """Item 2 alone does not bound the provider worker: a waiter gives up at its deadline, but the
    provider call it left may still hold a thread (an upstream that drips its answer runs each
    attempt's connect and read timeouts in turn), and the tenant may then send the next request.
    So each call takes one of its tenant's provider slots (tier.max_sync_in_flight).

    GIVEN charlie's bound is 1 and a call of his still holds his slot (as a call left by a
    request that gave up would) WHEN he sends a request THEN its provider task does not call the
    upstream (it comes back later, taking no thread) until the slot is free; then it runs and the
    request is served; the slot is released after the call."""
    tier_limit(charlie, max_sync_in_flight=1)
    key = provider_slot_key(charlie.tenant.pk)
    redis_db.zadd(key, {"an-earlier-call": time.time() + 60})
    runs = []

    def count_run(sender, **kwargs):
        if sender.name == PROVIDER_EMBED_TASK:
            runs.append(sender.name)

    task_postrun.connect(count_run, weak=False)
    try:
        request = in_thread(lambda: _embed(client_for(charlie), ["queued behind"], wait=5))
        poll_until(lambda: len(runs) >= 2, timeout=5, message="the provider task to run twice while the slot is held")
    finally:
        task_postrun.disconnect(count_run)
    assert fake.requests == []  # the task re-queued itself rather than call the upstream
    freed_at = time.monotonic()
    redis_db.zrem(key, "an-earlier-call")
    request[0].join(timeout=10)
    response = request[1][0]
    assert response.status_code == 200, response.content
    assert [r.body["input"] for r in fake.requests] == [["queued behind"]]
    assert fake.requests[0].at >= freed_at
    assert redis_db.zcard(key) == 0  # released after the call


def test_a_provider_slot_left_by_a_killed_worker_ends_at_its_deadline(charlie, client_for, fake, charlie_provider,
                                                                      redis_db):
    tier_limit(charlie, max_sync_in_flight=1)
    redis_db.zadd(provider_slot_key(charlie.tenant.pk), {"killed": time.time() - 1})
    response = _embed(client_for(charlie), ["after a crash"], wait=5)
    assert response.status_code == 200, response.content


# --- POST /v1/providers/{id}/test ----------------------------------------------------------------

@pytest.fixture
def charlie_test_url(charlie, jwt_client, fake, redis_db):
    created = jwt_client(charlie).post("/v1/providers", openai_body(fake), format="json")
    assert created.status_code == 201, created.content
    return f"/v1/providers/{created.json()['id']}/test"


def test_the_provider_test_ends_within_its_deadline_retries_included(charlie, jwt_client, fake, charlie_test_url,
                                                                    settings):
    """GIVEN PROVIDER_TEST_TIMEOUT_SECONDS = 1 (PROVIDER_TIMEOUT_SECONDS 5) WHEN the upstream hangs
    for 4 s, or fails with retriable 500s THEN the web thread answers within the deadline (ok
    false, status 504 naming it; or the upstream's failure)."""
    settings.PROVIDER_TEST_TIMEOUT_SECONDS = 1.0
    fake.then(sleep=4)
    started = time.monotonic()
    body = jwt_client(charlie).post(charlie_test_url).json()
    took = time.monotonic() - started
    assert took < 1.5, took
    assert body["ok"] is False and body["status"] == 504
    assert "1 s" in body["error"]

    for _ in range(4):
        fake.then(status=500, headers={"Retry-After": "0.4"})
    started = time.monotonic()
    body = jwt_client(charlie).post(charlie_test_url).json()
    took = time.monotonic() - started
    assert took < 1.5, took
    assert body["ok"] is False and body["status"] in (502, 504)


def test_the_provider_test_is_rate_limited_per_tenant(charlie, alice, jwt_client, fake, charlie_test_url, settings):
    settings.PROVIDER_TEST_RATE = "2/m"
    client = jwt_client(charlie)
    assert [client.post(charlie_test_url).status_code for _ in range(2)] == [200, 200]
    refused = client.post(charlie_test_url)
    assert refused.status_code == 429, refused.content
    error = refused.json()["error"]
    assert error["code"] == "provider_test_throttled" and "2 times a minute" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["X-RateLimit-Limit"] == "2" and refused["X-RateLimit-Remaining"] == "0"
    assert len(fake.requests) == 2  # the refused test called nothing
    created = jwt_client(alice).post("/v1/providers", openai_body(fake), format="json")
    assert jwt_client(alice).post(f"/v1/providers/{created.json()['id']}/test").status_code == 200  # another tenant


def test_the_openapi_schema_declares_the_test_endpoints_429():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    op = schema["paths"]["/v1/providers/{provider_id}/test"]["post"]
    assert "429" in op["responses"] and "PROVIDER_TEST_TIMEOUT_SECONDS" in op["description"]
