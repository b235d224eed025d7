"""Jobs on real Postgres and Redis, run by the real drain loop on the real model (in-process).

Durability with killed worker processes and a flushed broker is in tests/test_jobs_live.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from django.db.models.functions import Now

from dispatch import local
from dispatch.keys import job_signal_key
from embeddings import jobs
from embeddings.cache import cache_upsert, text_key
from embeddings.jobs import job_chunk_complete, job_sweep
from embeddings.models import CachedEmbedding, Job, JobChunk
from tests.factories import JobFactory
from tests.handoff import job_chunk_claim, work_submit
from tests.helpers import poll_until
from workers.drain import Drainer
from workers.jobfeed import JobFeed

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def job_loop(transactional_db):
    """Makes drain loops with jobs, driven step by step; closes them (their writer thread) at the end."""
    loops = []

    def make(**kwargs) -> Drainer:
        loop = Drainer(**kwargs)
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


def _wait_job(client, job_id, timeout=60.0) -> dict:
    """The job's final state, with `_progress`: its `done` count at each poll."""
    seen = []

    def final() -> dict | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(body["done"])
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    body = poll_until(final, timeout=timeout, message=lambda: f"job {job_id} to finish (done so far: {seen[-1]})")
    body["_progress"] = seen
    return body


def test_a_job_runs_with_progress_and_its_results_page_and_stream(alice, client_for, drainer, minilm, settings):
    settings.JOB_CHUNK_TEXTS = 16
    texts = [f"job text {i} {uuid.uuid4().hex[:6]}" for i in range(70)] + ["job text 3 dup"] * 3
    client = client_for(alice)
    assert client.post("/v1/embeddings", {"model": MODEL, "input": texts[:5]}, format="json").status_code == 200
    created = client.post("/v1/jobs", {"model": MODEL, "texts": texts}, format="json")
    assert created.status_code == 202, created.content
    job = created.json()
    assert job["status"] in ("queued", "running") and job["total"] == 73
    assert created["Location"] == job["status_url"] == f"/v1/jobs/{job['id']}"

    final = _wait_job(client, job["id"])
    assert final["status"] == "succeeded" and final["done"] == 73, final
    assert final["cached"] >= 5 and final["started_at"] and final["finished_at"]
    assert len(set(final["_progress"])) >= 2 or final["_progress"] == [73]  # done moves while it runs

    page = client.get(f"/v1/jobs/{job['id']}/results?offset=10&limit=20").json()
    assert [r["index"] for r in page["data"]] == list(range(10, 30)) and page["has_more"] is True
    ref = minilm.model.encode(texts[10:30])
    for row, want in zip(page["data"], ref, strict=True):
        assert float(np.dot(row["embedding"], want)) > 0.999
    first = client.get(f"/v1/jobs/{job['id']}/results?limit=5").json()["data"]
    assert all(r["cached"] for r in first)  # embedded by the sync request before the job

    stream = client.get(f"/v1/jobs/{job['id']}/results?format=jsonl")
    assert stream.status_code == 200 and stream["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(stream.streaming_content).splitlines()]
    assert [r["index"] for r in lines] == list(range(73))
    assert lines[70]["embedding"] == lines[72]["embedding"]
    # the quota counted every text once
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 78


def test_results_are_409_until_the_job_succeeded(alice, client_for, redis_db):
    client = client_for(alice)
    job = client.post("/v1/jobs", {"texts": ["a", "b"]}, format="json").json()
    response = client.get(f"/v1/jobs/{job['id']}/results")
    assert response.status_code == 409 and response.json()["error"]["code"] == "job_not_ready"
    assert client.get(f"/v1/jobs/{job['id']}/results?format=jsonl").status_code == 409


def test_bob_cannot_see_or_touch_alices_job(alice, bob, client_for, redis_db):
    job = client_for(alice).post("/v1/jobs", {"texts": ["secret"]}, format="json").json()
    bob_client = client_for(bob)
    for response in (bob_client.get(f"/v1/jobs/{job['id']}"), bob_client.get(f"/v1/jobs/{job['id']}/results"),
                     bob_client.post(f"/v1/jobs/{job['id']}/cancel")):
        assert response.status_code == 404
    assert bob_client.get("/v1/jobs").json()["data"] == []
    assert bob_client.get("/v1/jobs/not-a-uuid").status_code == 404
    assert Job.objects.get(pk=job["id"]).status == "queued"


def test_cancel_drops_queued_work(alice, client_for, redis_db):
    client = client_for(alice)
    job = client.post("/v1/jobs", {"texts": [f"c{i}" for i in range(200)]}, format="json").json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not JobChunk.objects.filter(job_id=job["id"], status="queued").exists()
    assert job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=10) is None
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_list_pages_newest_first_with_a_cursor_and_status_filter(alice, client_for, redis_db):
    client = client_for(alice)
    ids = [client.post("/v1/jobs", {"texts": [f"l{i}"]}, format="json").json()["id"] for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    page = client.get("/v1/jobs?limit=2").json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(f"/v1/jobs?limit=10&cursor={page['next_cursor']}").json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:] and rest["next_cursor"] is None
    assert [j["id"] for j in client.get("/v1/jobs?status=cancelled").json()["data"]] == [ids[0]]
    for query in ("status=done", "limit=0", "cursor=@@@"):
        assert client.get(f"/v1/jobs?{query}").status_code == 400


