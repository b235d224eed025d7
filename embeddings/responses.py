"""What the embedding, job, model and cache endpoints answer, each defined once
(embedplatform/responses.py says how).

The vector answers and the job pages are TypedDict shapes with their builders here: the views
answer the builder's plain dict (orjson renders it, numpy rows and all: vector_encode),
and the schema shows `shape_serializer(shape)`. The job itself is a shape of
embeddings/serializers.py, beside job_payload, which its webhook shares.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Literal, TypedDict

import numpy as np
import orjson
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from embeddings.encoding import vector_encode
from embeddings.quantize import FLOAT, OutputDtype
from embeddings.serializers import Job, job_payload

if TYPE_CHECKING:
    from embeddings.models import Job as JobRow
    from embeddings.rerank import RerankResult
    from embeddings.selectors import JobResult
    from embeddings.serving import EmbedResult


@extend_schema_field(
    {
        # anyOf: an integer array is also an array of numbers.
        "anyOf": [
            {"type": "array", "items": {"type": "number", "format": "float"}},
            {"type": "array", "items": {"type": "integer"},
             "description": "output_dtype int8, uint8, binary or ubinary (packed bits: ceil(dimensions/8) bytes)"},
            {"type": "string", "format": "byte",
             "description": "base64 of little-endian float32, or of the int8/uint8/packed bytes"},
        ],
        "description": "The vector: floats, integers with a quantized output_dtype, or base64 of its bytes "
                       "with encoding_format=base64.",
    }
)
class VectorField(serializers.Field):
    pass


# A row of the answer's array (orjson writes it as a JSON array of numbers) or its base64: the
# schema is VectorField's.
Vector = Annotated[np.ndarray | str, VectorField]


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: Vector
    cached: Annotated[bool, "True where the vector came from the cache."]


class EmbeddingsResponse(TypedDict):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class EmbedResponse(TypedDict):
    embedding: Vector
    model: str
    dimensions: int
    tokens: int
    cached: bool
    latency_ms: float


class EmbedBatchResponse(TypedDict):
    embeddings: list[Vector]
    cached: list[bool]
    model: str
    dimensions: int
    usage: EmbeddingUsage


class JobList(TypedDict):
    object: Literal["list"]
    data: list[Job]
    next_cursor: Annotated[str | None, "Pass as ?cursor= for the next page."]
    has_more: bool


class JobResultItem(TypedDict):
    index: int
    embedding: Vector
    cached: bool


class JobResults(TypedDict):
    object: Literal["list"]
    job_id: Annotated[str, serializers.UUIDField]
    model: str
    total: int
    offset: int
    limit: int
    has_more: bool
    data: list[JobResultItem]


def _usage(tokens: int) -> EmbeddingUsage:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def embeddings_body(result: EmbedResult, encoding_format: str, *, out: OutputDtype = FLOAT) -> EmbeddingsResponse:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector_encode(v, encoding_format), "cached": c}
            for i, (v, c) in enumerate(zip(out.apply(result.vectors), result.cached, strict=True))
        ],
        "model": result.model.name,
        "usage": _usage(result.total_tokens),
    }


def embed_body(result: EmbedResult, encoding_format: str, *, started: float,
               out: OutputDtype = FLOAT) -> EmbedResponse:
    """`started`: the request's perf_counter() at arrival; latency_ms is taken last, as the body is done."""
    return {
        "embedding": vector_encode(out.apply(result.vectors[:1])[0], encoding_format),
        "model": result.model.name,
        "dimensions": int(result.vectors.shape[1]),
        "tokens": result.tokens[0],
        "cached": result.cached[0],
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }


def embed_batch_body(result: EmbedResult, encoding_format: str, *, out: OutputDtype = FLOAT) -> EmbedBatchResponse:
    return {
        "embeddings": [vector_encode(v, encoding_format) for v in out.apply(result.vectors)],
        "cached": result.cached,
        "model": result.model.name,
        "dimensions": int(result.vectors.shape[1]),
        "usage": _usage(result.total_tokens),
    }


def job_list_body(jobs: Iterable, next_cursor: str | None) -> JobList:
    return {"object": "list", "data": [job_payload(j) for j in jobs], "next_cursor": next_cursor,
            "has_more": next_cursor is not None}


def _result_item(row: JobResult, encoding_format: str, out: OutputDtype) -> JobResultItem:
    return {"index": row.index, "embedding": vector_encode(out.apply(row.vector[None])[0], encoding_format),
            "cached": row.cached}


def job_results_body(job: JobRow, rows: list[JobResult], *, offset: int, limit: int,
                     encoding_format: str, out: OutputDtype = FLOAT) -> JobResults:
    return {
        "object": "list", "job_id": str(job.pk), "model": job.model, "total": job.total,
        "offset": offset, "limit": limit, "has_more": offset + len(rows) < job.total,
        "data": [_result_item(r, encoding_format, out) for r in rows],
    }


