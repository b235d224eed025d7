"""The Batch API with the official OpenAI SDK, configured as its docs say (OPENAI_API_KEY and
OPENAI_BASE_URL), against the live server (granian) and a Celery worker subprocess on the real
model: upload, create, poll, download; the output's vectors equal /v1/embeddings' for the same
inputs; a bad line lands in the error file; a cancel; another tenant sees nothing.

The session's live worker claims any job in the test database once started: live tests run after
all others (tests/conftest.py orders them), and this one sits with the other live tests."""

from __future__ import annotations

import io
import json
import time
import uuid

import httpx
import numpy as np
import openai
import pytest

from embeddings.registry import DEFAULT_MODEL
from tests.helpers import poll_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def u(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(live_stack, alice, monkeypatch) -> openai.OpenAI:
    monkeypatch.setenv("OPENAI_API_KEY", alice.key)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{live_stack.url}/v1")
    return openai.OpenAI(max_retries=0)


def test_the_sdk_runs_an_embeddings_batch_end_to_end(client, live_stack, alice, bob, tmp_path):
    texts = [u(f"batch text {i}") for i in range(30)]
    requests = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": "text-embedding-3-small", "input": texts[i * 3:(i + 1) * 3]}} for i in range(10)]
    requests.insert(4, {"custom_id": "broken", "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": DEFAULT_MODEL, "input": []}})
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))

    with path.open("rb") as fh:
        file = client.files.create(file=fh, purpose="batch")
    assert (file.filename, file.bytes, file.purpose) == ("requests.jsonl", path.stat().st_size, "batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    assert batch.status == "in_progress" and batch.request_counts.total == 11

    started = time.monotonic()
    done = poll_until(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b,
                      timeout=120, interval=0.2, message="the batch to complete")
    elapsed = time.monotonic() - started
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (10, 1)
    assert elapsed < 120

    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(10)]
    got = np.array([d["embedding"] for x in out for d in x["response"]["body"]["data"]], dtype=np.float32)
    r = httpx.post(f"{live_stack.url}/v1/embeddings", json={"model": DEFAULT_MODEL, "input": texts},
                   headers={"Authorization": f"Bearer {alice.key}"}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(got, np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32),
                               atol=1e-6)
    assert all(d["cached"] for d in r.json()["data"])  # the batch's jobs filled the cache

    [err] = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert err["custom_id"] == "broken" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "input"

    # another tenant: nothing of alice's exists for it
    other = openai.OpenAI(api_key=bob.key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(done.output_file_id)

    # a batch cancelled while its job waits behind a long one ends cancelled, its lines in the error file
    big = client.files.create(file=("big.jsonl", io.BytesIO("".join(
        json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": DEFAULT_MODEL, "input": [u(f"long {i} {j}") for j in range(50)]}}) + "\n"
        for i in range(40)).encode())), purpose="batch")
    running = client.batches.create(input_file_id=big.id, endpoint="/v1/embeddings", completion_window="24h")
    cancelled = client.batches.cancel(running.id)
    assert cancelled.status in ("cancelling", "cancelled")
    cancelled = poll_until(lambda: (b := client.batches.retrieve(running.id)).status == "cancelled" and b,
                           timeout=60, message="the batch to be cancelled")
    counts = cancelled.request_counts
    assert counts.total == 40 and counts.completed + counts.failed == 40 and counts.failed > 0
    not_run = [json.loads(x) for x in client.files.content(cancelled.error_file_id).text.splitlines()]
    assert {x["error"]["code"] for x in not_run} == {"batch_cancelled"}
