"""Unknown body fields: a 400 naming the field on our own endpoints (with a hint where it is a known
alias of one of theirs), ignored on OpenAI's, as OpenAI ignores them; the schema says the same."""

import pytest

from embeddings.registry import DEFAULT_MODEL


def _error(response, status=400):
    assert response.status_code == status, response.content
    return response.json()["error"]


@pytest.fixture
def api(alice, client_for, redis_db):
    return client_for(alice)


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "body", "field", "hint"), [
    ("/v1/embed", {"text": "x", "model_name": DEFAULT_MODEL}, "model_name", "model"),
    ("/v1/embed", {"inputs": "x"}, "inputs", "text"),
    ("/v1/embed", {"input": "x"}, "input", "text"),
    ("/v1/embed/batch", {"texts": ["x"], "model_name": DEFAULT_MODEL}, "model_name", "model"),
    ("/v1/embed/batch", {"inputs": ["x"]}, "inputs", "texts"),
    ("/v1/embed/batch", {"texts": ["x"], "dimension": 8}, "dimension", "dimensions"),
    ("/v1/jobs", {"texts": ["x"], "model_name": DEFAULT_MODEL}, "model_name", "model"),
    ("/v1/jobs", {"inputs": ["x"]}, "inputs", "texts"),
    ("/v1/jobs", {"texts": ["x"], "webhook": "https://example.com/h"}, "webhook", "webhook_url"),
    ("/v1/embed/batch", {"texts": ["x"], "seed": 1}, "seed", None),
])
def test_an_unknown_field_on_our_endpoints_is_a_400_naming_it(api, url, body, field, hint):
    error = _error(api.post(url, body, format="json"))
    assert (error["param"], error["code"], error["type"]) == (field, "unknown_field", "invalid_request_error")
    assert error["message"].startswith(f"Unknown field `{field}`")
    if hint:
        assert f"(did you mean `{hint}`?)" in error["message"]
    else:
        assert "did you mean" not in error["message"]
    assert "This endpoint takes: model, " in error["message"]


@pytest.mark.django_db
def test_the_unknown_field_comes_before_the_missing_one_it_stood_for(api):
    """seed 001's body: `model_name` and `inputs` where the API takes `model` and `texts`."""
    error = _error(api.post("/v1/embed/batch", {"model_name": DEFAULT_MODEL, "inputs": ["a"]}, format="json"))
    assert error["param"] == "model_name" and "`model`" in error["message"]


def test_openai_endpoint_still_ignores_fields_openai_ignores(api, drainer):
    body = {"model": DEFAULT_MODEL, "input": "unknown fields pass here", "model_name": "x", "seed": 1}
    response = api.post("/v1/embeddings", body, format="json")
    assert response.status_code == 200, response.content
    assert len(response.json()["data"][0]["embedding"]) == 384


@pytest.mark.django_db
def test_the_schema_closes_our_request_bodies_and_leaves_openais_open(api):
    schemas = api.get("/api/schema", HTTP_ACCEPT="application/json").json()["components"]["schemas"]
    for name in ("EmbedRequest", "EmbedBatchRequest", "JobCreateRequest"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "additionalProperties" not in schemas["EmbeddingsRequest"]
    assert "additionalProperties" not in schemas["Job"]  # responses stay as they were