def test_job_admission_errors(alice, charlie, client_for, redis_db, settings):
    client = client_for(alice)
    tier = alice.tenant.tier
    tier.max_job_texts = 3
    tier.save()
    too_many = client.post("/v1/jobs", {"texts": ["a", "b", "c", "d"]}, format="json")
    assert too_many.status_code == 413 and "at most 3 per job" in too_many.json()["error"]["message"]
    for body, param in (({"texts": []}, "texts"), ({"texts": ["a"], "dimensions": 999}, "dimensions"),
                        ({"texts": ["a"], "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
                        ({"texts": ["a"], "webhook_url": "https://169.254.169.254/x"}, "webhook_url"),
                        ({"texts": ["a"], "model": "nope"}, "model")):
        response = client.post("/v1/jobs", body, format="json")
        assert response.status_code in (400, 404), body
        assert response.json()["error"]["param"] == param
    assert client_for(charlie).post("/v1/jobs", {"texts": ["a"]}, format="json").status_code == 403
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 0  # refusals count nothing


def test_embed_batch_falls_back_to_a_job_when_wait_runs_out(job_loop, alice, client_for, redis_db, minilm, transactional_db):
    redis_db.set(f"embed:alive:{MODEL}", "slow-worker", ex=30)  # a worker is alive, but busy
    client = client_for(alice)
    texts = [f"fallback {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
    response = client.post("/v1/embed/batch", {"texts": texts, "wait": 0.2}, format="json")
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["object"] == "job" and job["total"] == 3
    single = client.post("/v1/embed", {"text": "one more", "wait": 0.2}, format="json")
    assert single.status_code == 202
    timeout = client.post("/v1/embeddings", {"model": MODEL, "input": "x", "wait": 0.2}, format="json")
    assert timeout.status_code == 504  # the OpenAI shape has no 202
    assert timeout["Retry-After"] == "1"  # the work goes on: a retry soon may find it cached
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 4  # jobs keep the count, 504 is refunded

    loop = job_loop(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                   name="late", jobs=JobFeed(lease_seconds=30, poll_seconds=0))
    for _ in range(5):  # the expired sync items are dropped, then both jobs run
        loop.run_once(block=0.1)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded"
    rows = client.get(f"/v1/jobs/{job['id']}/results").json()["data"]
    assert [r["index"] for r in rows] == [0, 1, 2]


def test_interactive_requests_go_ahead_of_job_chunks(job_loop, alice, redis_db, minilm, transactional_db, settings):
    settings.JOB_CHUNK_TEXTS = 8
    JobFactory(tenant=alice.tenant, texts=[f"bulk {i}" for i in range(32)])
    loop = job_loop(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                   name="prio", jobs=JobFeed(lease_seconds=30, poll_seconds=0))
    loop.heartbeat(force=True)
    assert loop.run_once(block=0.1) == 8  # a chunk
    item = work_submit(model=MODEL, texts=["interactive"], keys=[text_key("interactive")], scope=alice.tenant.pk,
                               wait=10)
    assert loop.run_once(block=0.1) == 1  # the waiting request, before the next chunk
    local.work_wait(item, wait=1, dims=384)
    assert loop.run_once(block=0.1) == 8


def test_a_job_pass_runs_in_forward_passes_of_job_forward_texts_serving_requests_in_between(
        job_loop, alice, redis_db, minilm, transactional_db, settings):
    """Two drain loops of one thread each keep a job's forward passes as short as one loop's
    were (bootsteps: MAX_BATCH_TEXTS // loops): a request that arrives during one is served next."""
    settings.JOB_CHUNK_TEXTS = 8
    job = JobFactory(tenant=alice.tenant, texts=[f"bulk {i}" for i in range(8)])
    passes, submitted = [], []

    class Recording:  # the real runtime, recording each forward pass; a request arrives during the first
        spec = minilm.spec

        def encode(self, texts, **kwargs):
            passes.append(len(texts))
            if not submitted:
                submitted.append(work_submit(model=MODEL, texts=["in between"], keys=[text_key("in between")],
                                                     scope=alice.tenant.pk, wait=10))
            return minilm.encode(texts, **kwargs)

    loop = job_loop(runtimes={MODEL: Recording()}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                    name="steps", jobs=JobFeed(lease_seconds=30, poll_seconds=0), job_forward_texts=4)
    loop.heartbeat(force=True)
    assert loop.run_once(block=0.1) == 8
    loop.flush()
    assert passes == [4, 1, 4]  # the request went between the job's two forward passes
    _, vectors = local.work_wait(submitted[0], wait=1, dims=384)
    assert float(np.dot(vectors[0], minilm.model.encode(["in between"])[0])) > 0.999
    job.refresh_from_db()
    assert job.done == 8


def test_a_claim_gives_up_on_a_locked_table_instead_of_queueing(alice, redis_db, transactional_db):
    """Another session holds the chunk table (as DDL or a TRUNCATE would): the poll returns no
    chunk within its lock timeout, and claims again once the lock is gone."""
    import psycopg
    from django.db import connection

    JobFactory(tenant=alice.tenant, texts=["locked out"])
    params = connection.get_connection_params()
    other = psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"})
    try:
        other.execute(f"LOCK TABLE {JobChunk._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        assert job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=60) is None
        assert time.monotonic() - began < 5
    finally:
        other.rollback()
        other.close()
    claimed = job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=60)
    assert claimed is not None and claimed.texts == ["locked out"]


def test_chunks_of_different_tenants_interleave(alice, bob, redis_db, transactional_db, settings):
    settings.JOB_CHUNK_TEXTS = 4
    big = JobFactory(tenant=alice.tenant, texts=[f"a{i}" for i in range(40)])
    small = JobFactory(tenant=bob.tenant, texts=[f"b{i}" for i in range(8)])
    order = []
    for _ in range(6):
        chunk = job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=30)
        order.append(chunk.job_id)
        job_chunk_complete(chunk=chunk, cached=[False] * len(chunk.texts), tokens=1, compute_ms=1)
    assert order[:4].count(str(small.pk)) == 2  # bob's small job is done within the first four turns
    assert order[:4].count(str(big.pk)) == 2


def test_a_dead_workers_chunk_is_swept_back_and_counted_once(job_loop, alice, redis_db, minilm, transactional_db, settings):
    settings.JOB_CHUNK_TEXTS = 4
    job = JobFactory(tenant=alice.tenant, texts=[f"s{i}" for i in range(8)])
    dead = job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=0.01)  # claimed, then its worker died
    poll_until(lambda: JobChunk.objects.filter(pk=dead.id, lease_until__lt=Now()).exists(), timeout=5, interval=0.01,
               message="the dead worker's lease to run out")
    assert job_sweep() == 1
    assert redis_db.lrange(job_signal_key(MODEL), 0, -1)  # the workers are poked
    loop = job_loop(runtimes={MODEL: minilm}, redis=redis_db, max_texts=64, max_tokens=16384, upsert=cache_upsert,
                   name="alive", jobs=JobFeed(lease_seconds=30, poll_seconds=0))
    while loop.run_once(block=0.1):
        pass
    # the presumed-dead worker wakes up late: its completion changes nothing
    assert job_chunk_complete(chunk=dead, cached=[False] * 4, tokens=4, compute_ms=1) is False
    job.refresh_from_db()
    assert (job.status, job.done) == ("succeeded", 8)
    assert JobChunk.objects.get(job=job, seq=dead.start // 4).attempts == 2
    assert CachedEmbedding.objects.filter(scope=alice.tenant.pk).count() == 8


def test_a_chunk_that_keeps_failing_fails_the_job(alice, redis_db, transactional_db, settings):
    settings.JOB_MAX_ATTEMPTS = 2
    job = JobFactory(tenant=alice.tenant, texts=["x"])
    for _ in range(2):
        chunk = job_chunk_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=30)
        jobs.job_chunk_release(chunk=chunk, error="CUDA out of memory")
    job.refresh_from_db()
    assert job.status == "failed" and "CUDA out of memory" in job.error


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((dict(self.headers), body))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received, _Hook.status = [], 200
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.PROVIDER_ALLOWED_HOSTS = [f"127.0.0.1:{server.server_port}"]
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_the_webhook_is_signed_and_retried_on_5xx(alice, redis_db, hook_server, transactional_db):
    from accounts.signing import SIGNATURE_HEADER, webhook_verify
    from embeddings.webhooks import WebhookTransient, job_webhook_deliver

    job = JobFactory(tenant=alice.tenant, texts=["w"], webhook_url=hook_server)
    Job.objects.filter(pk=job.pk).update(status="succeeded", done=1)
    _Hook.status = 503
    with pytest.raises(WebhookTransient):
        job_webhook_deliver(job_id=str(job.pk))
    _Hook.status = 200
    assert job_webhook_deliver(job_id=str(job.pk)) == "delivered"
    headers, body = _Hook.received[-1]
    secret = alice.tenant.webhook_secret.encode()
    # Stripe's scheme: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">, signed at the attempt.
    t, v1 = (part.split("=", 1)[1] for part in headers[SIGNATURE_HEADER].split(","))
    assert abs(int(t) - time.time()) < 30
    assert v1 == hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert webhook_verify(secret.decode(), body, headers[SIGNATURE_HEADER])
    assert not webhook_verify(secret.decode(), body, headers[SIGNATURE_HEADER], now=int(t) + 301)  # a replay, too old
    assert not webhook_verify(secret.decode(), body + b" ", headers[SIGNATURE_HEADER])
    assert json.loads(body)["id"] == str(job.pk) and json.loads(body)["status"] == "succeeded"
    assert job_webhook_deliver(job_id=str(job.pk)) == "delivered"  # once: a repeat sends nothing
    assert len(_Hook.received) == 2


def test_one_claim_fills_a_pass_with_chunks_of_every_job_in_turn(alice, bob, redis_db, transactional_db, settings):
    settings.JOB_CHUNK_TEXTS = 4
    big = JobFactory(tenant=alice.tenant, texts=[f"a{i}" for i in range(40)])
    small = JobFactory(tenant=bob.tenant, texts=[f"b{i}" for i in range(8)])
    chunks = jobs.job_chunks_claim(models=[(MODEL, "gt-0.1.0")], lease_seconds=30, limit=4)
    assert sorted((c.job_id, c.start) for c in chunks) == sorted(
        [(str(big.pk), 0), (str(big.pk), 4), (str(small.pk), 0), (str(small.pk), 4)]
    )
    assert len({c.lease for c in chunks}) == 1 and Job.objects.get(pk=small.pk).status == "running"


def test_a_sync_request_is_served_between_the_forward_passes_of_a_job_pass(job_loop, alice, redis_db, minilm, transactional_db,
                                                                          settings):
    """GIVEN a job pass of 4 forward passes WHEN a request arrives during the first THEN it is
    answered before the job pass ends, not after it."""
    settings.JOB_CHUNK_TEXTS = 8
    JobFactory(tenant=alice.tenant, texts=[f"long pass {i}" for i in range(32)])
    answered_during_pass = []

    class Arriving:  # the real runtime; a request arrives while its first forward pass runs
        spec = minilm.spec

        def __init__(self):
            self.calls = 0
            self.item = None

        def encode(self, texts, **kwargs):
            self.calls += 1
            if self.calls == 1:
                self.item = work_submit(model=MODEL, texts=["urgent"], keys=[text_key("urgent")],
                                                scope=alice.tenant.pk, wait=10)
            elif self.item is not None and redis_db.llen(f"embed:r:{self.item.id}"):
                answered_during_pass.append(self.calls)
            return minilm.encode(texts, **kwargs)

    runtime = Arriving()
    loop = job_loop(runtimes={MODEL: runtime}, redis=redis_db, max_texts=8, max_tokens=16384, upsert=cache_upsert,
                   name="yield", jobs=JobFeed(lease_seconds=30, poll_seconds=0, chunks_per_pass=4))
    loop.heartbeat(force=True)
    assert loop.run_once(block=0.1) == 32  # one job pass: 4 chunks, 4 forward passes of 8
    loop.flush()
    assert answered_during_pass and answered_during_pass[0] <= 3  # the 1-text pass ran between job passes
    _, vectors = local.work_wait(runtime.item, wait=1, dims=384)
    assert float(np.dot(vectors[0], minilm.encode(["urgent"])[1][0])) > 0.999


def test_a_job_takes_what_the_sync_path_takes_nul_included(alice, bob, client_for, drainer, settings):
    """GIVEN texts with NUL characters (which PostgreSQL's text and jsonb refuse) and a character
    outside the BMP WHEN alice sends them as a job THEN it is accepted and its results are the
    vectors the sync path gives for the same texts, stored under the same keys."""
    settings.JOB_CHUNK_TEXTS = 2
    texts = ["nul\u0000inside", "\u0000", "ends with nul\u0000", "plain text", "emoji \U0001f600 pair"]
    client = client_for(alice)
    created = client.post("/v1/jobs", {"model": MODEL, "texts": texts}, format="json")
    assert created.status_code == 202, created.content
    final = _wait_job(client, created.json()["id"])
    assert final["status"] == "succeeded" and final["done"] == len(texts), final
    rows = client.get(f"/v1/jobs/{final['id']}/results").json()["data"]
    assert [r["index"] for r in rows] == list(range(len(texts)))

    fresh = client_for(bob).post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json")  # bob's scope: computed anew
    assert fresh.status_code == 200, fresh.content
    for row, sync in zip(rows, fresh.json()["data"], strict=True):  # passes of other sizes: not bit-equal
        assert float(np.dot(row["embedding"], sync["embedding"])) > 0.999
    stored = [t for c in JobChunk.objects.filter(job_id=final["id"]).order_by("seq") for t in c.texts]
    assert stored == texts
    again = client.post("/v1/embed/batch", {"model": MODEL, "texts": texts}, format="json")
    assert again.status_code == 200 and again.json()["cached"] == [True] * len(texts)  # the same cache keys


@pytest.mark.parametrize(("url", "field"), [("/v1/embeddings", "input"), ("/v1/embed", "text"),
                                            ("/v1/embed/batch", "texts"), ("/v1/jobs", "texts")])
@pytest.mark.parametrize("text", [b'"lone \\ud800 surrogate"', b'"raw \xed\xa0\x80 surrogate"'])
def test_a_lone_surrogate_is_the_same_400_on_every_path(alice, client_for, redis_db, url, field, text):
    """A lone surrogate is not Unicode text: no path can embed it (the tokenizer, UTF-8 and JSON all
    refuse it), so every path refuses it alike, before anything is counted or stored."""
    value = text if field == "text" else b"[" + text + b"]"
    body = b'{"model": "' + MODEL.encode() + b'", "' + field.encode() + b'": ' + value + b"}"
    client = client_for(alice)
    response = client.generic("POST", url, body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert "Retry-After" not in response
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 0
    assert not Job.objects.exists()


def test_a_value_the_database_refuses_is_400_not_503(alice, client_for, redis_db, monkeypatch):
    """A DataError (here PostgreSQL's own refusal of a \\u0000 escape in jsonb, what storing a job
    with a NUL used to raise) is the request's fault: 400 without Retry-After, and the quota is
    refunded. A 503 would have the client retry it forever."""
    from django.db import connection

    def refused(*args, **kwargs):
        with connection.cursor() as cur:
            cur.execute("SELECT %s::jsonb", ['["\\u0000"]'])

    monkeypatch.setattr(JobChunk.objects, "bulk_create", refused)
    client = client_for(alice)
    response = client.post("/v1/jobs", {"model": MODEL, "texts": ["fine text"]}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_value" and "Retry-After" not in response
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 0


def test_wait_0_is_a_job_at_once_unless_every_text_is_cached(alice, client_for, redis_db):
    """`wait: 0` means "do not wait": 202 with the job at once, and nothing is queued for a sync
    wait; every text a cache hit: 200. No worker runs here (a wait would end in 503 or 504)."""
    from dispatch.keys import work_list
    from embeddings.registry import model_get

    cache_upsert(model=MODEL, version=model_get(MODEL).version, scope=alice.tenant.pk,
                 rows=[(text_key(t), 2, np.full(384, 0.05, dtype=np.float32)) for t in ("warm one", "warm two")])
    client = client_for(alice)
    started = time.monotonic()
    hit = client.post("/v1/embed/batch", {"texts": ["warm one", "warm two"], "wait": 0}, format="json")
    assert hit.status_code == 200, hit.content
    assert hit.json()["cached"] == [True, True]
    miss = client.post("/v1/embed/batch", {"texts": ["warm one", "cold one"], "wait": 0}, format="json")
    assert miss.status_code == 202, miss.content
    job = miss.json()
    assert job["object"] == "job" and job["total"] == 2 and job["status"] == "queued"
    assert miss["Location"] == job["status_url"]
    single = client.post("/v1/embed", {"text": "cold two", "wait": 0}, format="json")
    assert single.status_code == 202, single.content
    assert single.json()["total"] == 1
    assert time.monotonic() - started < 2  # at once: no wait, no fallback after one
    assert redis_db.llen(work_list(MODEL, "hi")) == 0  # no sync work queued for nobody to wait on
    assert Job.objects.filter(tenant=alice.tenant).count() == 2
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 5  # every text once, jobs included

    refused = client.post("/v1/embeddings", {"model": MODEL, "input": "cold", "wait": 0}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "wait"
    assert "/v1/embed/batch" in refused.json()["error"]["message"]
    assert client.post("/v1/embed/batch", {"texts": ["x"], "wait": -1}, format="json").status_code == 400
