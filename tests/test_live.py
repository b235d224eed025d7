"""End to end through real servers: granian, a Celery worker subprocess, Redis, Postgres,
and the official OpenAI SDK as the client."""

import base64
import os
import threading
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import poll_until, tier_limit

MODEL = "all-MiniLM-L6-v2"
pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sdk(live_stack, alice):
    return openai.OpenAI(api_key=alice.key, base_url=f"{live_stack.url}/v1", max_retries=0)


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_openai_sdk_works_unchanged(sdk, minilm):
    texts = [f"the sdk asks for base64 by default {uuid.uuid4().hex[:6]}", "hello world"]
    r = sdk.embeddings.create(model=MODEL, input=texts)  # the SDK sends encoding_format=base64
    assert r.model == MODEL and len(r.data) == 2 and r.usage.total_tokens > 0
    ref = minilm.model.encode(texts)
    for d, want in zip(r.data, ref, strict=True):
        assert len(d.embedding) == 384
        assert _cos(d.embedding, want) > 0.999
    r = sdk.embeddings.create(model=MODEL, input=texts[1], encoding_format="float", dimensions=128)
    assert len(r.data[0].embedding) == 128


def test_sdk_errors_map_to_sdk_exceptions(sdk, live_stack):
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model=MODEL, input="")
    bad = openai.OpenAI(api_key="ep_aaaaaaaaaaaa_nope", base_url=f"{live_stack.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=MODEL, input="x")


def test_curl_style_request(live_stack, alice):
    r = httpx.post(
        f"{live_stack.url}/v1/embeddings",
        content=b'{"model":"all-MiniLM-L6-v2","input":["a","b"]}',
        headers={"Authorization": f"Bearer {alice.key}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1]


def test_concurrent_single_text_requests_share_forward_passes(live_stack, alice):
    def stats() -> dict[str, int]:  # summed over the worker's drain loops (one or two: DECISIONS #22)
        total: dict[str, int] = {}
        for key in live_stack.redis.keys(f"embed:stats:{live_stack.worker_name}*"):
            for field, value in live_stack.redis.hgetall(key).items():
                total[field.decode()] = total.get(field.decode(), 0) + int(value)
        return total

    tier_limit(alice, max_sync_in_flight=64)  # 32 of alice's requests wait at once: lift her tier's bound (paid: 16)
    before = stats()
    failures = []

    def client(n):
        with httpx.Client(base_url=live_stack.url, headers={"Authorization": f"Bearer {alice.key}"}) as c:
            for j in range(5):
                r = c.post("/v1/embeddings", json={"model": MODEL, "input": f"c{n} t{j} {uuid.uuid4().hex}"})
                if r.status_code != 200:
                    failures.append(r.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:3]
    # A loop counts a pass in its stats after it has sent the pass's replies (bookkeeping is
    # nobody's latency): the last pass's counts may land just after its clients have their answers.
    def all_counted() -> dict[str, int] | None:
        after = stats()
        return after if after.get("items", 0) - before.get("items", 0) >= 160 else None

    after = poll_until(all_counted, timeout=5, message=lambda: f"the stats to count 160 items: {before} -> {stats()}")
    items = after["items"] - before.get("items", 0)
    batches = after["batches"] - before.get("batches", 0)
    assert items == 160
    assert items / batches >= 3, (items, batches)


def test_ready_names_the_worker_and_base64_round_trips(live_stack, alice):
    from workers.runtime import cpu_bf16

    ready = httpx.get(f"{live_stack.url}/health/ready").json()
    assert ready["status"] == "ok" and ready["workers"][MODEL]
    # One drain loop per pass the CPU runs well side by side: two, except with bfloat16 on AMX (DECISIONS #22, #23).
    loops = 1 if cpu_bf16() == "amx" or len(os.sched_getaffinity(0)) < 2 else 2
    assert ready["workers"][MODEL] == [live_stack.worker_name] + [f"{live_stack.worker_name}-2"] * (loops - 1)
    r = httpx.post(f"{live_stack.url}/v1/embed", json={"text": "round trip", "encoding_format": "base64"},
                   headers={"Authorization": f"Bearer {alice.key}"}).json()
    assert np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4").shape == (384,)
