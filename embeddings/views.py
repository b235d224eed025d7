from __future__ import annotations

import time

from django.conf import settings
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_tenant
from embeddings.encoding import vector_encode
from embeddings.registry import model_specs
from embeddings.serializers import EmbedBatchRequestSerializer, EmbeddingsRequestSerializer, EmbedRequestSerializer
from embeddings.services import EmbedOptions, EmbedResult, embed_texts

_OPTION_FIELDS = ("model", "normalize", "dimensions", "truncate", "input_type", "public")


def _embed(request: Request, data: dict, texts: list[str]) -> EmbedResult:
    options = EmbedOptions(**{f: data[f] for f in _OPTION_FIELDS})
    wait = data.get("wait") or settings.SYNC_WAIT_SECONDS
    return embed_texts(tenant=request_tenant(request), texts=texts, options=options, wait=wait)


class EmbeddingCreateApi(APIView):
    """POST /v1/embeddings: OpenAI's embeddings API, with a `cached` flag per item."""

    def post(self, request: Request) -> Response:
        serializer = EmbeddingsRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = _embed(request, data, data["input"])
        fmt = data["encoding_format"]
        return Response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector_encode(v, fmt), "cached": c}
                    for i, (v, c) in enumerate(zip(result.vectors, result.cached, strict=True))
                ],
                "model": result.model.name,
                "usage": {"prompt_tokens": result.total_tokens, "total_tokens": result.total_tokens},
            }
        )


class EmbedApi(APIView):
    """POST /v1/embed: one text, one vector."""

    def post(self, request: Request) -> Response:
        started = time.perf_counter()
        serializer = EmbedRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = _embed(request, data, [data["text"]])
        return Response(
            {
                "embedding": vector_encode(result.vectors[0], data["encoding_format"]),
                "model": result.model.name,
                "dimensions": int(result.vectors.shape[1]),
                "tokens": result.tokens[0],
                "cached": result.cached[0],
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )


class EmbedBatchApi(APIView):
    """POST /v1/embed/batch: many texts, vectors in input order, per-text `cached` flags."""

    def post(self, request: Request) -> Response:
        serializer = EmbedBatchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = _embed(request, data, data["texts"])
        fmt = data["encoding_format"]
        return Response(
            {
                "embeddings": [vector_encode(v, fmt) for v in result.vectors],
                "cached": result.cached,
                "model": result.model.name,
                "dimensions": int(result.vectors.shape[1]),
                "usage": {"prompt_tokens": result.total_tokens, "total_tokens": result.total_tokens},
            }
        )


class ModelListApi(APIView):
    """GET /v1/models: the served models (provider models join in with BYOK)."""

    def get(self, request: Request) -> Response:
        return Response(
            {
                "object": "list",
                "data": [
                    {"id": s.name, "object": "model", "dimensions": s.dims, "max_tokens": s.max_tokens,
                     "compute": "local", "owned_by": s.owned_by, "version": s.version}
                    for s in model_specs().values()
                ],
            }
        )
