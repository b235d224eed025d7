"""OpenAPI documentation of the BYOK provider endpoints (all need a JWT): summaries, examples, error
answers. The request and response definitions are the views' own (providers/views.py,
providers/responses.py)."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.utils import F, OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.serializers import BaseSerializer, Serializer

from embedplatform.schemas import JWT_ONLY, MANAGEMENT_ERRORS, error_responses, named
from providers.responses import (
    ProviderDeletedSerializer,
    ProviderListSerializer,
    ProviderSerializer,
    ProviderTestResultSerializer,
)

PROVIDER_EXAMPLE = {
    "id": 2,
    "name": "openai",
    "preset": "openai",
    "kind": "embed",
    "endpoint": "https://api.openai.com/v1/embeddings",
    "request_template": {"input": "{{texts}}", "model": "{{model}}"},
    "response_path": "$.data[*].embedding",
    "index_path": "",
    "headers": {"Authorization": "Bearer {{api_key}}"},
    "model": "text-embedding-3-small",
    "max_inputs": 256,
    "api_key_mask": "sk-...wxyz",
    "models": ["openai/text-embedding-3-small"],
    "created_at": "2026-01-15T09:30:00Z",
    "updated_at": "2026-01-15T09:30:00Z",
}
PROVIDER_ID = OpenApiParameter("provider_id", int, OpenApiParameter.PATH, description="The provider's id.")


def _ok(serializer: type[BaseSerializer], name: str, value: dict, status: int = 200) -> OpenApiResponse:
    return OpenApiResponse(
        serializer, examples=[OpenApiExample(name, value=value, status_codes=[str(status)], response_only=True)]
    )


provider_list_schema = extend_schema(
    operation_id="providers_list",
    tags=["providers"],
    summary="The tenant's providers (secrets masked)",
    auth=JWT_ONLY,
    responses={
        200: _ok(ProviderListSerializer, "providers", {"object": "list", "data": [PROVIDER_EXAMPLE]}),
        **error_responses(*MANAGEMENT_ERRORS),
    },
)


def provider_create_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="providers_create",
        tags=["providers"],
        summary="Add a BYOK provider (preset or custom)",
        description=(
            "Embedding presets: openai, azure-openai, cohere, voyage, mistral, jina; rerank presets (kind rerank, "
            "served by POST /v1/rerank): cohere-rerank, jina-rerank, voyage-rerank. A custom provider of kind rerank "
            'takes a request_template with `"{{query}}"` and `"{{documents}}"`, a response_path to the relevance '
            "scores and an index_path to each score's document index (blank: the scores come in document order)."
        ),
        auth=JWT_ONLY,
        request=named(input_serializer, "Provider"),
        responses={
            201: _ok(ProviderSerializer, "created", PROVIDER_EXAMPLE, 201),
            **error_responses(400, *MANAGEMENT_ERRORS, 413),
        },
        examples=[
            OpenApiExample(
                "preset",
                request_only=True,
                value={"name": "openai", "preset": "openai", "api_key": "sk-...", "model": "text-embedding-3-small"},
            ),
            OpenApiExample(
                "custom",
                request_only=True,
                value={
                    "name": "mine",
                    "preset": "custom",
                    "endpoint": "https://embed.example.com/v1/embed",
                    "request_template": {"texts": "{{texts}}", "model": "{{model}}"},
                    "response_path": "$.vectors[*]",
                    "api_key": "secret",
                    "model": "e5-large",
                },
            ),
            OpenApiExample(
                "rerank preset",
                request_only=True,
                value={"name": "cohere-rr", "preset": "cohere-rerank", "api_key": "...", "model": "rerank-v3.5"},
            ),
        ],
    )


provider_detail_schema = extend_schema(
    operation_id="providers_retrieve",
    tags=["providers"],
    summary="One provider (secret masked)",
    auth=JWT_ONLY,
    parameters=[PROVIDER_ID],
    responses={
        200: _ok(ProviderSerializer, "provider", PROVIDER_EXAMPLE),
        **error_responses(*MANAGEMENT_ERRORS, 404),
    },
)


API_KEY_AGAIN_EXAMPLE = {
    "error": {
        "message": "api_key: changing endpoint decides where or how the stored API key is sent, so send the api_key "
                   'again in the same request (or "" to remove it).',
        "type": "invalid_request_error",
        "param": "api_key",
        "code": "api_key_required",
    }
}


def provider_update_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    errors = error_responses(400, *MANAGEMENT_ERRORS, 404, 413)
    errors[400] = OpenApiResponse(
        errors[400].response,
        description=(
            f"{errors[400].description} A change of endpoint, preset, request_template or headers without the "
            "api_key in the same request is refused (param api_key, code api_key_required), and so is one of "
            "endpoint, preset or request_template that would carry a stored secret header value not sent again "
            "in clear (param headers, code headers_required): stored secrets never move to a new place."
        ),
        examples=[*errors[400].examples,
                  OpenApiExample("api_key required", value=API_KEY_AGAIN_EXAMPLE, status_codes=["400"],
                                 response_only=True)],
    )
    return extend_schema(
        operation_id="providers_update",
        tags=["providers"],
        summary="Change some fields of a provider",
        description=(
            "Only the fields sent change. Header values other than an `{{api_key}}` template are secrets: "
            "shown masked, and a mask sent back keeps the stored value. Changing where or how the upstream "
            "key is sent (endpoint, preset, request_template, headers) needs the api_key again."
        ),
        auth=JWT_ONLY,
        parameters=[PROVIDER_ID],
        request=named(input_serializer, "Provider"),
        responses={
            200: _ok(ProviderSerializer, "updated", PROVIDER_EXAMPLE),
            **errors,
        },
        examples=[
            OpenApiExample("new key", request_only=True, value={"api_key": "sk-new..."}),
            OpenApiExample("new endpoint", request_only=True,
                           value={"endpoint": "https://embed.example.com/v2/embed", "api_key": "sk-..."}),
        ],
    )


provider_delete_schema = extend_schema(
    operation_id="providers_delete",
    tags=["providers"],
    summary="Delete a provider",
    auth=JWT_ONLY,
    parameters=[PROVIDER_ID],
    responses={
        200: _ok(ProviderDeletedSerializer, "deleted", {"id": 2, "deleted": True}),
        **error_responses(*MANAGEMENT_ERRORS, 404),
    },
)


def provider_test_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        operation_id="providers_test",
        tags=["providers"],
        summary="One tiny real upstream call; 200 either way, with `ok` and what failed",
        description="The call, retries included, ends within PROVIDER_TEST_TIMEOUT_SECONDS (5 s by default; then "
                    "`ok: false`, `status: 504`). Each tenant may test PROVIDER_TEST_RATE times (10/m by default): "
                    "past it 429 with Retry-After.",
        auth=JWT_ONLY,
        parameters=[PROVIDER_ID],
        request=named(input_serializer, "ProviderTest"),
        responses={
            200: _ok(
                ProviderTestResultSerializer,
                "works",
                {
                    "ok": True,
                    "model": "text-embedding-3-small",
                    "dimensions": 1536,
                    "latency_ms": 212.4,
                    "status": 200,
                    "error": None,
                },
            ),
            **error_responses(400, *MANAGEMENT_ERRORS, 404, 413, 429, 503),
        },
    )
