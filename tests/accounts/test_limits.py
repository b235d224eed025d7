"""Tier limits on the data plane: quotas, requests per minute, batch size, headers, usage.

Real PostgreSQL, real Redis and a real drain loop on the real model (the `drainer` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accounts import quotas
from accounts.models import DailyUsage
from accounts.services import usage_flush

MODEL = "all-MiniLM-L6-v2"


def _embed(client, texts, **extra):
    return client.post("/v1/embeddings", {"model": MODEL, "input": texts, **extra}, format="json")


def _limit(world, **fields):
    tier = world.tenant.tier
    for name, value in fields.items():
        setattr(tier, name, value)
    tier.save()


def test_a_daily_quota_is_hit_and_refused_whole(alice, client_for, drainer):
    """GIVEN a daily quota of 5 texts WHEN 3 + 3 texts are sent THEN the second request is
    refused whole (429, Retry-After to midnight UTC) and nothing of it is counted."""
    _limit(alice, daily_limit=5)
    client = client_for(alice)
    first = _embed(client, ["one", "two", "three"])
    assert first.status_code == 200
    assert first["X-RateLimit-Limit"] == "5" and first["X-RateLimit-Remaining"] == "2"
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400
    assert int(first["X-RateLimit-Reset"]) == int(midnight)

    refused = _embed(client, ["four", "five", "six"])
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] == "rate_limit_error"
    assert "daily quota of 5 texts" in error["message"]
    assert 0 < int(refused["Retry-After"]) <= 86401
    assert refused["X-RateLimit-Remaining"] == "2"
    # the two that remain can still be used: the refused request counted nothing
    assert _embed(client, ["four", "five"]).status_code == 200
    assert _embed(client, "six").status_code == 429


def test_cache_hits_count_too_and_failures_are_refunded(alice, client_for, drainer):
    _limit(alice, daily_limit=4)
    client = client_for(alice)
    assert _embed(client, ["same", "same"]).status_code == 200  # 2 texts, even duplicates
    hit = _embed(client, "same")
    assert hit.status_code == 200 and hit.json()["data"][0]["cached"] is True
    assert hit["X-RateLimit-Remaining"] == "1"
    bad = _embed(client, ["x"], dimensions=9999)  # fails after counting: refunded
    assert bad.status_code == 400
    assert bad["X-RateLimit-Remaining"] == "1"


def test_the_monthly_quota_and_the_reset_at_midnight(alice, client_for, drainer, monkeypatch):
    _limit(alice, daily_limit=100, monthly_limit=3)
    client = client_for(alice)
    assert _embed(client, ["a", "b", "c"]).status_code == 200
    refused = _embed(client, "d")
    assert refused.status_code == 429 and "monthly quota of 3" in refused.json()["error"]["message"]

    _limit(alice, daily_limit=2, monthly_limit=100)
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=1, microsecond=0)
    tomorrow = tomorrow.fromtimestamp(tomorrow.timestamp() + 86400, UTC)
    monkeypatch.setattr(quotas, "time_now", lambda: tomorrow)
    ok = _embed(client, ["a", "b"])  # a new day: the daily counter starts again
    assert ok.status_code == 200 and ok["X-RateLimit-Remaining"] == "0"


def test_requests_per_minute_per_key(alice, client_for, redis_db, tiers):
    _limit(alice, requests_per_minute=3)
    client = client_for(alice)
    codes = []
    for _ in range(4):
        response = client.post("/v1/embeddings", {"model": MODEL, "input": []}, format="json")  # 400, still counted
        codes.append(response.status_code)
    assert codes == [400, 400, 400, 429]
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Limit-Requests"] == "3" and response["X-RateLimit-Remaining-Requests"] == "0"
    assert "X-RateLimit-Limit" in response  # the text quota headers ride along


def test_the_rate_window_is_per_tenant_across_its_keys_and_sessions(alice, bob, client_for, jwt_for, redis_db,
                                                                     tiers):
    """GIVEN a tier of 3 requests per minute WHEN alice mints more keys (POST /v1/keys) and uses
    them, and her user session (JWT) too THEN they all share one window: the 4th request is 429
    with the X-RateLimit-*-Requests headers, whichever key sends it; bob's window is his own."""
    _limit(alice, requests_per_minute=3)
    session = jwt_for(alice)
    minted = [session.post("/v1/keys", {"name": f"k{i}"}, format="json") for i in range(2)]
    assert [r.status_code for r in minted] == [201, 201], minted[0].content
    keys = [client_for(key=r.json()["api_key"]) for r in minted]
    first = keys[0].post("/v1/embed", {"text": ""}, format="json")
    assert first.status_code == 400 and first["X-RateLimit-Remaining-Requests"] == "2"
    second = keys[1].post("/v1/embed", {"text": ""}, format="json")
    assert second.status_code == 400 and second["X-RateLimit-Remaining-Requests"] == "1"
    third = session.post("/v1/embeddings", {"model": MODEL, "input": []}, format="json")  # a JWT call counts too
    assert third.status_code == 400 and third["X-RateLimit-Remaining-Requests"] == "0"
    for client in (client_for(alice), *keys, session):
        refused = client.post("/v1/embed", {"text": ""}, format="json")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "3 requests per minute (all its keys together)" in refused.json()["error"]["message"]
        assert 1 <= int(refused["Retry-After"]) <= 60
        assert refused["X-RateLimit-Limit-Requests"] == "3" and refused["X-RateLimit-Remaining-Requests"] == "0"
    assert client_for(bob).post("/v1/embed", {"text": ""}, format="json").status_code == 400  # another tenant


