"""Prometheus: the web's /metrics (cache counters, queue depth) and a worker's metrics port."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatch.keys import work_list
from embedplatform import metrics

MODEL = "all-MiniLM-L6-v2"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    return r.content.decode()


def test_the_cache_counters_move_with_a_miss_then_a_hit(alice, client_for, drainer, client):
    api = client_for(alice)
    text = f"metrics {uuid.uuid4()}"
    before = scrape(client)
    assert api.post("/v1/embeddings", {"model": MODEL, "input": text}, format="json").status_code == 200
    after_miss = scrape(client)
    assert api.post("/v1/embeddings", {"model": MODEL, "input": text}, format="json").status_code == 200
    after_hit = scrape(client)

    def moved(name, a, b):
        return value(b, name, model=MODEL, scope="tenant") - value(a, name, model=MODEL, scope="tenant")

    assert moved("embed_cache_misses_total", before, after_miss) == 1
    assert moved("embed_cache_hits_total", before, after_miss) == 0
    assert moved("embed_cache_hits_total", after_miss, after_hit) == 1
    assert moved("embed_cache_misses_total", after_miss, after_hit) == 0
    # django-prometheus' HTTP metrics are on the same page.
    assert "django_http_requests_total_by_method_total" in after_hit


def test_it_reports_queue_depth_per_model_and_priority(redis_db, client, db):
    redis_db.rpush(work_list(MODEL, "lo"), b"{}", b"{}", b"{}")
    text = scrape(client)
    assert value(text, "embed_queue_depth", model=MODEL, priority="lo") == 3
    assert value(text, "embed_queue_depth", model=MODEL, priority="hi") == 0


def test_metrics_still_answer_when_redis_is_down(client, db, monkeypatch):
    import redis

    from embeddings import collectors

    class Down:
        def pipeline(self, **kw):
            raise redis.ConnectionError("down")

    monkeypatch.setattr(collectors, "redis_client", lambda: Down())
    text = scrape(client)
    assert "embed_queue_depth{" not in text
    assert "embed_cache_hits_total" in text or "embed_cache_hits" in text


def test_a_workers_port_shows_batch_and_inference_histograms(alice, client_for, drainer):
    port = metrics.worker_metrics_serve(port=0, addr="127.0.0.1")
    assert port
    url = f"http://127.0.0.1:{port}/metrics"
    before = httpx.get(url, timeout=5).text
    texts = [f"batch {i} {uuid.uuid4()}" for i in range(3)]
    assert client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json").status_code == 200
    after = httpx.get(url, timeout=5).text
    for name in ("embed_batch_texts_count", "embed_batch_tokens_count", "embed_inference_seconds_count"):
        assert value(after, name, model=MODEL) - value(before, name, model=MODEL) >= 1, name
    assert value(after, "embed_batch_texts_sum", model=MODEL) - value(before, "embed_batch_texts_sum", model=MODEL) == 3
    assert value(after, "embed_batch_tokens_sum", model=MODEL) > value(before, "embed_batch_tokens_sum", model=MODEL)
    # Cluster-wide series belong to the web only: summing over targets never counts a queue twice.
    assert "embed_queue_depth" not in after


def test_a_taken_port_is_logged_not_fatal(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert metrics.worker_metrics_serve(port=taken, addr="127.0.0.1") is None
    assert "worker metrics not served" in caplog.text


def test_the_provider_helpers_record_calls_and_errors():
    from prometheus_client import REGISTRY, generate_latest

    before = generate_latest(REGISTRY).decode()
    metrics.provider_call_observe("openai", 0.3)
    metrics.provider_error_inc("openai", "http_429")
    after = generate_latest(REGISTRY).decode()
    assert value(after, "embed_provider_call_seconds_count", provider="openai") == \
        value(before, "embed_provider_call_seconds_count", provider="openai") + 1
    assert value(after, "embed_provider_errors_total", provider="openai", kind="http_429") == \
        value(before, "embed_provider_errors_total", provider="openai", kind="http_429") + 1


def test_jobs_by_status_appear_once_jobs_exist(client, db):
    from django.apps import apps

    try:
        job = apps.get_model("embeddings", "Job")
    except LookupError:
        pytest.skip("no embeddings.Job model yet: the collector yields nothing until it exists")
    text = scrape(client)
    statuses = {dict(labels)["status"] for (name, labels) in samples(text) if name == "embed_jobs"}
    assert set(job.objects.values_list("status", flat=True).distinct()) <= statuses


def test_multiprocess_mode_still_answers(client, db, monkeypatch, tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR (several web processes) /metrics sums the processes' files."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = scrape(client)
    assert "embed_queue_depth" in text  # the cluster-wide part is there either way


# --- METRICS_TOKEN: /metrics as Prometheus scrapes it with `authorization: {credentials: ...}` ----
TOKEN = "scrape-token-0123456789abcdef"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_with_a_metrics_token_a_scrape_without_it_is_a_401(client, db, settings, header):
    settings.METRICS_TOKEN = TOKEN
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    r = client.get("/metrics", **extra)
    assert r.status_code == 401
    assert r["WWW-Authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_metrics_token"
    assert "METRICS_TOKEN" in error["message"] and TOKEN not in r.content.decode()
    assert b"embed_cache_hits" not in r.content


def test_with_a_metrics_token_the_right_bearer_is_answered(client, db, settings):
    settings.METRICS_TOKEN = TOKEN
    r = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    assert "django_http_requests_total_by_method_total" in r.content.decode()


def test_without_a_metrics_token_metrics_stay_open(client, db, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200
