"""Embedding through a provider, end to end: the web request, a real Celery worker on the
provider queue (threads pool, in this process), the fake upstream, the cache, the reply."""

from __future__ import annotations

import time

import numpy as np
import pytest

from embeddings.models import CachedEmbedding
from tests.factories import ProviderFactory

MODEL = "myopenai/text-embedding-3-small"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def charlie_provider(charlie, fake, provider_worker):
    return ProviderFactory(tenant=charlie.tenant, endpoint=fake.url())


def _embed(client, texts, model=MODEL, **extra):
    return client.post("/v1/embeddings", {"model": model, "input": texts, **extra}, format="json")


def test_a_free_tenant_embeds_through_its_provider_then_hits_the_cache(charlie, client_for, fake, charlie_provider):
    client = client_for(charlie)
    first = _embed(client, ["hello", "world", "hello"])
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["model"] == MODEL
    assert [d["cached"] for d in body["data"]] == [False, False, False]
    assert np.allclose([d["embedding"] for d in body["data"]], [fake.vector(t) for t in ("hello", "world", "hello")])
    assert [r.body["input"] for r in fake.requests] == [["hello", "world"]]  # duplicates once, one call
    assert fake.requests[0].body["model"] == "text-embedding-3-small"

    second = _embed(client, ["world", "hello"])
    assert [d["cached"] for d in second.json()["data"]] == [True, True]
    assert len(fake.requests) == 1
    rows = CachedEmbedding.objects.filter(model=MODEL)
    assert {r.scope for r in rows} == {charlie.tenant.pk} and rows.count() == 2
    # Provider texts count toward the tier's quota like any other, hits included.
    assert int(second["X-RateLimit-Remaining"]) == int(second["X-RateLimit-Limit"]) - 5


def test_server_models_stay_refused_for_a_free_tenant(charlie, client_for, charlie_provider):
    response = _embed(client_for(charlie), ["x"], model="all-MiniLM-L6-v2")
    assert response.status_code == 403
    assert "configure a provider" in response.json()["error"]["message"]


def test_misses_are_batched_per_upstream_call(charlie, client_for, fake, charlie_provider):
    charlie_provider.max_inputs = 2
    charlie_provider.save()
    response = _embed(client_for(charlie), [f"t{i}" for i in range(5)])
    assert response.status_code == 200, response.content
    assert sorted(len(r.body["input"]) for r in fake.requests) == [1, 2, 2]


def test_upstream_500_is_retried_then_502_with_its_message(charlie, client_for, fake, charlie_provider, settings):
    settings.PROVIDER_MAX_RETRIES = 1
    fake.then(status=500, message="upstream exploded").then(status=500, message="upstream exploded")
    response = _embed(client_for(charlie), ["boom"])
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "The provider `myopenai` answered 500: upstream exploded"
    assert response.json()["error"]["type"] == "upstream_error"
    assert len(fake.requests) == 2
    assert not CachedEmbedding.objects.filter(model=MODEL).exists()


def test_429_with_retry_after_is_honored(charlie, client_for, fake, charlie_provider):
    fake.then(status=429, message="rate limited", headers={"Retry-After": "1"})
    started = time.monotonic()
    response = _embed(client_for(charlie), ["patience"])
    assert response.status_code == 200, response.content
    assert time.monotonic() - started >= 1.0
    first, second = fake.requests
    assert second.at - first.at >= 1.0


