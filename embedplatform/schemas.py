"""OpenAPI pieces shared by every app: the error envelope, the two bearer schemes, error responses.

Each answer's shape is defined once, where the view builds it (<app>/responses.py, see
embedplatform/responses.py); each app's schemas module adds the documentation (summaries,
examples, error answers) with `extend_schema`. Importing this module registers the
authentication extensions, so every app's schemas module imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema_serializer
from rest_framework import serializers

from embedplatform import errors

if TYPE_CHECKING:
    from drf_spectacular.openapi import AutoSchema


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField(help_text="What went wrong, and usually how to fix it.")
    type = serializers.CharField(
        help_text="invalid_request_error, authentication_error, permission_error, "
        "rate_limit_error, upstream_error, timeout_error or server_error."
    )
    param = serializers.CharField(allow_null=True, help_text="The offending field, where there is one.")
    code = serializers.CharField(allow_null=True, help_text="A stable machine-readable code.")


class ErrorSerializer(serializers.Serializer):
    """OpenAI's error envelope, used by every error answer."""

    error = ErrorDetailSerializer()


def _err(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return errors.error_body(message, type=type_, param=param, code=code)


# One description and example per status code the API answers with.
ERROR_DOCS: dict[int, tuple[str, dict]] = {
    400: (
        "Bad input: a missing or invalid field, or a body that is not JSON.",
        _err("input: This field is required.", "invalid_request_error", "invalid_value", "input"),
    ),
    401: (
        "No credentials, or a bad, revoked or expired API key / access token.",
        _err(
            "Invalid API key. Send `Authorization: Bearer <api key>` with a key from POST /v1/keys.",
            "authentication_error",
            "invalid_api_key",
        ),
    ),
    403: (
        "Not allowed for this tier or credential (an API key cannot manage keys or providers).",
        _err(errors.JWT_REQUIRED.format(what="API keys"), "permission_error", "jwt_required"),
    ),
    404: (
        "Not found, or not yours (another tenant's objects are never revealed).",
        _err("Not found.", "invalid_request_error", "not_found", "id"),
    ),
    409: (
        "Conflict: the email is taken (sign-up), or the job has not succeeded yet (results).",
        _err("The job is running; results are available once it succeeded.", "invalid_request_error", "conflict"),
    ),
    413: (
        "The request body is over the size limit.",
        _err("The request body is over the 8388608-byte limit.", "invalid_request_error", "payload_too_large"),
    ),
    429: (
        "Rate limit or quota spent, or too many of the tenant's sync requests in flight (code "
        "too_many_in_flight). Retry-After says when to retry; X-RateLimit-* carry the counters.",
        _err(errors.RATE_LIMITED.format(limit=60, retry_after=12), "rate_limit_error", "rate_limit_exceeded"),
    ),
    502: (
        "The BYOK provider failed; the message is the upstream's (never the secret).",
        _err("The provider `openai` answered 401: Incorrect API key provided.", "upstream_error", "provider_error"),
    ),
    503: (
        "Overloaded, or a dependency (broker, workers) is down. Retry-After says when to retry.",
        _err(errors.WORKERS_UNAVAILABLE.format(model="all-MiniLM-L6-v2"), "server_error", "overloaded"),
    ),
    504: (
        "The embedding was not ready in time.",
        _err(errors.WAIT_TIMED_OUT.format(seconds=30), "timeout_error", "timeout"),
    ),
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """`responses=` entries for the given error status codes, each the envelope with an example."""
    out = {}
    for code in codes:
        description, example = ERROR_DOCS[code]
        out[code] = OpenApiResponse(
            ErrorSerializer,
            description=description,
            examples=[OpenApiExample(f"error {code}", value=example, status_codes=[str(code)], response_only=True)],
        )
    return out


_Serializer = TypeVar("_Serializer", bound=type[serializers.BaseSerializer])


def named(serializer_class: _Serializer, name: str) -> _Serializer:
    """The serializer as component `name` (several views nest a class called `InputSerializer`).

    With COMPONENT_SPLIT_REQUEST the request body component is `<name>Request`.
    """
    return extend_schema_serializer(component_name=name)(serializer_class)


# The error sets the endpoints share.
PUBLIC_ERRORS = (400, 413, 429)  # sign-up / login / refresh (no credentials needed)
MANAGEMENT_ERRORS = (401, 403)  # JWT-only endpoints
DATA_PLANE_ERRORS = (400, 401, 403, 413, 429, 503)


class ApiKeyAuthScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key",
            "description": "`Authorization: Bearer <api key>`: the key from sign-up or POST /v1/keys.",
        }


class JwtAuthScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.JwtAuthentication"
    name = "JWTAuth"
    priority = 1  # ahead of drf-spectacular's own simplejwt extension (a base class of ours)

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <access token>` from POST /v1/auth/login. "
            "Needed to manage API keys and providers.",
        }


# Security requirement objects, which extend_schema(auth=...) takes though its annotation says Sequence[str].
JWT_ONLY: list[Any] = [{"JWTAuth": []}]

_RATE_HEADERS = {
    "X-RateLimit-Limit": "Texts per day on the tenant's tier.",
    "X-RateLimit-Remaining": "Texts left today (also within the monthly quota).",
    "X-RateLimit-Reset": "Unix time of the next daily reset (midnight UTC).",
}
_JSON_ONLY_BODIES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def _json(schema: dict, description: str, example: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema, "example": example}}}


_READY_SCHEMA = {
    "type": "object",
    "required": ["status", "failing", "workers"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "fail"]},
        "failing": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Each failing part (db, broker, workers:<model>) and why.",
        },
        "workers": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "Model -> the workers serving it now.",
        },
    },
}
# /health/* are plain Django views (no DRF), so drf-spectacular does not see them.
HEALTH_PATHS = {
    "/health/live": {
        "get": {
            "operationId": "health_live",
            "tags": ["health"],
            "summary": "The process is up",
            "security": [],
            "responses": {
                "200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "Up.", {"status": "ok"})
            },
        }
    },
    "/health/ready": {
        "get": {
            "operationId": "health_ready",
            "tags": ["health"],
            "security": [],
            "summary": "Database, broker and a worker for every served model",
            "responses": {
                "200": _json(
                    _READY_SCHEMA,
                    "Ready.",
                    {"status": "ok", "failing": {}, "workers": {"all-MiniLM-L6-v2": ["gpu0@host"]}},
                ),
                "503": _json(
                    _READY_SCHEMA,
                    "Not ready: `failing` names what fails.",
                    {
                        "status": "fail",
                        "failing": {"workers:all-MiniLM-L6-v2": "no live worker"},
                        "workers": {"all-MiniLM-L6-v2": []},
                    },
                ),
            },
        }
    },
}


def postprocess_schema(result: dict[str, Any], generator: object, request: object, public: bool) -> dict[str, Any]:
    """The health paths, response headers drf-spectacular has no decorator for, JSON-only bodies.

    The API parses `curl -d` bodies (form content type), text/plain and unlabelled bodies as JSON
    too, but documents JSON only. A quota 429 also says `x-should-retry: false`.
    """
    result.setdefault("paths", {}).update(HEALTH_PATHS)
    int_schema = {"type": "integer"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            content = (operation.get("requestBody") or {}).get("content", {})
            for media in _JSON_ONLY_BODIES:
                if media in content and len(content) > 1:
                    del content[media]
            responses = operation.get("responses", {})
            if "429" in responses:
                headers = responses["429"].setdefault("headers", {})
                headers["Retry-After"] = {"schema": int_schema, "description": "Seconds until a retry can succeed."}
                for name, text in _RATE_HEADERS.items():
                    headers[name] = {"schema": int_schema, "description": text}
                headers["x-should-retry"] = {
                    "schema": {"type": "string", "enum": ["false"]},
                    "description": "On a quota refusal (code quota_exceeded: the daily or monthly quota is spent "
                                   "until Retry-After): do not retry. The OpenAI SDKs honour it.",
                }
            if "503" in responses:
                responses["503"].setdefault("headers", {})["Retry-After"] = {
                    "schema": int_schema,
                    "description": "Seconds to wait before retrying.",
                }
            if "202" in responses:
                responses["202"].setdefault("headers", {})["Location"] = {
                    "schema": {"type": "string"},
                    "description": "The job's status URL.",
                }
    return result
