"""The clients people point at an OpenAI-compatible server, with their defaults, against the live
server (granian + a Celery worker subprocess on the real model): LangChain's OpenAIEmbeddings (model
text-embedding-ada-002, an alias here; it sends cl100k_base token-id arrays), LlamaIndex's
OpenAIEmbedding, and the OpenAI SDK, sync and async. Each is configured the way its docs say, by
OPENAI_API_KEY and OPENAI_BASE_URL / OPENAI_API_BASE alone, and each one's vectors must equal the
server's own for the same texts (POST /v1/embeddings with the model's name and the plain strings).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import httpx
import numpy as np
import openai
import pytest

from embeddings import tokenids
from embeddings.registry import DEFAULT_MODEL
from tests.helpers import tier_limit

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# Where tiktoken's cl100k_base() fetches its file from (tiktoken_ext/openai_public.py); the key of
# its cache entry is the URL's sha1.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def u(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture
def openai_env(live_stack, alice, monkeypatch, tmp_path):
    """The environment a user of these clients sets: the key and the base URL. LangChain's own
    tiktoken (client side) gets cl100k_base from its cache, filled with the file the platform ships:
    this machine has no internet, and a user's tiktoken downloads it once."""
    base = f"{live_stack.url}/v1"
    for name, value in (("OPENAI_API_KEY", alice.key), ("OPENAI_BASE_URL", base), ("OPENAI_API_BASE", base)):
        monkeypatch.setenv(name, value)
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(tokenids._bpe_file())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return base