def test_a_slow_upstream_is_a_504(charlie, client_for, fake, charlie_provider, settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 1.0
    fake.then(sleep=3)
    response = _embed(client_for(charlie), ["slow"])
    assert response.status_code == 504
    assert "did not answer within 1 s" in response.json()["error"]["message"]


def test_bob_cannot_embed_with_charlies_provider(bob, client_for, fake, charlie_provider):
    response = _embed(client_for(bob), ["x"])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert fake.requests == []


def test_public_is_refused_for_provider_models(charlie, client_for, fake, charlie_provider):
    response = _embed(client_for(charlie), ["x"], public=True)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "public"


def test_an_overlong_model_name_is_a_400(charlie, client_for, fake, charlie_provider):
    response = _embed(client_for(charlie), ["x"], model="myopenai/" + "m" * 300)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    assert fake.requests == []



def test_a_vector_wider_than_provider_max_dims_is_a_502_naming_the_limit_and_nothing_is_stored(
        charlie, client_for, fake, charlie_provider):
    """Issue 16 part 4: an upstream may not make one text cost 65,536 x 4 bytes of the tenant's cache."""
    fake.then(dims=8193)
    response = _embed(client_for(charlie), ["wide"])
    assert response.status_code == 502, response.content
    message = response.json()["error"]["message"]
    assert "8193 dimensions" in message and "at most 8192 (PROVIDER_MAX_DIMS)" in message
    assert not CachedEmbedding.objects.filter(model=MODEL).exists()
    fake.then(dims=8192)  # the limit itself is fine
    response = _embed(client_for(charlie), ["wide enough"])
    assert response.status_code == 200, response.content
    assert len(response.json()["data"][0]["embedding"]) == 8192


# --- issue 16 part 3: the cache version follows the provider's configuration -------------------

def test_a_changed_template_means_fresh_vectors_but_a_new_key_does_not(charlie, client_for, jwt_client, fake,
                                                                       charlie_provider):
    """GIVEN cached vectors of a provider WHEN its request template changes THEN the next request
    is a miss that reaches the upstream with the new template (the old rows stop matching); a new
    api_key for the same upstream keeps the cache."""
    client, admin = client_for(charlie), jwt_client(charlie)
    assert [d["cached"] for d in _embed(client, ["hello"]).json()["data"]] == [False]
    url = f"/v1/providers/{charlie_provider.pk}"
    assert admin.patch(url, {"api_key": "sk-rotated-key-00001111"}, format="json").status_code == 200
    fake.expected_key = "sk-rotated-key-00001111"
    assert [d["cached"] for d in _embed(client, ["hello"]).json()["data"]] == [True]
    assert len(fake.requests) == 1

    template = {"model": "{{model}}", "input": "{{texts}}", "encoding_format": "float", "user": "tenant-x"}
    response = admin.patch(url, {"request_template": template, "api_key": "sk-rotated-key-00001111"}, format="json")
    assert response.status_code == 200, response.content
    second = _embed(client, ["hello"])
    assert [d["cached"] for d in second.json()["data"]] == [False]
    assert len(fake.requests) == 2 and fake.requests[-1].body["user"] == "tenant-x"
    assert CachedEmbedding.objects.filter(model=MODEL).values("model_version").distinct().count() == 2


def test_input_type_is_part_of_a_provider_vectors_key(charlie, client_for, jwt_client, fake, charlie_provider):
    """BYOK vectors asked for with another input_type (or none) are cached apart, and a tenant's
    DELETE /v1/cache of the text removes every one of them."""
    client = client_for(charlie)
    for input_type in (None, "query", "document", "query"):
        extra = {"input_type": input_type} if input_type else {}
        assert _embed(client, ["hello"], **extra).status_code == 200
    assert [r.body["input"] for r in fake.requests] == [["hello"]] * 3  # the upstream sees the text itself
    assert [d["cached"] for d in _embed(client, ["hello"], input_type="query").json()["data"]] == [True]
    assert CachedEmbedding.objects.filter(model=MODEL).count() == 3

    deleted = jwt_client(charlie).delete("/v1/cache", {"texts": ["hello"], "input_type": "query", "model": MODEL},
                                         format="json")
    assert deleted.json() == {"deleted": 1}
    assert jwt_client(charlie).delete("/v1/cache", {"texts": ["hello"]}, format="json").json() == {"deleted": 2}
    assert not CachedEmbedding.objects.filter(model=MODEL).exists()


def test_a_full_tenant_cache_gets_provider_vectors_served_but_not_stored(charlie, client_for, fake, charlie_provider,
                                                                         tiers):
    """Issue 16 part 4: the tier's max_cache_bytes caps the provider worker's store too."""
    free = tiers["free"]
    free.max_cache_bytes = 8 * 4  # one of the fake's 8-wide vectors
    free.save()
    client = client_for(charlie)
    assert _embed(client, ["p1"]).status_code == 200
    response = _embed(client, ["p2"])
    assert response.status_code == 200, response.content
    assert np.allclose(response.json()["data"][0]["embedding"], fake.vector("p2"))
    assert CachedEmbedding.objects.filter(model=MODEL).count() == 1
    assert _embed(client, ["p3"]).status_code == 200
    assert CachedEmbedding.objects.filter(model=MODEL).count() == 1
