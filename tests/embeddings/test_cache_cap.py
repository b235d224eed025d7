"""A tier caps the bytes a tenant's private cache may hold (Tier.max_cache_bytes, issue 16 part 4):
over the cap new vectors are served but not stored, /v1/usage says so, and jobs (whose results are
read back from the cache) are refused until room is made. Through HTTP, with a real drain loop."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from accounts.authcache import cache_clear
from embeddings import cachecap
from embeddings.models import CachedEmbedding

MODEL = "all-MiniLM-L6-v2"
VECTOR_BYTES = 384 * 4  # MiniLM: 384 float32 components

pytestmark = pytest.mark.django_db(transaction=True)


def _skipped() -> float:
    return REGISTRY.get_sample_value("embed_cache_store_skipped_total") or 0.0


def _embed(client, texts):
    response = client.post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_full_tenant_cache_serves_but_stores_nothing_more_and_refuses_jobs(
        alice, bob, client_for, jwt_for, drainer, tiers):
    paid = tiers["paid"]
    paid.max_cache_bytes = 3 * VECTOR_BYTES
    paid.save()
    client = client_for(alice)
    scope = alice.tenant.pk

    _embed(client, ["c1", "c2", "c3"])
    assert CachedEmbedding.objects.filter(scope=scope).count() == 3
    cache = client.get("/v1/usage").json()["cache"]
    assert cache["bytes"] == 3 * VECTOR_BYTES and cache["limit_bytes"] == 3 * VECTOR_BYTES and cache["full"] is True

    # Full: the new texts are answered, not stored; the hits are still hits.
    before = _skipped()
    body = _embed(client, ["c4", "c5", "c1"])
    assert [d["cached"] for d in body["data"]] == [False, False, True]
    assert all(len(d["embedding"]) == 384 for d in body["data"])
    assert CachedEmbedding.objects.filter(scope=scope).count() == 3
    assert _skipped() - before == 2

    # A job would have nowhere to keep its results: refused at once, naming the cap.
    job = client.post("/v1/jobs", {"model": MODEL, "texts": ["j1"]}, format="json")
    assert job.status_code == 403, job.content
    error = job.json()["error"]
    assert error["code"] == "cache_full" and f"({3 * VECTOR_BYTES} bytes)" in error["message"]
    assert "DELETE /v1/cache" in error["message"]

    # Another tenant of the same tier has its own room.
    _embed(client_for(bob), ["c4"])
    assert CachedEmbedding.objects.filter(scope=bob.tenant.pk).count() == 1

    # Deleting entries makes room at once.
    deleted = jwt_for(alice).delete("/v1/cache", {"texts": ["c1"]}, format="json")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 1}
    assert client.get("/v1/usage").json()["cache"]["full"] is False
    assert client.post("/v1/jobs", {"model": MODEL, "texts": ["j1"]}, format="json").status_code == 202


def test_the_cap_is_counted_by_the_writers_without_asking_usage(alice, client_for, drainer, tiers, redis_db):
    """The writers' own count (Redis, recounted from Postgres when missing) stops the growth even
    if nobody reads /v1/usage; no limit (0) shows as null."""
    paid = tiers["paid"]
    paid.max_cache_bytes = 2 * VECTOR_BYTES
    paid.save()
    client = client_for(alice)
    _embed(client, ["w1"])
    _embed(client, ["w2"])
    _embed(client, ["w3", "w4"])
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == 2

    paid.max_cache_bytes = 0
    paid.save()
    redis_db.delete(f"cachecap:{alice.tenant.pk}")  # as the recount after CACHE_CAP_RECOUNT_SECONDS
    cachecap._memo.clear()  # ... and the writers' own memo after MEMO_SECONDS
    _embed(client, ["w5"])
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == 3
    cache_clear()  # the web's key cache holds the tier for AUTH_CACHE_SECONDS
    cache = client.get("/v1/usage").json()["cache"]
    assert cache["limit_bytes"] is None and cache["full"] is False and cache["bytes"] == 3 * VECTOR_BYTES



def test_the_usage_schema_documents_the_cap(alice, client_for, redis_db, tiers):
    """/v1/usage's real answer has the OpenAPI document's UsageCache shape (limit_bytes, full)."""
    from drf_spectacular.generators import SchemaGenerator

    props = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]["UsageCache"]["properties"]
    assert props["limit_bytes"]["type"] == "integer" and props["limit_bytes"]["nullable"] is True
    assert props["full"]["type"] == "boolean"
    cache = client_for(alice).get("/v1/usage").json()["cache"]
    assert set(cache) == set(props)
    assert cache["limit_bytes"] == 16 << 30 and cache["full"] is False  # the paid tier's 16 GB
    tiers["paid"].max_cache_bytes = 0
    tiers["paid"].save()
    cache_clear()  # the web's key cache holds the tier for AUTH_CACHE_SECONDS
    assert client_for(alice).get("/v1/usage").json()["cache"]["limit_bytes"] is None
