"""GET /v1/models (the served models and the caller's BYOK ones) and GET /v1/models/{id} (a model
with the drain loops serving it, as their heartbeats say, and the work waiting for it)."""

import time

import orjson
import pytest

from dispatch.keys import model_workers_key, work_list
from embeddings.registry import DEFAULT_MODEL
from embedplatform.errors import MODEL_UNKNOWN
from providers.dispatch import provider_cache_version
from providers.models import ProviderConfig
from workers.drain import Drainer

BYOK = "myopenai/text-embedding-3-small"


def _provider(world, name="myopenai", preset="openai", model="text-embedding-3-small"):
    return ProviderConfig.objects.create(tenant=world.tenant, name=name, preset=preset, model=model)


def _get(client, path, status=200):
    response = client.get(path)
    assert response.status_code == status, response.content
    return response.json()


@pytest.mark.django_db
def test_the_list_holds_the_local_models_and_the_callers_own_byok_models(alice, bob, client_for, redis_db, settings):
    settings.EMBED_MODEL_ALIASES = ""  # no aliases (tests/embeddings/test_dropin.py has them)
    provider = _provider(alice)
    _provider(alice, name="mine", preset="custom", model="")  # no default model: nothing to list
    _provider(bob, name="bobs")
    body = _get(client_for(alice), "/v1/models")
    assert [m["id"] for m in body["data"]] == [DEFAULT_MODEL, BYOK]
    local, byok = body["data"]
    assert local | {"version": None} == {"id": DEFAULT_MODEL, "object": "model", "dimensions": 384, "max_tokens": 256,
                                         "compute": "local", "kind": "embed", "owned_by": "embedplatform",
                                         "version": None, "alias_of": None}
    assert byok == {"id": BYOK, "object": "model", "dimensions": None, "max_tokens": None, "compute": "byok",
                    "kind": "embed", "owned_by": "openai", "version": provider_cache_version(provider),
                    "alias_of": None}
    assert [m["id"] for m in _get(client_for(bob), "/v1/models")["data"]] == [DEFAULT_MODEL, "bobs/text-embedding-3-small"]


def test_a_local_model_shows_the_drain_loops_serving_it(alice, client_for, drainer, minilm):
    body = _get(client_for(alice), f"/v1/models/{DEFAULT_MODEL}")
    precision = "fp32" if minilm.big.name != "bf16" else ("fp32/bf16" if minilm.small.name != "bf16" else "bf16")
    assert body["workers"] == [{"id": "test-drainer", "backend": minilm.backend, "precision": precision,
                                "device": "cpu"}]
    assert body | {"version": None, "workers": None} == {
        "id": DEFAULT_MODEL, "object": "model", "dimensions": 384, "max_tokens": 256, "compute": "local",
        "kind": "embed", "owned_by": "embedplatform", "version": None, "alias_of": None, "matryoshka_dims": [],
        "precision": precision,
        "backend": minilm.backend, "workers": None, "queue_depth": 0}
    assert body["version"] == minilm.spec.version


@pytest.mark.django_db
def test_queue_depth_counts_both_lists_and_a_dead_loops_entry_is_skipped(alice, client_for, redis_db):
    redis_db.rpush(work_list(DEFAULT_MODEL, "hi"), b"a", b"b")
    redis_db.rpush(work_list(DEFAULT_MODEL, "lo"), b"c")
    redis_db.hset(model_workers_key(DEFAULT_MODEL), "gone",
                  orjson.dumps({"backend": "onnx", "precision": "fp32", "device": "cpu", "until": int(time.time()) - 1}))
    body = _get(client_for(alice), f"/v1/models/{DEFAULT_MODEL}")
    assert (body["queue_depth"], body["workers"], body["precision"], body["backend"]) == (3, [], None, None)


def test_a_loop_publishes_what_it_serves_with_its_heartbeat_and_clears_it_on_the_way_out(redis_db):
    class Runtime:  # a stand-in: what the heartbeat reads of a ModelRuntime
        backend, device = "onnx", "cpu"
        small = type("Small", (), {"name": "onnx"})()
        big = type("Big", (), {"name": "bf16"})()

    loop = Drainer(runtimes={"m1": Runtime(), "m2": Runtime()}, redis=redis_db, max_texts=8, max_tokens=512, name="w1")
    loop.heartbeat(force=True)
    for model in ("m1", "m2"):
        entry = orjson.loads(redis_db.hget(model_workers_key(model), "w1"))
        assert entry.pop("until") > time.time()
        assert entry == {"backend": "onnx", "precision": "fp32/bf16", "device": "cpu"}
        assert 0 < redis_db.ttl(model_workers_key(model)) <= 6
    loop._clear_heartbeat()
    assert not redis_db.exists(model_workers_key("m1"), model_workers_key("m2"))


@pytest.mark.django_db
def test_a_byok_model_of_the_caller_is_its_byok_entry(alice, client_for, redis_db):
    provider = _provider(alice)
    client = client_for(alice)
    body = _get(client, f"/v1/models/{BYOK}")
    assert body == {"id": BYOK, "object": "model", "dimensions": None, "max_tokens": None, "compute": "byok",
                    "kind": "embed", "owned_by": "openai", "version": provider_cache_version(provider),
                    "alias_of": None, "matryoshka_dims": None, "precision": None, "backend": None, "workers": [], "queue_depth": None}
    # Any upstream model through the caller's provider, as the embedding endpoints take it.
    assert _get(client, "/v1/models/myopenai/BAAI/bge-m3")["id"] == "myopenai/BAAI/bge-m3"


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["no-such-model", "bobs/text-embedding-3-small", "nobody/x"])
def test_an_unknown_model_or_another_tenants_provider_is_404_as_the_embedding_endpoints_say(
        alice, bob, client_for, redis_db, model):
    _provider(bob, name="bobs")
    error = _get(client_for(alice), f"/v1/models/{model}", 404)["error"]
    assert error == {"message": MODEL_UNKNOWN.format(model=model), "type": "invalid_request_error",
                     "param": "model", "code": "model_not_found"}
    embed = client_for(alice).post("/v1/embeddings", {"model": model, "input": "x"}, format="json")
    assert embed.status_code == 404 and embed.json()["error"]["message"] == error["message"]
