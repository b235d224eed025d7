"""Prometheus metrics shared by the API and the workers, and the helpers that move them.

Where each series comes from:
- the web's /metrics (`metrics_view`): django-prometheus' HTTP metrics, the cache hit/miss
  counters (embeddings.serving.embed_plan), and two cluster-wide collectors read at scrape
  time: queue depth per model list (Redis LLEN) and jobs by status (one GROUP BY);
- each worker's own port (WORKER_METRICS_PORT, `worker_metrics_serve`): batch size, batch
  tokens and inference seconds (workers/drain.py), provider call seconds and errors (the
  provider worker), plus process metrics.
The cluster-wide collectors are only on the web, so that summing over targets never counts
a queue twice. See docs/DECISIONS.md (metrics).

Label values are bounded: model names come from the registry, scope is "tenant" or
"public" (never a tenant id), provider is the preset name, kind a short error class.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from embedplatform.errors import error_body

logger = logging.getLogger(__name__)

# --- API side ------------------------------------------------------------------------------
CACHE_HITS = Counter("embed_cache_hits", "Texts answered from the embedding cache.", ["model", "scope"])
CACHE_MISSES = Counter("embed_cache_misses", "Texts not in the cache (sent to a worker or provider).",
                       ["model", "scope"])

RERANK_REQUESTS = Counter(
    "embed_rerank_requests", "Rerank requests answered, by model and how they were scored (cross_encoder: the "
    "reranker's pair scores; embedding: cosine of an embedding model's vectors).", ["model", "method"])
RERANK_DOCUMENTS = Histogram(
    "embed_rerank_documents", "Documents per rerank request.", ["model"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
RERANK_SECONDS = Histogram(
    "embed_rerank_seconds", "Seconds per rerank request in the web (cache, hand-off to the workers, ranking).",
    ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# --- worker side ---------------------------------------------------------------------------
BATCH_TEXTS = Histogram(
    "embed_batch_texts", "Distinct texts per forward pass of the drain loop.", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_TOKENS = Histogram(
    "embed_batch_tokens", "Tokens per forward pass of the drain loop.", ["model"],
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
INFERENCE_SECONDS = Histogram(
    "embed_inference_seconds", "Seconds per forward pass (tokenize + model + pooling).", ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_CALL_SECONDS = Histogram(
    "embed_provider_call_seconds", "Seconds per upstream (BYOK provider) HTTP call.", ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
CACHE_STORE_SKIPPED = Counter(
    "embed_cache_store_skipped",
    "Vectors served but not stored: their tenant's cache is at its tier's max_cache_bytes (embeddings/cachecap.py).",
)
PROVIDER_ERRORS = Counter(
    "embed_provider_errors", "Failed upstream calls, by provider and kind (timeout, http_429, http_5xx, ...).",
    ["provider", "kind"],
)


def cache_observe(*, model: str, public: bool, hits: int, misses: int) -> None:
    """Counts one cache lookup: `hits` and `misses` distinct texts."""
    scope = "public" if public else "tenant"
    if hits:
        CACHE_HITS.labels(model, scope).inc(hits)
    if misses:
        CACHE_MISSES.labels(model, scope).inc(misses)


def batch_observe(*, model: str, texts: int, tokens: int, seconds: float) -> None:
    """Records one forward pass of the drain loop."""
    BATCH_TEXTS.labels(model).observe(texts)
    BATCH_TOKENS.labels(model).observe(tokens)
    INFERENCE_SECONDS.labels(model).observe(seconds)


def rerank_observe(*, model: str, method: str, documents: int, seconds: float) -> None:
    """Records one answered rerank request (the reranker's pairs per forward pass are
    embed_batch_texts of its model, as for any model)."""
    RERANK_REQUESTS.labels(model, method).inc()
    RERANK_DOCUMENTS.labels(model).observe(documents)
    RERANK_SECONDS.labels(model).observe(seconds)


def provider_call_observe(provider: str, seconds: float) -> None:
    """Records one upstream call (successful or not) that took `seconds`."""
    PROVIDER_CALL_SECONDS.labels(provider).observe(seconds)


def provider_error_inc(provider: str, kind: str) -> None:
    """Counts one failed upstream call; `kind` is a short fixed word (timeout, http_429, ...)."""
    PROVIDER_ERRORS.labels(provider, kind).inc()


# --- cluster-wide collectors (web only): registered by the apps that own what they read
# (embeddings/collectors.py), read by metrics_view only.
CLUSTER_REGISTRY = CollectorRegistry(auto_describe=False)


def _process_registry() -> CollectorRegistry:
    """This process's metrics; with PROMETHEUS_MULTIPROC_DIR set (granian with several
    workers), the sum over every process that writes there instead."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Imported here: prometheus_client.multiprocess reads PROMETHEUS_MULTIPROC_DIR when imported.
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


METRICS_UNAUTHORIZED = ("/metrics needs `Authorization: Bearer <METRICS_TOKEN>` (in Prometheus' scrape config: "
                        "`authorization: {credentials: <token>}`).")


def metrics_authorized(request: HttpRequest, token: str) -> bool:
    """With METRICS_TOKEN set, a scrape must send it as a bearer token (compared in constant time)."""
    if not token:
        return True
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics on the web: process (or multiprocess) metrics + the cluster-wide ones.

    METRICS_TOKEN set: only a scrape with `Authorization: Bearer <token>` is answered (else 401,
    the error envelope). The workers' own ports (WORKER_METRICS_PORT) have no token: keep them on
    a private network, or bind WORKER_METRICS_ADDR to 127.0.0.1.
    """
    if not metrics_authorized(request, settings.METRICS_TOKEN):
        body = error_body(METRICS_UNAUTHORIZED, type="authentication_error", code="invalid_metrics_token")
        return JsonResponse(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    text = generate_latest(_process_registry()) + generate_latest(CLUSTER_REGISTRY)
    return HttpResponse(text, content_type=CONTENT_TYPE_LATEST)


_served: dict[int, object] = {}
_served_lock = threading.Lock()


def worker_metrics_serve(*, port: int, addr: str = "0.0.0.0") -> int | None:
    """Serves this process's metrics over HTTP on `port` (0: any free port), once per process.

    Returns the bound port, or None when the port is taken (logged; the caller goes on).
    """
    with _served_lock:
        if port and port in _served:
            return port
        try:
            server, _thread = start_http_server(port, addr=addr)
        except OSError as exc:
            logger.warning("worker metrics not served: port %s: %s (set WORKER_METRICS_PORT per worker)", port, exc)
            return None
        bound = server.server_port
        _served[bound] = server
    logger.info("worker metrics on http://%s:%s/metrics", addr, bound)
    return bound