def job_result_lines(rows: Iterable[JobResult], encoding_format: str, *,
                     out: OutputDtype = FLOAT) -> Iterator[bytes]:
    """?format=jsonl: one JobResultItem per line."""
    for r in rows:
        yield orjson.dumps(_result_item(r, encoding_format, out), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class ModelSerializer(serializers.Serializer):
    """A model to name in `model` (embeddings/models_catalog.CatalogModel): one the platform serves
    (compute "local"), or `<provider name>/<model>`, one of your providers' (compute "byok": its
    dimensions and max_tokens are the upstream's, null here)."""

    id = serializers.CharField(source="name")
    object = serializers.CharField(default="model")
    dimensions = serializers.IntegerField(source="dims", allow_null=True)
    max_tokens = serializers.IntegerField(allow_null=True)
    compute = serializers.ChoiceField(choices=("local", "byok"))
    kind = serializers.ChoiceField(choices=("embed", "rerank"), help_text="embed: a model that makes embeddings; "
                                   "rerank: a reranker, which scores query-document pairs (POST /v1/rerank).")
    owned_by = serializers.CharField()
    version = serializers.CharField(help_text="Part of every cache key: new weights or settings, new vectors.")
    alias_of = serializers.CharField(
        allow_null=True, help_text="An alias (the operator's EMBED_MODEL_ALIASES, e.g. an OpenAI model name): the "
                                   "served model it stands for, which computes its vectors and is named in the "
                                   "answers' `model`. null for a model's own name.")


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)  # type: ignore[assignment]  # a field: DRF's metaclass keeps .data


class ModelWorkerSerializer(serializers.Serializer):
    """A drain loop serving the model, as its last heartbeat said."""

    id = serializers.CharField(help_text="The drain loop's name.")
    backend = serializers.CharField(allow_null=True, help_text="onnx or torch: the backend of its small passes.")
    precision = serializers.CharField(
        allow_null=True, help_text='What its passes compute in: fp32, bf16, ... ("small/big" where they differ).')
    device = serializers.CharField(allow_null=True, help_text="cpu, cuda, ...")


class ModelDetailSerializer(ModelSerializer):
    """A model, with what serves it now (local models; a byok model has no workers here)."""

    matryoshka_dims = serializers.ListField(
        child=serializers.IntegerField(), allow_null=True,
        help_text="The widths it was trained to serve truncated (its model card or EMBED_MODELS), widest first: "
                  "`dimensions` must then be one of them or `dimensions` (its full width). Empty: any 1..dimensions. "
                  "Null for a byok model.")
    precision = serializers.CharField(allow_null=True, help_text="What most of its workers compute in; null with none.")
    backend = serializers.CharField(allow_null=True, help_text="What most of its workers run; null with none.")
    workers = ModelWorkerSerializer(many=True, help_text="The live drain loops serving it.")
    queue_depth = serializers.IntegerField(
        allow_null=True, help_text="Requests waiting for its workers; null for a byok model.")


class CacheDeletedSerializer(serializers.Serializer):
    deleted = serializers.IntegerField(help_text="Entries deleted from your cache scope.")


class RerankUsage(TypedDict):
    documents: Annotated[int, "Documents scored (cache hits and misses alike): what quotas and usage count."]
    cached_documents: Annotated[int, "Documents whose score (or vector) came from the cache."]
    total_tokens: Annotated[int, "Tokens the model read (pairs for a reranker), cache hits included."]


class RerankResultItem(TypedDict):
    index: Annotated[int, "The document's position in the request."]
    relevance_score: Annotated[float, "The reranker's score for the pair (sigmoid of its logit for one-logit "
                                      "models, as CrossEncoder.predict gives), or the cosine similarity."]
    document: Annotated[dict[str, str] | None, "The document as sent ({text} for a string) with "
                                                "return_documents, else null."]


class RerankResponse(TypedDict):
    """POST /v1/rerank: results highest relevance_score first (ties in input order), top_n of them."""

    id: str
    results: list[RerankResultItem]
    model: str
    usage: RerankUsage


def _document(doc: str | dict[str, str]) -> dict[str, str]:
    return doc if isinstance(doc, dict) else {"text": doc}


def rerank_body(result: RerankResult, documents: list[str | dict[str, str]], *,
                return_documents: bool) -> RerankResponse:
    return {
        "id": result.id,
        "results": [
            {"index": i, "relevance_score": float(result.scores[i]),
             "document": _document(documents[i]) if return_documents else None}
            for i in result.order
        ],
        "model": result.model.name,
        "usage": {"documents": len(documents), "cached_documents": result.cached, "total_tokens": result.tokens},
    }
