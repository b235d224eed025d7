"""Rerank: score documents against a query, through the same cache, queues and tenancy as embeddings.

Two ways to score, by the model's kind (embeddings/registry.py):
  - a reranker (a cross-encoder): each (query, document) pair is one input of the model, carried
    as one text (dispatch.frames.pair_join). embed_serve serves those texts as it serves any:
    the cache first (a pair's score is stored like a vector, one float, keyed by model, version,
    the pair's hash and the tenant's scope), then the reranker's work list, where the drain loops
    batch pairs of many requests and tenants into one forward pass (workers/rerank.py). The score
    is what sentence-transformers' CrossEncoder.predict gives (sigmoid for one-logit models).
  - an embedding model: the query and the documents are embedded (through the cache, with the
    model's query and document prompts) and ranked by cosine similarity.
Usage counts documents (and, for an embedding model, the query too), hits and misses alike, in
the tier's quotas, like texts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np

from accounts.models import Tenant
from accounts.quotas import Caller, QuotaState, RateState
from dispatch.base import ServedModel
from dispatch.frames import pair_join
from embeddings.inputs import EmbedOptions, model_lookup
from embeddings.serving import EmbedResult, embed_serve
from embedplatform import metrics
from embedplatform.errors import RERANK_TOO_MANY_DOCUMENTS, InvalidInput
from embedplatform.logs import request_id_get


@dataclass(frozen=True)
class RerankResult:
    id: str
    model: ServedModel
    order: list[int]  # document indexes, highest score first, top_n of them
    scores: np.ndarray  # float32[n documents], in input order
    tokens: int
    cached: int  # documents whose score (or vector) came from the cache


def rerank_limit_check(*, tenant: Tenant, documents: int) -> None:
    """400 when a request carries more documents than the tier allows per rerank request."""
    limit = tenant.tier.max_rerank_documents
    if documents > limit:
        raise InvalidInput(RERANK_TOO_MANY_DOCUMENTS.format(documents=documents, tier=tenant.tier.name, limit=limit),
                           param="documents", code="too_many_documents")


def rerank_serve(*, tenant: Tenant, model: str, query: str, documents: list[str], top_n: int | None,
                 wait: float, caller: Caller) -> tuple[RerankResult, QuotaState, RateState]:
    """Scores `documents` against `query` with `model` (a reranker, or an embedding model by
    cosine) within the tenant's limits, and orders them: the highest score first, ties in input
    order, top_n of them (all when None; a top_n beyond the documents gives them all). Raises
    as embed_serve does (NotFound, NotAllowed, Overloaded, WaitTimeout, QuotaExceeded, ...)."""
    started = time.perf_counter()
    rerank_limit_check(tenant=tenant, documents=len(documents))
    spec = model_lookup(tenant=tenant, model=model)
    if spec.kind == "rerank":
        result, quota, rate = _serve(tenant=tenant, texts=[pair_join(query, d) for d in documents],
                                     options=EmbedOptions(model=model, kind="rerank"), wait=wait, caller=caller)
        scores = result.vectors[:, 0].astype(np.float32)
        tokens, cached, method = result.total_tokens, sum(result.cached), "cross_encoder"
    else:
        scores, tokens, cached, quota, rate = _cosine(tenant=tenant, spec=spec, model=model, query=query,
                                                      documents=documents, wait=wait, caller=caller)
        method = "embedding"
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))
    if top_n is not None:
        order = order[:top_n]
    metrics.rerank_observe(model=spec.metrics_label, method=method, documents=len(documents),
                           seconds=time.perf_counter() - started)
    return (RerankResult(id=request_id_get() or uuid.uuid4().hex, model=spec, order=order, scores=scores,
                         tokens=tokens, cached=cached), quota, rate)


def _serve(*, tenant: Tenant, texts: list[str], options: EmbedOptions, wait: float,
           caller: Caller) -> tuple[EmbedResult, QuotaState, RateState]:
    result, quota, rate = embed_serve(tenant=tenant, texts=texts, options=options, wait=wait, caller=caller,
                                      batch_limit=False)
    assert isinstance(result, EmbedResult)  # without job_fallback, never a Job
    return result, quota, rate


def _cosine(*, tenant: Tenant, spec: ServedModel, model: str, query: str, documents: list[str], wait: float,
            caller: Caller) -> tuple[np.ndarray, int, int, QuotaState, RateState]:
    """Scores by an embedding model: the cosine of the query's vector and each document's. One
    request where the model's query and document prompts are the same (the default model), else
    one for the query and one for the documents, each with its prompt."""
    if spec.prompt("query") == spec.prompt("document"):
        result, quota, rate = _serve(tenant=tenant, texts=[query, *documents], options=EmbedOptions(model=model),
                                     wait=wait, caller=caller)
        vectors, tokens, cached = result.vectors, result.total_tokens, sum(result.cached[1:])
    else:
        asked, _, _ = _serve(tenant=tenant, texts=[query], options=EmbedOptions(model=model, input_type="query"),
                             wait=wait, caller=caller)
        docs, quota, rate = _serve(tenant=tenant, texts=documents,
                                   options=EmbedOptions(model=model, input_type="document"), wait=wait, caller=caller)
        vectors = np.concatenate([asked.vectors, docs.vectors])
        tokens, cached = asked.total_tokens + docs.total_tokens, sum(docs.cached)
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1
    unit = vectors / norms[:, None]
    return (unit[1:] @ unit[0]).astype(np.float32), tokens, cached, quota, rate