class Recorder:
    """An httpx event hook keeping the JSON bodies a client sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.content) if request.content else {})

    async def hook(self, request: httpx.Request) -> None:
        self(request)


def server_vectors(live_stack, key: str, texts: list[str]) -> np.ndarray:
    """The server's own vectors for `texts`, asked by the model's own name as plain strings."""
    r = httpx.post(f"{live_stack.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": texts},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def test_langchain_openai_embeddings_with_its_defaults(openai_env, live_stack, alice):
    from langchain_openai import OpenAIEmbeddings

    sent = Recorder()
    embeddings = OpenAIEmbeddings(http_client=httpx.Client(event_hooks={"request": [sent]}),
                                  http_async_client=httpx.AsyncClient(event_hooks={"request": [sent.hook]}))
    assert (embeddings.model, embeddings.check_embedding_ctx_length) == ("text-embedding-ada-002", True)
    texts = [u("LangChain splits documents"), u("and sends ünïcödé 😀 as token ids"), u("a third")]
    docs = np.array(embeddings.embed_documents(texts), dtype=np.float32)
    np.testing.assert_allclose(docs, server_vectors(live_stack, alice.key, texts), atol=1e-6)
    [body] = sent.bodies
    assert body["model"] == "text-embedding-ada-002"
    assert body["input"] == [tokenids.cl100k_base().encode(t) for t in texts]  # token arrays, as promised

    query = u("what does LangChain send?")
    np.testing.assert_allclose(embeddings.embed_query(query), server_vectors(live_stack, alice.key, [query])[0],
                               atol=1e-6)
    adocs = asyncio.run(embeddings.aembed_documents(texts))
    np.testing.assert_allclose(np.array(adocs, dtype=np.float32), docs, atol=1e-6)


def test_langchain_averages_the_chunks_of_a_long_text_as_the_server_embeds_them(openai_env, live_stack, alice):
    """A text over LangChain's 8191-token context is sent as two token arrays, the cut anywhere (here
    inside an emoji); the server embeds each chunk as the text it decodes to, and LangChain averages."""
    from langchain_openai import OpenAIEmbeddings

    enc = tokenids.cl100k_base()
    start = u("start")
    long_text = start + " word" * (8190 - len(enc.encode_ordinary(start))) + "😀😀 " + u("end")  # " word": 1 token
    tokens = enc.encode_ordinary(long_text)
    chunks = [tokens[:8191], tokens[8191:]]
    assert tokens[8190:8192] == enc.encode("😀")  # the cut falls inside the emoji's two tokens
    [got] = OpenAIEmbeddings().embed_documents([long_text])
    parts = server_vectors(live_stack, alice.key, [enc.decode(c, errors="replace") for c in chunks])
    average = np.average(parts, axis=0, weights=[len(c) for c in chunks])
    np.testing.assert_allclose(got, average / np.linalg.norm(average), atol=1e-5)


def test_llamaindex_openai_embedding_with_its_defaults(openai_env, live_stack, alice):
    from llama_index.embeddings.openai import OpenAIEmbedding

    embedding = OpenAIEmbedding()
    assert embedding.model_name == "text-embedding-ada-002"
    texts = [u("LlamaIndex embeds nodes"), u("in batches"), u("of strings")]
    want = server_vectors(live_stack, alice.key, texts)
    np.testing.assert_allclose(np.array(embedding.get_text_embedding_batch(texts), dtype=np.float32), want,
                               atol=1e-6)
    np.testing.assert_allclose(embedding.get_query_embedding(texts[0]), want[0], atol=1e-6)
    got = asyncio.run(embedding.aget_text_embedding_batch(texts))
    np.testing.assert_allclose(np.array(got, dtype=np.float32), want, atol=1e-6)


def test_the_openai_sdk_sync_and_async_by_alias_and_token_ids(openai_env, live_stack, alice):
    texts = [u("the OpenAI SDK"), u("sync and async")]
    want = server_vectors(live_stack, alice.key, texts)
    client = openai.OpenAI(max_retries=0)
    r = client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert r.model == DEFAULT_MODEL  # the model that computed them
    np.testing.assert_allclose(np.array([d.embedding for d in r.data], dtype=np.float32), want, atol=1e-6)
    ids = [tokenids.cl100k_base().encode(t) for t in texts]
    r = client.embeddings.create(model="text-embedding-ada-002", input=ids, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in r.data], dtype=np.float32), want, atol=1e-6)

    models = {m.id: m for m in client.models.list()}
    assert {DEFAULT_MODEL, "text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large"} <= set(models)
    assert models["text-embedding-3-small"].model_extra["alias_of"] == DEFAULT_MODEL
    assert client.models.retrieve("text-embedding-3-large").model_extra["alias_of"] == DEFAULT_MODEL

    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with openai.AsyncOpenAI(max_retries=0) as aclient:
            by_text, by_ids = await asyncio.gather(
                aclient.embeddings.create(model="text-embedding-3-large", input=texts),
                aclient.embeddings.create(model="text-embedding-3-large", input=ids[0]),
            )
        return (np.array([d.embedding for d in by_text.data], dtype=np.float32),
                np.array([d.embedding for d in by_ids.data], dtype=np.float32))

    by_text, by_ids = asyncio.run(run())
    np.testing.assert_allclose(by_text, want, atol=1e-6)
    np.testing.assert_allclose(by_ids, want[:1], atol=1e-6)


def test_the_sdk_does_not_retry_a_spent_quota(openai_env, live_stack, alice):
    tier_limit(alice, daily_limit=1)
    sent = Recorder()
    client = openai.OpenAI(max_retries=3, http_client=httpx.Client(event_hooks={"request": [sent]}))
    client.embeddings.create(model=DEFAULT_MODEL, input=u("the one text of the day"))
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model=DEFAULT_MODEL, input=u("one too many"))
    assert refused.value.code == "quota_exceeded"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(sent.bodies) == 2  # asked once: no retries of a refusal that lasts until midnight


def test_a_base_url_without_v1_gets_a_404_that_says_where_the_api_lives(openai_env, live_stack, alice):
    client = openai.OpenAI(base_url=live_stack.url, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model=DEFAULT_MODEL, input="x")
    assert "the API lives under /v1/ (POST /v1/embeddings)" in missing.value.message


def test_a_json_body_without_content_type_reaches_the_api(live_stack, alice):
    text = u("curl --data-binary with no -H")
    r = httpx.post(f"{live_stack.url}/v1/embeddings", content=json.dumps({"model": DEFAULT_MODEL, "input": text}),
                   headers={"Authorization": f"Bearer {alice.key}"}, timeout=60)
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], server_vectors(live_stack, alice.key, [text])[0],
                               atol=1e-6)