def test_a_request_over_max_batch_size_is_413_with_the_limit(alice, client_for, redis_db, tiers):
    _limit(alice, max_batch_size=3)
    response = _embed(client_for(alice), ["a", "b", "c", "d"])
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "batch_too_large" and "at most 3 per request" in error["message"]
    assert response["X-RateLimit-Remaining"] == str(alice.tenant.tier.daily_limit)  # nothing counted


def test_usage_is_recorded_in_batches_and_shown(alice, bob, client_for, drainer):
    client = client_for(alice)
    _embed(client, ["u1", "u2", "u3"])
    _embed(client, ["u1", "u4"])  # one hit, one miss
    assert not DailyUsage.objects.exists()  # nothing written per request
    usage = client.get("/v1/usage")
    assert usage.status_code == 200, usage.content
    body = usage.json()
    assert (body["cache_hits"], body["cache_misses"]) == (1, 4)
    assert body["today"]["texts"] == 5 and body["today"]["tokens"] > 0
    assert body["today"]["compute_ms"] > 0  # the worker's forward-pass time, counted to alice
    assert body["total_cached"] == 4
    assert body["quota"]["used_today"] == 5 and body["quota"]["daily_limit"] == alice.tenant.tier.daily_limit
    [row] = body["data"]
    assert row["model"] == MODEL and row["cache_misses"] == 4
    # bob sees none of it
    bob_usage = client_for(bob).get("/v1/usage").json()
    assert bob_usage["cache_misses"] == 0 and bob_usage["data"] == [] and bob_usage["total_cached"] == 0
    # later requests add to the same row
    _embed(client, "u5")
    assert usage_flush() == 1
    assert DailyUsage.objects.get(tenant=alice.tenant).cache_misses == 5


def test_a_missing_text_sent_three_times_counts_three_misses_and_their_tokens(alice, client_for, drainer):
    """The worker counts a request's misses (duplicates included), as the request would have."""
    client = client_for(alice)
    body = _embed(client, ["dup dup", "dup dup", "other", "dup dup"]).json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
    usage = client.get("/v1/usage").json()
    assert (usage["cache_hits"], usage["cache_misses"]) == (0, 4)
    assert usage["today"]["tokens"] == body["usage"]["prompt_tokens"] > 0
    assert usage["today"]["compute_ms"] > 0


def test_work_the_admission_cannot_queue_is_503_and_counts_no_text(alice, client_for, redis_db, tiers, settings):
    """The misses' work item is queued by the admission script: refused whole when no worker is
    alive or the queue is full, with nothing counted but the request in its minute window."""
    from dispatch.keys import alive_key, work_list

    client = client_for(alice)
    response = _embed(client, ["nobody", "serves", "me"])
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
    assert quotas.quota_state(tenant=alice.tenant).used_today == 0

    redis_db.set(alive_key(MODEL), "a-worker")
    settings.MAX_QUEUE_DEPTH = 1
    redis_db.rpush(work_list(MODEL, "hi"), b"someone else's work")
    response = _embed(client, ["still", "nobody"])
    assert response.status_code == 503
    assert "queue is full (1 requests waiting)" in response.json()["error"]["message"]
    assert quotas.quota_state(tenant=alice.tenant).used_today == 0
    assert redis_db.llen(work_list(MODEL, "hi")) == 1  # nothing of ours was queued
    assert redis_db.keys("usage:*") == []

    redis_db.delete(work_list(MODEL, "hi"))
    response = _embed(client, ["queued now"], wait=0.2)  # admitted and queued; nobody drains it
    assert response.status_code in (202, 504)
    (raw,) = redis_db.lrange(work_list(MODEL, "hi"), 0, -1)
    assert b"queued now" in raw


def test_usage_rejects_bad_dates(alice, client_for, redis_db, tiers):
    client = client_for(alice)
    assert client.get("/v1/usage?from=yesterday").status_code == 400
    response = client.get("/v1/usage?from=2026-02-02&to=2026-01-01")
    assert response.status_code == 400 and response.json()["error"]["param"] == "from"
    assert client.get("/v1/usage?from=2026-01-01&to=2026-01-31").json()["data"] == []


@pytest.mark.django_db
def test_usage_flush_loses_nothing_under_concurrent_increments(alice, redis_db):
    from accounts.services import usage_record

    for _ in range(3):
        usage_record(tenant_id=alice.tenant.pk, model=MODEL, cache_hits=1, tokens=2)
    usage_flush()
    usage_record(tenant_id=alice.tenant.pk, model=MODEL, cache_hits=1, tokens=2)
    # a flusher that died after renaming leaves a hash behind: the next flush picks it up
    redis_db.rename(f"usage:{datetime.now(UTC).date().isoformat()}|{alice.tenant.pk}|{MODEL}",
                    f"usage:flushing:dead:{datetime.now(UTC).date().isoformat()}|{alice.tenant.pk}|{MODEL}")
    usage_record(tenant_id=alice.tenant.pk, model=MODEL, cache_misses=1)
    usage_flush()
    row = DailyUsage.objects.get(tenant=alice.tenant)
    assert (row.cache_hits, row.cache_misses, row.tokens) == (4, 1, 8)
    assert not list(redis_db.scan_iter(match="usage:*|*"))
