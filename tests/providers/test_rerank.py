"""BYOK rerank (issue 19 part 5), end to end: POST /v1/rerank with `<provider>/<model>` of a
rerank provider (the cohere-rerank, jina-rerank and voyage-rerank presets, or a custom template)
through the web, a real Celery worker on the provider queue (threads pool, in this process), the
fake upstream on 127.0.0.1 (tests/fakes/provider_server.py), the cache and the reply."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from embeddings.models import CachedEmbedding
from providers import ssrf
from providers.clients import TemplateError, Upstream, rerank_pairs_call, scores_extract, template_validate
from providers.dispatch import provider_cache_version
from providers.models import ProviderConfig
from tests.factories import ProviderFactory
from tests.providers.conftest import SECRET

pytestmark = pytest.mark.django_db(transaction=True)

QUERY = "how do vaccines train the immune system?"
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "The stock market closed higher on Tuesday.",
    "Antibodies and memory cells remain after vaccination.",
    "Paris is the capital of France.",
    "Immune responses differ between children and adults.",
]
MODEL = "cohere-rr/rerank-v3.5"


@pytest.fixture
def cohere_rr(charlie, fake, provider_worker) -> ProviderConfig:
    return ProviderFactory(tenant=charlie.tenant, name="cohere-rr", preset="cohere-rerank", endpoint=fake.url("/v2/rerank"))


def _rerank(client, *, model=MODEL, query=QUERY, documents=DOCS, **extra):
    return client.post("/v1/rerank", {"model": model, "query": query, "documents": documents, **extra}, format="json")


def _expected(fake, query=QUERY, documents=DOCS) -> list[tuple[int, float]]:
    scores = [fake.score(query, d) for d in documents]
    return sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))


def test_cohere_rerank_scores_and_orders_as_the_upstream_answers_then_hits_the_cache(charlie, client_for, fake,
                                                                                      cohere_rr):
    client = client_for(charlie)
    response = _rerank(client, top_n=3, return_documents=True)
    assert response.status_code == 200, response.content
    body = response.json()
    expected = _expected(fake)[:3]
    assert [r["index"] for r in body["results"]] == [i for i, _ in expected]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i, _ in expected]
    assert body["model"] == MODEL and body["usage"]["documents"] == 5 and body["usage"]["cached_documents"] == 0
    # One call for the query, every document, no top_n (the platform applies it), the preset's shape.
    assert [(r.path, r.body) for r in fake.requests] == [
        ("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})]
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    rows = CachedEmbedding.objects.filter(model=MODEL)
    assert rows.count() == 5 and {r.scope for r in rows} == {charlie.tenant.pk}

    again = _rerank(client)
    assert again.status_code == 200, again.content
    assert again.json()["usage"]["cached_documents"] == 5
    assert [r["index"] for r in again.json()["results"]] == [i for i, _ in _expected(fake)]
    assert len(fake.requests) == 1  # answered from the cache, no upstream call


@pytest.mark.parametrize(
    ("preset", "path", "model", "sent"),
    [
        ("jina-rerank", "/v1/rerank", "jina-reranker-v2-base-multilingual",
         {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "documents": DOCS, "return_documents": False}),
        ("voyage-rerank", "/voyage/v1/rerank", "rerank-2.5", {"query": QUERY, "documents": DOCS, "model": "rerank-2.5"}),
    ],
)
def test_jina_and_voyage_presets_send_their_shape_and_read_their_answer(charlie, client_for, fake, provider_worker,
                                                                        preset, path, model, sent):
    provider = ProviderFactory(tenant=charlie.tenant, name="rr", preset=preset, endpoint=fake.url(path))
    assert provider.kind == "rerank" and provider.model == model
    response = _rerank(client_for(charlie), model=f"rr/{model}")
    assert response.status_code == 200, response.content
    expected = _expected(fake)
    assert [r["index"] for r in response.json()["results"]] == [i for i, _ in expected]
    assert [r["relevance_score"] for r in response.json()["results"]] == pytest.approx([s for _, s in expected],
                                                                                       abs=1e-6)
    assert [r.body for r in fake.requests] == [sent]
    # Their usage path gives the tokens (spread over the pairs by length).
    total = sum(len(d) for d in DOCS) + len(QUERY) * len(DOCS)
    assert abs(response.json()["usage"]["total_tokens"] - total) <= len(DOCS)


def test_documents_beyond_the_providers_limit_go_in_chunks_mapped_back_by_index(charlie, client_for, fake, cohere_rr):
    cohere_rr.max_inputs = 2
    cohere_rr.save()
    response = _rerank(client_for(charlie))
    assert response.status_code == 200, response.content
    assert [r["index"] for r in response.json()["results"]] == [i for i, _ in _expected(fake)]
    assert [r.body["documents"] for r in fake.requests] == [DOCS[0:2], DOCS[2:4], DOCS[4:]]
    assert {r.body["query"] for r in fake.requests} == {QUERY}


def test_a_work_item_of_two_queries_is_one_call_per_query(fake):
    """The provider worker's side alone: pairs grouped by query, scores back in the item's order."""
    from dispatch.frames import pair_join

    up = Upstream(name="p", endpoint=fake.url("/v2/rerank"),
                  template={"model": "{{model}}", "query": "{{query}}", "documents": "{{documents}}"},
                  response_path="$.results[*].relevance_score", index_path="$.results[*].index",
                  headers={"Authorization": "Bearer {{api_key}}"}, api_key=SECRET, max_inputs=1000, kind="rerank")
    pairs = [("q1", "a"), ("q2", "b"), ("q1", "c"), ("q2", "a")]
    scores, tokens = rerank_pairs_call(up, model="m", texts=[pair_join(q, d) for q, d in pairs])
    assert scores.shape == (4, 1) and scores.dtype == np.float32
    assert scores[:, 0].tolist() == pytest.approx([fake.score(q, d) for q, d in pairs], abs=1e-6)
    assert [(r.body["query"], r.body["documents"]) for r in fake.requests] == [("q1", ["a", "c"]), ("q2", ["b", "a"])]
    assert len(tokens) == 4


def test_a_custom_rerank_template_tei_shaped(charlie, jwt_client, client_for, fake, provider_worker):
    """A custom provider of kind rerank: {{query}} and {{documents}} in the body, a JSONPath to the
    scores and one to their indexes (here TEI's /rerank: a bare list of {index, score})."""
    body = {"name": "tei", "preset": "custom", "kind": "rerank", "endpoint": fake.url("/tei/rerank"),
            "request_template": {"query": "{{query}}", "texts": "{{documents}}", "raw_scores": False},
            "response_path": "$[*].score", "index_path": "$[*].index", "api_key": SECRET, "model": "bge-reranker"}
    created = jwt_client(charlie).post("/v1/providers", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["kind"] == "rerank" and created.json()["index_path"] == "$[*].index"
    assert created.json()["max_inputs"] == 1000  # a custom reranker's default documents per call
    response = _rerank(client_for(charlie), model="tei/bge-reranker")
    assert response.status_code == 200, response.content
    assert [r["index"] for r in response.json()["results"]] == [i for i, _ in _expected(fake)]
    assert fake.requests[0].body == {"query": QUERY, "texts": DOCS, "raw_scores": False}


def test_an_upstream_5xx_is_retried_then_502_and_nothing_is_cached(charlie, client_for, fake, cohere_rr, settings):
    settings.PROVIDER_MAX_RETRIES = 1
    fake.then(status=503, message="overloaded").then(status=503, message="overloaded")
    response = _rerank(client_for(charlie))
    assert response.status_code == 502, response.content
    assert response.json()["error"]["message"] == "The provider `cohere-rr` answered 503: overloaded"
    assert response.json()["error"]["type"] == "upstream_error"
    assert len(fake.requests) == 2
    assert not CachedEmbedding.objects.filter(model=MODEL).exists()
    # A transient failure then an answer: retried, and the answer is served.
    fake.then(status=500)
    assert _rerank(client_for(charlie)).status_code == 200
    assert len(fake.requests) == 4


def test_an_answer_that_leaves_a_document_without_its_score_is_a_502(charlie, client_for, fake, cohere_rr):
    fake.then(drop=1)
    response = _rerank(client_for(charlie))
    assert response.status_code == 502, response.content
    message = response.json()["error"]["message"]
    assert message.startswith("The provider `cohere-rr` sent a response we cannot use: no score for document")
    assert "(1 missing)" in message
    assert not CachedEmbedding.objects.filter(model=MODEL).exists()
    fake.then(body={"results": [{"index": 0, "relevance_score": 0.5}] * 5})
    response = _rerank(client_for(charlie))
    assert response.status_code == 502 and "appears twice" in response.json()["error"]["message"]


def test_the_secret_never_reaches_responses_or_logs(charlie, client_for, jwt_client, fake, cohere_rr, caplog):
    """An upstream that echoes the key it got (a 401 quoting it) is answered with its mask only."""
    caplog.set_level(logging.DEBUG)
    fake.expected_key = "sk-some-other-key"
    response = _rerank(client_for(charlie))
    assert response.status_code == 502, response.content
    assert "Incorrect API key provided: sk-...WXYZ" in response.json()["error"]["message"]
    listed = jwt_client(charlie).get("/v1/providers")
    assert listed.status_code == 200 and listed.json()["data"][0]["api_key_mask"] == "sk-...WXYZ"
    for text in (response.content.decode(), listed.content.decode(), caplog.text):
        assert SECRET not in text
    assert SECRET not in str(ProviderConfig.objects.values().get(pk=cohere_rr.pk))


def test_a_private_upstream_is_refused_at_save_and_at_call_time(charlie, jwt_client, client_for, fake, provider_worker,
                                                                settings, monkeypatch):
    settings.PROVIDER_ALLOWED_HOSTS = []
    client = jwt_client(charlie)
    body = {"name": "rr", "preset": "cohere-rerank", "api_key": SECRET}
    for endpoint, reason in (("https://10.0.0.5/v2/rerank", "a private address"),
                             ("https://localhost/v2/rerank", "a loopback address"),
                             ("http://api.example.com/v2/rerank", "must use https")):
        response = client.post("/v1/providers", {**body, "endpoint": endpoint}, format="json")
        assert response.status_code == 400 and response.json()["error"]["param"] == "endpoint"
        assert reason in response.json()["error"]["message"]
    # A name public at save time that resolves to a loopback address at call time (DNS rebinding).
    answers = iter([["93.184.216.34"]])
    monkeypatch.setattr(ssrf, "_resolve", lambda host, port: next(answers, ["127.0.0.1"]))
    assert client.post("/v1/providers", {**body, "endpoint": "https://rebind.example/v2/rerank"},
                       format="json").status_code == 201
    response = _rerank(client_for(charlie), model="rr/rerank-v3.5")
    assert response.status_code == 502, response.content
    assert "resolves to 127.0.0.1: a loopback address" in response.json()["error"]["message"]
    assert fake.requests == []


def test_a_rerank_provider_is_listed_as_such_and_gives_no_embeddings(charlie, client_for, fake, cohere_rr):
    client = client_for(charlie)
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[MODEL]["kind"] == "rerank" and listed[MODEL]["compute"] == "byok"
    assert listed[MODEL]["owned_by"] == "cohere-rerank"
    assert client.get(f"/v1/models/{MODEL}").json()["kind"] == "rerank"
    response = client.post("/v1/embeddings", {"model": MODEL, "input": ["x"]}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "model_kind" and "is a reranker" in response.json()["error"]["message"]
    assert fake.requests == []


def test_an_embedding_provider_reranks_by_cosine_and_a_rerank_one_never_shares_its_cache(charlie, client_for, fake,
                                                                                          cohere_rr, provider_worker):
    """POST /v1/rerank with an embedding provider ranks by its vectors' cosine (embeddings/rerank.py);
    the two providers' cache versions differ."""
    embedder = ProviderFactory(tenant=charlie.tenant, endpoint=fake.url())
    response = _rerank(client_for(charlie), model="myopenai/text-embedding-3-small")
    assert response.status_code == 200, response.content
    assert [r.path for r in fake.requests] == ["/v1/embeddings"]
    assert provider_cache_version(embedder) != provider_cache_version(cohere_rr)


def test_the_provider_test_of_a_reranker_scores_two_documents(charlie, jwt_client, fake, cohere_rr):
    response = jwt_client(charlie).post(f"/v1/providers/{cohere_rr.pk}/test", {}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["ok"] is True and response.json()["dimensions"] is None
    assert len(fake.requests[0].body["documents"]) == 2


@pytest.mark.parametrize(
    ("changes", "param", "message"),
    [
        ({"preset": "cohere-rerank", "kind": "embed"}, "kind", "the cohere-rerank preset is of kind rerank"),
        ({"preset": "openai", "kind": "rerank"}, "kind", "the openai preset is of kind embed"),
        ({"preset": "openai", "index_path": "$.data[*].index"}, "index_path", "only a rerank provider"),
        ({"kind": "rerank", "request_template": {"query": "{{query}}"}}, "request_template",
         'must contain "{{documents}}"'),
        ({"kind": "rerank", "request_template": {"input": "{{texts}}"}}, "request_template",
         'unknown placeholder "{{texts}}"'),
        ({"kind": "rerank", "index_path": "$[*"}, "index_path", "not a valid JSONPath"),
        ({"request_template": {"q": "{{query}}", "input": "{{texts}}"}}, "request_template",
         'unknown placeholder "{{query}}"'),
    ],
)
def test_a_provider_that_cannot_work_as_its_kind_is_a_400(charlie, jwt_client, fake, changes, param, message):
    body = {"name": "rr", "preset": "custom", "endpoint": fake.url("/v2/rerank"), "api_key": SECRET,
            "request_template": {"query": "{{query}}", "documents": "{{documents}}"},
            "response_path": "$.results[*].relevance_score", **changes}
    response = jwt_client(charlie).post("/v1/providers", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    assert message in response.json()["error"]["message"]


def test_a_new_preset_brings_its_kind_on_patch(charlie, jwt_client, fake, cohere_rr):
    url = f"/v1/providers/{cohere_rr.pk}"
    response = jwt_client(charlie).patch(url, {"preset": "openai", "endpoint": fake.url(), "api_key": SECRET,
                                               "model": "text-embedding-3-small"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["kind"] == "embed" and response.json()["index_path"] == ""


# --- the pure parts ------------------------------------------------------------------------------

def test_scores_are_mapped_back_by_index_and_every_document_needs_one():
    body = {"results": [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5},
                        {"index": 1, "relevance_score": 0.1}]}
    path, index = "$.results[*].relevance_score", "$.results[*].index"
    assert scores_extract(body, path=path, index_path=index, n=3).tolist() == pytest.approx([0.5, 0.1, 0.9])
    assert scores_extract({"scores": [1, 2]}, path="$.scores", index_path="", n=2).tolist() == [1.0, 2.0]
    for bad, error in (
        ({"results": body["results"][:2]}, "no score for document 1 of 3"),
        ({"results": [*body["results"][:2], {"index": 3, "relevance_score": 0.2}]}, "not a document index"),
        ({"results": [*body["results"][:2], {"index": True, "relevance_score": 0.2}]}, "not a document index"),
        ({"results": [*body["results"][:2], {"index": 1, "relevance_score": "high"}]}, "is not a number"),
        ({"results": [*body["results"][:2], {"index": 1}]}, "3 indexes at $.results[*].index for 2 scores"),
        ({"results": [*body["results"][:2], {"index": 1, "relevance_score": float("nan")}]}, "NaN"),
    ):
        with pytest.raises(ValueError, match=re.escape(error)):
            scores_extract(bad, path=path, index_path=index, n=3)
    with pytest.raises(ValueError, match="1 scores at"):
        scores_extract({"scores": [1]}, path="$.scores", index_path="", n=2)


def test_rerank_templates_take_the_query_and_the_documents_once_each():
    template_validate({"model": "{{model}}", "query": "{{query}}", "documents": "{{documents}}"}, "rerank")
    for template, error in (
        ({"query": "{{query}}", "docs": "{{documents}}", "more": "{{documents}}"}, "found it at $.docs, $.more"),
        ({"query": "q: {{query}}", "documents": "{{documents}}"}, "must be a whole JSON value"),
        ({"documents": "{{documents}}"}, 'must contain "{{query}}"'),
    ):
        with pytest.raises(TemplateError, match=re.escape(error)):
            template_validate(template, "rerank")


def test_the_admin_takes_a_rerank_preset_and_its_test_action_scores(charlie, fake):
    from django.test import Client
    from django.urls import reverse

    from tests.factories import UserFactory

    staff = Client()
    staff.force_login(UserFactory(staff=True, email="ops@example.com", password="x" * 12))
    form = {"tenant": charlie.tenant.pk, "name": "rr", "preset": "voyage-rerank", "endpoint": fake.url("/voyage/rerank"),
            "request_template": "null", "response_path": "", "index_path": "", "headers": "null", "model": "rerank-2.5",
            "max_inputs": "", "api_key": SECRET}  # no kind: the preset's
    response = staff.post(reverse("admin:providers_providerconfig_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = ProviderConfig.objects.get(name="rr")
    assert provider.kind == "rerank" and provider.effective_index_path == "$.data[*].index"
    response = staff.post(reverse("admin:providers_providerconfig_changelist"),
                          {"action": "test_providers", "_selected_action": [provider.pk]}, follow=True)
    assert any(str(m).startswith("rr: ok, scores in") for m in response.context["messages"])
    assert fake.requests[-1].body["query"] and len(fake.requests[-1].body["documents"]) == 2
