"""The Batch API through the official OpenAI SDK (client.files, client.batches), in process: the
SDK's own HTTP client on the WSGI app (httpx's WSGI transport), a real drain loop on the real model
claiming the batch's jobs, real PostgreSQL and Redis. tests/test_batches_live.py runs the
same flow against the live server and a Celery worker subprocess."""

from __future__ import annotations

import base64
import io
import json
import threading
import uuid

import httpx
import numpy as np
import openai
import pytest
from django.db import connections
from django.utils import timezone

from accounts.quotas import quota_state
from batches import services
from batches.models import Batch, BatchFile
from batches.services import batch_sync
from embeddings.models import Job
from embeddings.registry import DEFAULT_MODEL
from tests.helpers import poll_until, tier_limit
from tests.test_openapi import live_app  # noqa: F401 (a fixture: the WSGI app on the test's database)

pytestmark = pytest.mark.django_db(transaction=True)


def u(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def line(custom_id: str, body: dict, **extra) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body, **extra}


def jsonl(lines: list) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


@pytest.fixture
def sdk(live_app):  # noqa: F811
    """sdk(world) -> an openai.OpenAI client of that tenant, on the in-process WSGI app."""
    clients = []

    def make(world, **kwargs) -> openai.OpenAI:
        http = httpx.Client(transport=httpx.WSGITransport(app=live_app), base_url="http://testserver")
        client = openai.OpenAI(api_key=world.key, base_url="http://testserver/v1", http_client=http, max_retries=0,
                               **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def upload(client: openai.OpenAI, lines: list, name: str = "requests.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    def ended():
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled", "expired") else None

    return poll_until(ended, timeout=timeout, interval=0.1, message=f"batch {batch_id} to end")


def lines_of(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).content.splitlines()]


def embeddings_of(client: openai.OpenAI, **body) -> np.ndarray:
    r = client.embeddings.create(**body)
    return np.array([d.embedding for d in r.data], dtype=np.float32)


def test_a_batch_through_the_sdk_equals_v1_embeddings(sdk, alice, drainer):
    client = sdk(alice)
    texts = [u("first"), u("second"), u("third"), u("fourth")]
    requests = [
        line("one", {"model": DEFAULT_MODEL, "input": texts[0]}),
        line("many", {"model": DEFAULT_MODEL, "input": texts[1:3]}),
        line("alias-base64", {"model": "text-embedding-3-small", "input": [texts[3]], "encoding_format": "base64"}),
        line("cut", {"model": DEFAULT_MODEL, "input": texts[0], "dimensions": 64}),
        line("bad-dims", {"model": DEFAULT_MODEL, "input": "x", "dimensions": 100000}),
        line("bad-model", {"model": "no-such-model", "input": "x"}),
        b"{not json",
        line("one", {"model": DEFAULT_MODEL, "input": "a duplicate custom_id"}),
        line("chat", {"model": DEFAULT_MODEL, "messages": []}, url="/v1/chat/completions"),
    ]
    file = upload(client, requests)
    assert (file.object, file.purpose, file.status, file.filename) == ("file", "batch", "processed", "requests.jsonl")
    assert file.bytes == len(jsonl(requests)) and file.id.startswith("file-")
    assert client.files.retrieve(file.id).bytes == file.bytes
    assert client.files.content(file.id).content == jsonl(requests)

    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"project": "tests"})
    assert batch.status == "in_progress" and batch.id.startswith("batch_")
    assert (batch.endpoint, batch.input_file_id, batch.completion_window, batch.metadata) == (
        "/v1/embeddings", file.id, "24h", {"project": "tests"})
    assert batch.request_counts.total == 9 and batch.request_counts.failed == 5
    assert batch.expires_at - batch.created_at == 24 * 3600
    # the lines' (model, options) groups: plain, dimensions=64 -> two jobs
    assert Batch.objects.get(pk=batch.id).jobs.count() == 2

    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed, done.request_counts.total) == (4, 5, 9)
    assert done.completed_at and done.finalizing_at and done.in_progress_at
    assert done.usage.input_tokens > 0 and done.usage.total_tokens == done.usage.input_tokens

    out = lines_of(client, done.output_file_id)
    assert [x["custom_id"] for x in out] == ["one", "many", "alias-base64", "cut"]  # input order
    for x in out:
        assert x["error"] is None and x["response"]["status_code"] == 200
        assert x["id"].startswith("batch_req_") and x["response"]["request_id"].startswith("req_")
    raw = {x["custom_id"]: x["response"]["body"] for x in out}
    bodies = {c: openai.types.CreateEmbeddingResponse.model_validate(b) for c, b in raw.items() if c != "alias-base64"}
    want = embeddings_of(client, model=DEFAULT_MODEL, input=texts)
    # the same float32 numbers (written at their shortest round-trip form, /v1/embeddings' as float64)
    np.testing.assert_array_equal(np.array([bodies["one"].data[0].embedding], dtype=np.float32), want[:1])
    np.testing.assert_allclose([d.embedding for d in bodies["many"].data], want[1:3], atol=1e-6)
    assert [d.index for d in bodies["many"].data] == [0, 1]
    b64 = np.frombuffer(base64.b64decode(raw["alias-base64"]["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(b64, want[3], atol=1e-6)
    assert raw["alias-base64"]["model"] == DEFAULT_MODEL  # the alias's model
    cut = embeddings_of(client, model=DEFAULT_MODEL, input=texts[0], dimensions=64)
    np.testing.assert_allclose([bodies["cut"].data[0].embedding], cut, atol=1e-6)
    assert bodies["one"].usage.prompt_tokens > 0

    errors = lines_of(client, done.error_file_id)
    by_line = [(x["custom_id"], x["response"]["status_code"], x["response"]["body"]["error"]["code"],
                x["response"]["body"]["error"]["param"]) for x in errors]
    assert by_line == [("bad-dims", 400, None, "dimensions"),  # as POST /v1/embeddings answers them
                       ("bad-model", 404, "model_not_found", "model"),
                       (None, 400, "invalid_json_line", None),
                       ("one", 400, "duplicate_custom_id", "custom_id"),
                       ("chat", 400, "mismatched_endpoint", "url")]
    assert all(x["error"] is None for x in errors)
    assert "/v1/embeddings" in errors[-1]["response"]["body"]["error"]["message"]

    files = {f.id: f for f in client.files.list()}
    assert {file.id, done.output_file_id, done.error_file_id} <= set(files)
    assert files[done.output_file_id].purpose == "batch_output"
    assert files[done.output_file_id].bytes == len(client.files.content(done.output_file_id).content)
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_a_file_of_no_valid_line_makes_a_failed_batch(sdk, alice, redis_db):
    client = sdk(alice)
    file = upload(client, [line("a", {"model": DEFAULT_MODEL}), b"[1, 2]", line("", {"input": "x"})])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (1, "invalid_value", "input"), (2, "invalid_json_line", None), (3, "missing_required_parameter", "custom_id")]
    assert (batch.request_counts.total, batch.request_counts.failed, batch.output_file_id) == (3, 3, None)
    assert not Job.objects.exists()
    assert quota_state(tenant=alice.tenant).used_today == 0


def test_what_a_batch_refuses_before_it_starts(sdk, alice, redis_db, settings):
    client = sdk(alice)
    file = upload(client, [line("a", {"model": DEFAULT_MODEL, "input": ["x", "y", "z"]})])
    with pytest.raises(openai.BadRequestError) as chat:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert chat.value.code == "unsupported_endpoint" and "/v1/embeddings" in chat.value.message
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="1h")
    assert window.value.param == "completion_window"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert "purpose" in purpose.value.message
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b""), purpose="batch")

    # the tier's max_job_texts bounds the inputs of all lines together; the server bounds lines and bytes
    tier_limit(alice, max_job_texts=2)
    with pytest.raises(openai.APIStatusError) as too_many:
        client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    assert too_many.value.status_code == 413 and too_many.value.code == "batch_too_large"
    assert "max_job_texts" in too_many.value.message
    tier_limit(alice, max_job_texts=100, daily_limit=2)
    with pytest.raises(openai.RateLimitError) as quota:
        client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    assert quota.value.code == "quota_exceeded"
    assert quota_state(tenant=alice.tenant).used_today == 0 and not Batch.objects.exists() and not Job.objects.exists()

    settings.BATCH_MAX_REQUESTS = 1
    two = upload(client, [line("a", {"model": DEFAULT_MODEL, "input": "x"}), line("b", {"model": DEFAULT_MODEL,
                                                                                       "input": "y"})])
    with pytest.raises(openai.APIStatusError) as lines:
        client.batches.create(input_file_id=two.id, endpoint="/v1/embeddings", completion_window="24h")
    assert lines.value.status_code == 413
    settings.BATCH_MAX_FILE_BYTES = 100
    with pytest.raises(openai.APIStatusError) as big:
        client.files.create(file=("big.jsonl", b"x" * 101), purpose="batch")
    assert big.value.status_code == 413
    assert BatchFile.objects.count() == 2


