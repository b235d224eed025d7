"""OpenAPI documentation of the accounts endpoints: summaries, examples, error answers. The request
and response definitions are the views' own (accounts/views.py, accounts/responses.py)."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import F, OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.serializers import Serializer

from accounts.responses import (
    ApiKeyCreatedSerializer,
    ApiKeyListSerializer,
    ApiKeyRevokedSerializer,
    LoginResponseSerializer,
    RefreshResponseSerializer,
    SignupResponseSerializer,
    UsageSerializer,
    WebhookSecretSerializer,
)
from embedplatform.errors import KEY_LIMIT, LOGIN_THROTTLED, SIGNUP_THROTTLED, error_body
from embedplatform.schemas import (
    ERROR_DOCS,
    JWT_ONLY,
    MANAGEMENT_ERRORS,
    PUBLIC_ERRORS,
    ErrorSerializer,
    error_responses,
    named,
)

EXAMPLE_KEY = "ep_3kQ9xZ1a.Jb7p2Yw0cVnT4sRk8dLq6mHf5gUe1iOa"
EXAMPLE_TIME = "2026-01-15T09:30:00Z"


def _error(code: int, description: str, **examples: dict) -> OpenApiResponse:
    """An error answer with its own description and examples (name -> envelope)."""
    return OpenApiResponse(
        ErrorSerializer,
        description=description,
        examples=[OpenApiExample(name, value=value, status_codes=[str(code)], response_only=True)
                  for name, value in examples.items()],
    )


def _throttled(what: str, message: str, code: str) -> OpenApiResponse:
    return _error(
        429,
        f"Too many {what} (accounts/throttles.py). Retry-After says when to retry; "
        "X-RateLimit-Limit is the spent counter's limit, X-RateLimit-Reset (unix time) its end.",
        throttled=error_body(message.format(retry_after=600), type="rate_limit_error", code=code),
    )


KEY_CREATE_403 = _error(
    403,
    "An API key cannot manage keys (jwt_required), or the tenant already has its tier's max_keys "
    "active keys (key_limit): revoke one with DELETE /v1/keys/{prefix}, or upgrade.",
    jwt_required=ERROR_DOCS[403][1],
    key_limit=error_body(KEY_LIMIT.format(tier="free", limit=5, active=5), type="permission_error", code="key_limit"),
)


def signup_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        request=named(input_serializer, "Signup"),
        operation_id="auth_signup",
        tags=["auth"],
        summary="Sign up: a free-tier tenant, its user and a first API key",
        responses={
            201: OpenApiResponse(
                SignupResponseSerializer,
                examples=[
                    OpenApiExample(
                        "signed up", value={"user_id": 7, "tenant_id": 5, "tier": "free", "api_key": EXAMPLE_KEY}
                    )
                ],
            ),
            **error_responses(*PUBLIC_ERRORS, 409),
            429: _throttled("sign-ups from this address", SIGNUP_THROTTLED, "signup_throttled"),
        },
        examples=[
            OpenApiExample(
                "sign up",
                request_only=True,
                value={"email": "ada@example.com", "password": "correct horse battery", "tenant_name": "Ada's lab"},
            )
        ],
    )


def login_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        request=named(input_serializer, "Login"),
        operation_id="auth_login",
        tags=["auth"],
        summary="Log in: email + password -> JWT access and refresh tokens",
        responses={
            200: OpenApiResponse(
                LoginResponseSerializer,
                examples=[
                    OpenApiExample(
                        "tokens",
                        value={
                            "access": "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjo3fQ.sig",
                            "refresh": "eyJhbGciOiJIUzI1NiJ9.eyJ0IjoxfQ.sig",
                            "token_type": "Bearer",
                            "expires_in": 900,
                        },
                    )
                ],
            ),
            **error_responses(400, 401, 413),
            429: _throttled("login attempts from this address, or failed ones for this email", LOGIN_THROTTLED, "login_throttled"),
        },
        examples=[
            OpenApiExample(
                "log in", request_only=True, value={"email": "ada@example.com", "password": "correct horse battery"}
            )
        ],
    )


def refresh_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        request=named(input_serializer, "Refresh"),
        operation_id="auth_refresh",
        tags=["auth"],
        summary="A new access token from a refresh token",
        responses={
            200: OpenApiResponse(
                RefreshResponseSerializer,
                examples=[
                    OpenApiExample(
                        "new access token",
                        value={"access": "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjo3fQ.sig", "expires_in": 900},
                    )
                ],
            ),
            **error_responses(400, 401, 413),
        },
    )


key_list_schema = extend_schema(
    operation_id="keys_list",
    tags=["keys"],
    summary="List the tenant's API keys (prefixes only)",
    auth=JWT_ONLY,
    responses={
        200: OpenApiResponse(
            ApiKeyListSerializer,
            examples=[
                OpenApiExample(
                    "keys",
                    value={
                        "object": "list",
                        "data": [
                            {
                                "id": 3,
                                "name": "prod",
                                "prefix": "ep_3kQ9xZ1a",
                                "created_at": EXAMPLE_TIME,
                                "last_used_at": EXAMPLE_TIME,
                                "revoked_at": None,
                            }
                        ],
                    },
                )
            ],
        ),
        **error_responses(*MANAGEMENT_ERRORS),
    },
)


def key_create_schema(input_serializer: type[Serializer]) -> Callable[[F], F]:
    return extend_schema(
        request=named(input_serializer, "ApiKeyCreate"),
        operation_id="keys_create",
        tags=["keys"],
        summary="Create an API key (the clear key is in this answer only)",
        auth=JWT_ONLY,
        responses={
            201: OpenApiResponse(
                ApiKeyCreatedSerializer,
                examples=[
                    OpenApiExample(
                        "new key",
                        value={
                            "id": 4,
                            "name": "ci",
                            "prefix": "ep_3kQ9xZ1a",
                            "created_at": EXAMPLE_TIME,
                            "api_key": EXAMPLE_KEY,
                        },
                    )
                ],
            ),
            **error_responses(400, *MANAGEMENT_ERRORS, 413),
            403: KEY_CREATE_403,
        },
        examples=[OpenApiExample("named key", request_only=True, value={"name": "ci"})],
    )


key_revoke_schema = extend_schema(
    operation_id="keys_revoke",
    tags=["keys"],
    summary="Revoke an API key; it fails on its very next request",
    auth=JWT_ONLY,
    parameters=[OpenApiParameter("prefix", str, OpenApiParameter.PATH, description="The key's prefix.")],
    responses={
        200: OpenApiResponse(
            ApiKeyRevokedSerializer,
            examples=[
                OpenApiExample("revoked", value={"revoked": True, "prefix": "ep_3kQ9xZ1a", "revoked_at": EXAMPLE_TIME})
            ],
        ),
        **error_responses(*MANAGEMENT_ERRORS, 404),
    },
)

usage_schema = extend_schema(
    operation_id="usage_retrieve",
    tags=["usage"],
    summary="Usage per day and model, totals and quota",
    parameters=[
        OpenApiParameter(
            "from",
            OpenApiTypes.DATE,
            OpenApiParameter.QUERY,
            required=False,
            description="First day, YYYY-MM-DD (default: the 1st of this UTC month).",
        ),
        OpenApiParameter(
            "to",
            OpenApiTypes.DATE,
            OpenApiParameter.QUERY,
            required=False,
            description="Last day, YYYY-MM-DD (default: today, UTC).",
        ),
    ],
    responses={
        200: OpenApiResponse(
            UsageSerializer,
            examples=[
                OpenApiExample(
                    "usage",
                    value={
                        "object": "usage",
                        "from": "2026-01-01",
                        "to": "2026-01-15",
                        "cache_hits": 120,
                        "cache_misses": 30,
                        "total_cached": 30,
                        "cache": {
                            "entries": 30,
                            "bytes": 46080,
                            "models": [{"model": "all-MiniLM-L6-v2", "entries": 30, "bytes": 46080}],
                            "limit_bytes": 268435456,
                            "full": False,
                        },
                        "today": {"texts": 10, "cache_hits": 8, "cache_misses": 2, "tokens": 64, "compute_ms": 12.5},
                        "month": {
                            "texts": 150,
                            "cache_hits": 120,
                            "cache_misses": 30,
                            "tokens": 980,
                            "compute_ms": 180.25,
                        },
                        "quota": {
                            "daily_limit": 50000,
                            "used_today": 10,
                            "monthly_limit": 1500000,
                            "used_month": 150,
                            "resets_at": "2026-01-16T00:00:00Z",
                        },
                        "data": [
                            {
                                "day": "2026-01-15",
                                "model": "all-MiniLM-L6-v2",
                                "cache_hits": 8,
                                "cache_misses": 2,
                                "tokens": 64,
                                "compute_ms": 12.5,
                            }
                        ],
                    },
                )
            ],
        ),
        **error_responses(400, 401, 403),
    },
)

webhook_secret_schema = extend_schema(
    operation_id="webhook_secret_retrieve",
    tags=["jobs"],
    summary="The secret that signs this tenant's job webhooks",
    auth=JWT_ONLY,
    responses={
        200: OpenApiResponse(
            WebhookSecretSerializer,
            examples=[
                OpenApiExample(
                    "secret",
                    value={
                        "webhook_secret": "whsec_9f2c4e7a1b3d5f60",
                        "header": "X-Signature",
                        "algorithm": 't=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>.<raw body>")>',
                    },
                )
            ],
        ),
        **error_responses(*MANAGEMENT_ERRORS),
    },
)
