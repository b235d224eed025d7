"""The HTTP API against a real drain loop (in-process thread) on the real model."""

import base64
import uuid

import numpy as np
import pytest

from embeddings.cache import PUBLIC_SCOPE
from embeddings.models import CachedEmbedding

URL = "/v1/embeddings"
MODEL = "all-MiniLM-L6-v2"


def _post(api, body, url=URL):
    return api.post(url, body, format="json")


def _error(response, status):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def u(text="text"):
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(alice, client_for, drainer):
    return client_for(alice)


def test_it_answers_in_openai_shape_with_the_models_vectors(api, minilm):
    texts = [u("a cat"), u("a dog")]
    r = _post(api, {"model": MODEL, "input": texts})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and d["cached"] is False for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    ref = minilm.model.encode(texts)
    for d, r_ in zip(body["data"], ref, strict=True):
        assert len(d["embedding"]) == 384
        assert _cos(d["embedding"], r_) > 0.999


def test_duplicates_and_mixed_hits_come_back_in_order(api, minilm):
    a, b, c = u("alpha"), u("beta"), u("gamma")
    assert _post(api, {"model": MODEL, "input": [b]}).status_code == 200  # b is now cached
    r = _post(api, {"model": MODEL, "input": [a, b, a, c, b, a]}).json()
    got = [np.array(d["embedding"]) for d in r["data"]]
    want = minilm.model.encode([a, b, a, c, b, a])
    for g, w in zip(got, want, strict=True):
        assert _cos(g, w) > 0.999
    assert [d["cached"] for d in r["data"]] == [False, True, False, False, True, False]
    assert [d["index"] for d in r["data"]] == list(range(6))


def test_a_second_request_is_a_cache_hit_and_writes_nothing(api):
    text = u("cache me")
    first = _post(api, {"model": MODEL, "input": text}).json()
    rows = CachedEmbedding.objects.count()
    second = _post(api, {"model": MODEL, "input": text}).json()
    assert second["data"][0]["cached"] is True
    assert second["data"][0]["embedding"] == first["data"][0]["embedding"]
    assert CachedEmbedding.objects.count() == rows == 1


def test_a_repeated_hit_makes_no_database_query(api, django_assert_num_queries):
    """The key (accounts/authcache.py) and the vector (embeddings/hotcache.py) are both in this
    process's memory after the first request; Redis still counts the limits and usage."""
    text = u("hot")
    assert _post(api, {"model": MODEL, "input": text}).status_code == 200
    assert _post(api, {"model": MODEL, "input": text}).status_code == 200
    with django_assert_num_queries(0):
        r = _post(api, {"model": MODEL, "input": text})
    assert r.status_code == 200 and r.json()["data"][0]["cached"] is True


def test_base64_decodes_to_the_float_vector(api):
    text = u("base64")
    f = _post(api, {"model": MODEL, "input": text}).json()["data"][0]["embedding"]
    b = _post(api, {"model": MODEL, "input": text, "encoding_format": "base64"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(b), dtype="<f4"), f, rtol=1e-6)


def test_dimensions_cut_and_renormalize_from_the_same_stored_vector(api):
    text = u("dims")
    full = np.array(_post(api, {"model": MODEL, "input": text}).json()["data"][0]["embedding"])
    r = _post(api, {"model": MODEL, "input": text, "dimensions": 64}).json()["data"][0]
    assert r["cached"] is True and len(r["embedding"]) == 64
    np.testing.assert_allclose(r["embedding"], full[:64] / np.linalg.norm(full[:64]), rtol=1e-5, atol=1e-6)


def test_public_requests_share_and_private_requests_do_not_leak(alice, bob, client_for, drainer):
    secret, shared = u("alice private"), u("public")
    alice_api, bob_api = client_for(alice), client_for(bob)
    assert _post(alice_api, {"model": MODEL, "input": secret}).status_code == 200
    assert _post(alice_api, {"model": MODEL, "input": shared, "public": True}).status_code == 200
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == 1
    assert CachedEmbedding.objects.filter(scope=PUBLIC_SCOPE).count() == 1
    r = _post(bob_api, {"model": MODEL, "input": [secret, shared]}).json()
    assert [d["cached"] for d in r["data"]] == [False, True]  # bob reads public, not alice's


def test_unicode_nul_and_overlong_texts_embed(api):
    long_text = "word " * 2000
    texts = ["a\x00b", "ünïcødé 🚀 日本語", long_text, "\t \n"]
    r = _post(api, {"model": MODEL, "input": texts})
    assert r.status_code == 200, r.content
    tokens = r.json()["usage"]["total_tokens"]
    assert tokens >= 256  # the long text was truncated to the model's 256 tokens


def test_embed_and_embed_batch(api, minilm):
    t = u("single")
    r = _post(api, {"text": t}, "/v1/embed").json()
    assert r["model"] == MODEL and r["dimensions"] == 384 and r["cached"] is False and r["tokens"] > 0
    assert r["latency_ms"] >= 0
    assert _cos(r["embedding"], minilm.model.encode([t])[0]) > 0.999
    r = _post(api, {"texts": [t, u("other")], "dimensions": 32}, "/v1/embed/batch").json()
    assert r["cached"] == [True, False] and r["dimensions"] == 32 and len(r["embeddings"][1]) == 32


def test_models_lists_the_default_model(api):
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    assert {"id": MODEL, "object": "model", "dimensions": 384, "max_tokens": 256, "compute": "local"}.items() <= body[
        "data"
    ][0].items()


def test_a_key_revoked_between_two_hits_fails_the_second(api, alice):
    from accounts.services import api_key_revoke

    text = u("hit then revoke")
    assert _post(api, {"model": MODEL, "input": text}).status_code == 200
    assert _post(api, {"model": MODEL, "input": text}).json()["data"][0]["cached"] is True
    api_key_revoke(tenant=alice.tenant, prefix=alice.api_key.prefix)
    _error(_post(api, {"model": MODEL, "input": text}), 401)