def test_another_tenants_files_and_batches_are_404(sdk, alice, bob, redis_db):
    mine, theirs = sdk(alice), sdk(bob)
    file = upload(mine, [line("a", {"model": DEFAULT_MODEL, "input": u("isolated")})])
    batch = mine.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    for call in (lambda: theirs.files.retrieve(file.id), lambda: theirs.files.content(file.id),
                 lambda: theirs.files.delete(file.id), lambda: theirs.batches.retrieve(batch.id),
                 lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.batches.create(input_file_id=file.id, endpoint="/v1/embeddings",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(theirs.files.list()) == [] and list(theirs.batches.list()) == []
    assert mine.batches.retrieve(batch.id).status == "in_progress"


def test_cancel_drops_the_queued_work_and_lists_it_in_the_error_file(sdk, alice, redis_db):
    client = sdk(alice)  # no worker: the jobs stay queued
    file = upload(client, [line(f"r{i}", {"model": DEFAULT_MODEL, "input": u("never run")}) for i in range(3)])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelling_at and cancelled.cancelled_at
    assert cancelled.output_file_id is None
    assert {j.status for j in Batch.objects.get(pk=batch.id).jobs.all()} == {"cancelled"}
    errors = lines_of(client, cancelled.error_file_id)
    assert [(x["custom_id"], x["response"], x["error"]["code"]) for x in errors] == [
        (f"r{i}", None, "batch_cancelled") for i in range(3)]
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: as it is


def test_a_batch_past_its_window_expires(sdk, alice, redis_db):
    client = sdk(alice)
    file = upload(client, [line("late", {"model": DEFAULT_MODEL, "input": u("too late")})])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    Batch.objects.filter(pk=batch.id).update(expires_at=timezone.now())
    expired = client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at
    [x] = lines_of(client, expired.error_file_id)
    assert (x["custom_id"], x["error"]["code"]) == ("late", "batch_expired")


def test_pages_follow_openais_after_cursor(sdk, alice, redis_db):
    client = sdk(alice)
    file = upload(client, [line("a", {"model": DEFAULT_MODEL, "input": u("paged")})])
    ids = [client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h").id
           for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in page.iter_pages().__next__().data] == ids[::-1][:2]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows `after` to the end
    assert [f.id for f in client.files.list(limit=1, purpose="batch")] == [file.id]
    deleted = client.files.delete(file.id)
    assert (deleted.id, deleted.deleted) == (file.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)
    assert client.batches.retrieve(ids[0]).input_file_id == file.id  # the batch keeps its input's id


def test_one_reader_finalizes_a_batch_however_many_read_at_once(sdk, alice, drainer):
    client = sdk(alice)
    file = upload(client, [line(f"r{i}", {"model": DEFAULT_MODEL, "input": u("raced")}) for i in range(20)])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    row = Batch.objects.get(pk=batch.id)
    poll_until(lambda: not row.jobs.exclude(status="succeeded").exists(), timeout=60, message="the jobs to end")
    barrier = threading.Barrier(6)
    seen: list[str] = []

    def read() -> None:
        try:
            barrier.wait()
            seen.append(batch_sync(Batch.objects.get(pk=batch.id)).status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) <= {"finalizing", "completed"} and "completed" in seen
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20
    assert BatchFile.objects.filter(purpose="batch_output").count() == 1  # one output file, no error file
    assert len(lines_of(client, done.output_file_id)) == 20


def test_a_finalizer_whose_lease_was_taken_over_writes_nothing(sdk, alice, drainer, monkeypatch):
    client = sdk(alice)
    file = upload(client, [line("a", {"model": DEFAULT_MODEL, "input": u("lease")})])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    row = Batch.objects.get(pk=batch.id)
    poll_until(lambda: not row.jobs.exclude(status="succeeded").exists(), timeout=60, message="the job to end")
    finalize = services._finalize

    def slow(batch_id: str, token: str) -> None:  # another reader takes over before this one commits
        Batch.objects.filter(pk=batch_id).update(finalizer="someone-else")
        finalize(batch_id, token)

    monkeypatch.setattr(services, "_finalize", slow)
    assert batch_sync(row).status == "finalizing"
    assert not BatchFile.objects.filter(purpose="batch_output").exists()
    monkeypatch.setattr(services, "_finalize", finalize)
    Batch.objects.filter(pk=batch.id).update(finalize_until=timezone.now())  # its lease ran out
    assert client.batches.retrieve(batch.id).status == "completed"
    assert BatchFile.objects.filter(purpose="batch_output").count() == 1


def test_the_admin_shows_files_and_batches_read_only(sdk, alice, redis_db):
    from django.test import Client
    from django.urls import reverse

    from tests.factories import UserFactory

    client = sdk(alice)
    file = upload(client, [line("a", {"model": DEFAULT_MODEL, "input": u("admin")})])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    staff = Client()
    staff.force_login(UserFactory(staff=True, email="ops@example.com", password="x" * 12))
    for name, pk in (("batchfile", file.id), ("batch", batch.id)):
        for url in (reverse(f"admin:batches_{name}_changelist"), reverse(f"admin:batches_{name}_change", args=[pk])):
            page = staff.get(url)
            assert page.status_code == 200, url
            assert pk in page.content.decode() and b'name="_save"' not in page.content
