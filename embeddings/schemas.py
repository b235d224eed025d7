"""OpenAPI documentation of the embedding, job, model and cache endpoints: summaries, examples,
error answers. The request and response definitions are the views' own (embeddings/serializers.py,
embeddings/responses.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import Direction, F, OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.serializers import BaseSerializer, Serializer

from embeddings import tokenids
from embeddings.responses import (
    CacheDeletedSerializer,
    EmbedBatchResponse,
    EmbeddingsResponse,
    EmbedResponse,
    JobList,
    JobResults,
    ModelDetailSerializer,
    ModelListSerializer,
    RerankResponse,
)
from embeddings.serializers import (
    EmbedBatchRequestSerializer,
    EmbeddingsRequestSerializer,
    EmbedRequestSerializer,
    Job,
    JobCreateRequestSerializer,
    RerankRequestSerializer,
)
from embedplatform.responses import shape_serializer
from embedplatform.schemas import DATA_PLANE_ERRORS, JWT_ONLY, MANAGEMENT_ERRORS, error_responses, named

if TYPE_CHECKING:
    from drf_spectacular.openapi import AutoSchema

EXAMPLE_JOB_ID = "5b0e8f3c-2f4e-4a51-9c57-2b1f0b7d9e41"
EXAMPLE_TIME = "2026-01-15T09:30:00+00:00"
EXAMPLE_VECTOR = [0.0123, -0.0456, 0.0789]
MODEL_EXAMPLE = {
    "id": "all-MiniLM-L6-v2",
    "object": "model",
    "dimensions": 384,
    "max_tokens": 256,
    "compute": "local",
    "kind": "embed",
    "owned_by": "sentence-transformers",
    "version": "1",
    "alias_of": None,
}


def _text_schema() -> dict:
    return {"type": "string", "minLength": 1, "maxLength": settings.MAX_INPUT_CHARS}


class TextsFieldExtension(OpenApiSerializerFieldExtension):
    """`input` / `texts`: a string or a non-empty array of strings."""

    target_class = "embeddings.serializers.TextsField"

    def map_serializer_field(self, auto_schema: object, direction: str) -> dict:
        limit = getattr(settings, self.target.max_items_setting)
        return {
            "oneOf": [
                _text_schema(),
                {"type": "array", "items": _text_schema(), "minItems": 1, "maxItems": limit},
            ],
            "description": f"A non-empty string, or an array of 1 to {limit} of them.",
        }


class EmbeddingsInputFieldExtension(OpenApiSerializerFieldExtension):
    """/v1/embeddings' `input`: OpenAI's, token-id arrays included."""

    target_class = "embeddings.serializers.EmbeddingsInputField"

    def map_serializer_field(self, auto_schema: object, direction: str) -> dict:
        limit = getattr(settings, self.target.max_items_setting)
        tokens = {"type": "array", "minItems": 1,
                  "items": {"type": "integer", "minimum": 0, "maximum": tokenids.CL100K_SPECIAL["<|endofprompt|>"]}}
        return {
            "anyOf": [
                _text_schema(),
                {"type": "array", "items": {"anyOf": [_text_schema(), tokens]}, "minItems": 1, "maxItems": limit},
                tokens,
            ],
            "description": (
                f"A non-empty string, or an array of 1 to {limit} inputs, each a string or an array of "
                f"{tokenids.ENCODING} token ids (tiktoken's, as OpenAI takes them; LangChain sends these), or one "
                f"such token array. Token ids are decoded to their text: {tokenids.VALID_IDS}; any other is a 400 "
                "naming its position."
            ),
        }


class ClosedBodyExtension(OpenApiSerializerExtension):
    """Our own endpoints' request bodies take no field they do not declare (400 `unknown_field`:
    embeddings/serializers.ClosedBodyMixin), so their schemas say `additionalProperties: false`."""

    target_class = "embeddings.serializers.ClosedBodyMixin"
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: Direction) -> dict:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
            # Two names for one field (`texts` or OpenAI's `input`: serializers.TextsOrInputMixin).
            names = getattr(self.target, "one_of_required", ())
            if names:
                schema["oneOf"] = [{"required": [name]} for name in names]
        return schema


class TextFieldExtension(OpenApiSerializerFieldExtension):
    target_class = "embeddings.serializers.TextField"

    def map_serializer_field(self, auto_schema: object, direction: str) -> dict:
        return _text_schema()


JOB_EXAMPLE = {
    "id": EXAMPLE_JOB_ID,
    "object": "job",
    "status": "queued",
    "model": "all-MiniLM-L6-v2",
    "total": 3,
    "done": 0,
    "cached": 0,
    "created_at": EXAMPLE_TIME,
    "started_at": None,
    "finished_at": None,
    "error": None,
    "webhook_url": None,
    "status_url": f"/v1/jobs/{EXAMPLE_JOB_ID}",
    "results_url": f"/v1/jobs/{EXAMPLE_JOB_ID}/results",
}
JOB_ACCEPTED = OpenApiResponse(
    shape_serializer(Job),
    description="Accepted as a job: poll `status_url` (also the Location header).",
    examples=[OpenApiExample("job", value=JOB_EXAMPLE, status_codes=["202"], response_only=True)],
)
JOB_ID = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The job's id.")
# Sync endpoints: the data-plane errors, 404 for an unknown model, 502 from a BYOK provider, 504 on a timeout.
EMBED_ERRORS = error_responses(*DATA_PLANE_ERRORS, 404, 502, 504)


def _ok(serializer: type[BaseSerializer], name: str, value: dict) -> OpenApiResponse:
    return OpenApiResponse(
        serializer, examples=[OpenApiExample(name, value=value, status_codes=["200"], response_only=True)]
    )


embeddings_create_schema = extend_schema(
    operation_id="embeddings_create",
    tags=["embeddings"],
    summary="Create embeddings (OpenAI-compatible)",
    request=named(EmbeddingsRequestSerializer, "Embeddings"),
    responses={
        200: _ok(
            shape_serializer(EmbeddingsResponse),
            "embeddings",
            {
                "object": "list",
                "model": "all-MiniLM-L6-v2",
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
                "data": [{"object": "embedding", "index": 0, "embedding": EXAMPLE_VECTOR, "cached": False}],
            },
        ),
        **EMBED_ERRORS,
    },
    examples=[
        OpenApiExample("one text", request_only=True, value={"input": "hello world", "model": "all-MiniLM-L6-v2"}),
        OpenApiExample(
            "several texts, base64",
            request_only=True,
            value={"input": ["first text", "second text"], "model": "all-MiniLM-L6-v2", "encoding_format": "base64"},
        ),
        OpenApiExample(
            "token ids, an alias (LangChain's defaults)",
            request_only=True,
            value={"input": [[15339, 1917], [5686, 1495]], "model": "text-embedding-ada-002",
                   "encoding_format": "base64"},
        ),
    ],
)

embed_schema = extend_schema(
    operation_id="embed",
    tags=["embeddings"],
    summary="Embed one text",
    request=named(EmbedRequestSerializer, "Embed"),
    responses={
        200: _ok(
            shape_serializer(EmbedResponse),
            "vector",
            {
                "embedding": EXAMPLE_VECTOR,
                "model": "all-MiniLM-L6-v2",
                "dimensions": 384,
                "tokens": 4,
                "cached": True,
                "latency_ms": 1.84,
            },
        ),
        202: JOB_ACCEPTED,
        **EMBED_ERRORS,
    },
    examples=[OpenApiExample("text", request_only=True, value={"text": "hello world", "normalize": True})],
)

embed_batch_schema = extend_schema(
    operation_id="embed_batch",
    tags=["embeddings"],
    summary="Embed many texts (202 job when `wait` runs out; `wait: 0`: a job at once)",
    description=(
        "Cache hits are answered from the cache; the misses go to the workers for up to `wait` seconds, "
        "then on as a job (202 with the job, as POST /v1/jobs). `wait: 0` does not wait at all: 202 with "
        "the job at once, unless every text is a cache hit (then 200 with the vectors)."
    ),
    request=named(EmbedBatchRequestSerializer, "EmbedBatch"),
    responses={
        200: _ok(
            shape_serializer(EmbedBatchResponse),
            "vectors",
            {
                "embeddings": [EXAMPLE_VECTOR, EXAMPLE_VECTOR],
                "cached": [True, False],
                "model": "all-MiniLM-L6-v2",
                "dimensions": 384,
                "usage": {"prompt_tokens": 9, "total_tokens": 9},
            },
        ),
        202: JOB_ACCEPTED,
        **EMBED_ERRORS,
    },
    examples=[
        OpenApiExample("texts", request_only=True, value={"texts": ["first text", "second text"], "wait": 5}),
        OpenApiExample("a job unless cached", request_only=True, value={"texts": ["first text", "second text"], "wait": 0}),
        OpenApiExample("input, OpenAI's name for texts", request_only=True, value={"input": ["first text", "second text"]}),
    ],
)


def job_list_schema(filter_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="jobs_list",
        tags=["jobs"],
        summary="The tenant's jobs, newest first",
        parameters=[filter_serializer],
        responses={
            200: _ok(
                shape_serializer(JobList),
                "jobs",
                {"object": "list", "data": [JOB_EXAMPLE], "next_cursor": None, "has_more": False},
            ),
            **error_responses(400, 401, 403, 429),
        },
    )


job_create_schema = extend_schema(
    operation_id="jobs_create",
    tags=["jobs"],
    summary="Queue texts as a job",
    request=named(JobCreateRequestSerializer, "JobCreate"),
    responses={202: JOB_ACCEPTED, **error_responses(*DATA_PLANE_ERRORS, 404)},
    examples=[
        OpenApiExample(
            "job",
            request_only=True,
            value={
                "texts": ["first text", "second text", "third text"],
                "model": "all-MiniLM-L6-v2",
                "webhook_url": "https://example.com/hooks/embeddings",
            },
        )
    ],
)

job_detail_schema = extend_schema(
    operation_id="jobs_retrieve",
    tags=["jobs"],
    summary="A job's status and progress",
    parameters=[JOB_ID],
    responses={
        200: _ok(shape_serializer(Job), "job", JOB_EXAMPLE | {"status": "running", "done": 2}),
        **error_responses(401, 403, 404, 429),
    },
)

job_cancel_schema = extend_schema(
    operation_id="jobs_cancel",
    tags=["jobs"],
    summary="Cancel a job; queued work is dropped",
    parameters=[JOB_ID],
    request=None,
    responses={
        200: _ok(shape_serializer(Job), "cancelled", JOB_EXAMPLE | {"status": "cancelled"}),
        **error_responses(401, 403, 404, 429),
    },
)


def job_results_schema(filter_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="jobs_results",
        tags=["jobs"],
        summary="A job's vectors: a page (JSON) or all of them streamed (?format=jsonl)",
        parameters=[JOB_ID, filter_serializer],
        responses={
            (200, "application/json"): _ok(
                shape_serializer(JobResults),
                "page",
                {
                    "object": "list",
                    "job_id": EXAMPLE_JOB_ID,
                    "model": "all-MiniLM-L6-v2",
                    "total": 3,
                    "offset": 0,
                    "limit": 100,
                    "has_more": False,
                    "data": [{"index": 0, "embedding": EXAMPLE_VECTOR, "cached": False}],
                },
            ),
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description='With ?format=jsonl: one `{"index", "embedding", "cached"}` per line.'
            ),
            **error_responses(400, 401, 403, 404, 409, 429),
        },
    )


def cache_delete_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        request=named(input_serializer, "CacheDelete"),
        operation_id="cache_delete",
        tags=["cache"],
        summary="Delete your own cached embeddings (some texts, one model's, or all)",
        description=(
            "Deletes entries of your tenant's cache scope only (never the public scope). With `texts`: "
            "each text's entries as the embedding endpoints keyed them: the plain text and, for models "
            "with prompts, the text behind each prompt (only `input_type`'s when given), of `model` or of "
            "every model. Without `texts`: all your entries (of `model` only, when given). Needs a user "
            "session (JWT). No web process serves a deleted vector from memory afterwards."
        ),
        auth=JWT_ONLY,
        responses={
            200: _ok(CacheDeletedSerializer, "deleted", {"deleted": 2}),
            **error_responses(400, *MANAGEMENT_ERRORS, 413),
        },
        examples=[
            OpenApiExample("some texts", request_only=True,
                           value={"texts": ["hello world", "good night"], "model": "all-MiniLM-L6-v2"}),
            OpenApiExample("everything", request_only=True, value={}),
        ],
    )


model_list_schema = extend_schema(
    operation_id="models_list",
    tags=["models"],
    summary="The models you can use",
    description=(
        "The platform's models, then the operator's aliases (EMBED_MODEL_ALIASES: by default OpenAI's embedding "
        "model names stand for the default model, so clients' defaults work), each with `alias_of` naming the "
        "model that serves it, then your providers' default models (`<provider name>/<model>`)."
    ),
    responses={
        200: _ok(
            ModelListSerializer,
            "models",
            {
                "object": "list",
                "data": [
                    MODEL_EXAMPLE,
                    MODEL_EXAMPLE | {"id": "text-embedding-3-small", "alias_of": "all-MiniLM-L6-v2"},
                    {
                        "id": "myopenai/text-embedding-3-small",
                        "object": "model",
                        "dimensions": None,
                        "max_tokens": None,
                        "compute": "byok",
                        "kind": "embed",
                        "owned_by": "openai",
                        "version": "byok-7-3f9c2a1b0d4e5f60",
                        "alias_of": None,
                    },
                ],
            },
        ),
        **error_responses(401, 403),
    },
)

model_detail_schema = extend_schema(
    operation_id="models_retrieve",
    tags=["models"],
    summary="A model, with the workers serving it now and its queue depth",
    description=(
        "A local model: its settings, and the drain loops serving it as their last heartbeat said "
        "(backend, precision, device; `precision` and `backend` at the top are what most of them run), "
        "with the requests waiting for them. `<provider name>/<model>` of one of your providers: its "
        "byok entry (no workers, `queue_depth` null). An alias: the model it stands for, under the alias's id "
        "with `alias_of` naming that model. Any other id: 404 `model_not_found`."
    ),
    parameters=[OpenApiParameter("model_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                 description="The model's id, as GET /v1/models lists it.")],
    responses={
        200: _ok(
            ModelDetailSerializer,
            "model",
            MODEL_EXAMPLE | {
                "matryoshka_dims": [],
                "precision": "fp32",
                "backend": "onnx",
                "workers": [{"id": "worker-1-4242", "backend": "onnx", "precision": "fp32", "device": "cpu"}],
                "queue_depth": 0,
            },
        ),
        **error_responses(401, 403, 404),
    },
)


class RerankDocumentsFieldExtension(OpenApiSerializerFieldExtension):
    """/v1/rerank's `documents`: strings, or objects of string fields (Cohere's)."""

    target_class = "embeddings.serializers.RerankDocumentsField"

    def map_serializer_field(self, auto_schema: object, direction: str) -> dict:
        document = {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Ranked by `text`, or by the fields of rank_fields; answered as sent."}
        return {"type": "array", "items": {"anyOf": [_text_schema(), document]}, "minItems": 1,
                "maxItems": settings.MAX_INPUTS_PER_REQUEST,
                "description": "The documents to score: at most your tier's max_rerank_documents."}


def _rerank_schema(operation_id: str, summary: str) -> Callable[[F], F]:
    return extend_schema(
        operation_id=operation_id,
        tags=["rerank"],
        summary=summary,
        description=(
            "Scores each document against the query and answers them highest score first, `top_n` of them. With a "
            "reranker (kind rerank in GET /v1/models: a cross-encoder), relevance_score is the model's score for the "
            "pair, as sentence-transformers' CrossEncoder.predict gives it (the sigmoid of the logit for one-logit "
            "models); with an embedding model, the cosine similarity of the document's vector to the query's. "
            "Scores and vectors are cached per tenant like embeddings, so a repeated rerank needs no worker. Each "
            "document counts as a text in usage and quotas; at most the tier's max_rerank_documents per request."
        ),
        request=named(RerankRequestSerializer, "Rerank"),
        responses={
            200: _ok(
                shape_serializer(RerankResponse),
                "ranked",
                {
                    "id": "5b0e8f3c2f4e4a519c572b1f0b7d9e41",
                    "results": [{"index": 1, "relevance_score": 0.97, "document": None},
                                {"index": 0, "relevance_score": 0.12, "document": None}],
                    "model": "ms-marco-MiniLM-L-6-v2",
                    "usage": {"documents": 2, "cached_documents": 0, "total_tokens": 21},
                },
            ),
            **EMBED_ERRORS,
        },
        examples=[
            OpenApiExample("strings", request_only=True, value={
                "model": "ms-marco-MiniLM-L-6-v2", "query": "capital of France",
                "documents": ["Berlin is in Germany.", "Paris is the capital of France."], "top_n": 1}),
            OpenApiExample("objects", request_only=True, value={
                "model": "all-MiniLM-L6-v2", "query": "capital of France", "return_documents": True,
                "documents": [{"text": "Paris is the capital of France.", "id": "doc-7"}]}),
        ],
    )


rerank_schema = _rerank_schema("rerank", "Rerank documents against a query (Cohere's shape)")
rerank_v2_schema = _rerank_schema(
    "rerank_v2", "Rerank, where Cohere's v2 client sends it (cohere.ClientV2: the same body and answer)")
