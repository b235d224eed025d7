"""Domain errors and the one handler that turns every error into OpenAI's envelope.

Services raise the domain errors below (they know nothing of HTTP); `exception_handler`
(DRF's EXCEPTION_HANDLER) and the Django-level handlers map them, DRF's own exceptions
and anything unexpected to `{"error": {"message", "type", "param", "code"}}` with the
SPEC's status code. Message templates are constants so tests can assert exact text.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, TypeVar

import psycopg
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError, DataError, IntegrityError
from django.http import Http404, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)

MODEL_UNKNOWN = "The model `{model}` does not exist. GET /v1/models lists the models you can use."
MODEL_NOT_ALLOWED = "The model `{model}` is not available on your tier ({tier})."
SERVER_COMPUTE_REFUSED = (
    "Your tier ({tier}) does not include server compute for `{model}`: configure a provider "
    "(POST /v1/providers) and use `<provider name>/<model>`, or upgrade to a paid tier."
)
DIMENSIONS_OUT_OF_RANGE = "dimensions must be between 1 and {max} for model `{model}`; got {got}."
DIMENSIONS_NOT_MATRYOSHKA = (
    "dimensions must be one of {allowed} for model `{model}` (the widths it was trained to serve "
    "truncated: its Matryoshka dims and its full width); got {got}."
)
INPUT_TOO_LONG = (
    "input[{index}] has {tokens} tokens, over the {max} that `{model}` accepts; shorten it or "
    "send truncate=true to cut it."
)
WAIT_TIMED_OUT = "The embedding was not ready within {seconds:g} s; retry the request."
QUOTA_EXCEEDED = (
    "This request's {texts} texts would exceed your {period} quota of {limit} texts ({used} used); "
    "it resets at {reset} UTC. Send fewer texts, or upgrade your tier for more."
)
RATE_LIMITED = ("Too many requests: your tenant may send {limit} requests per minute (all its keys together); "
                "retry in {retry_after} s.")
TOO_MANY_IN_FLIGHT = (
    "Too many requests in flight: your tier ({tier}) may have {limit} requests waiting for vectors at once; "
    "retry when one has finished, or send bulk work to POST /v1/jobs."
)
WAIT_TOO_LONG = "wait is at most {max:g} seconds (SYNC_WAIT_MAX); send longer work to POST /v1/jobs."
BATCH_TOO_LARGE = "This request has {texts} texts; your tier ({tier}) allows at most {limit} per request."
LOGIN_THROTTLED = "Too many login attempts; retry in {retry_after} s."
SIGNUP_THROTTLED = "Too many sign-ups from your address; retry in {retry_after} s."
KEY_LIMIT = (
    "Your tier ({tier}) allows {limit} active API keys and you have {active}: revoke one with "
    "DELETE /v1/keys/{{prefix}}, or upgrade your tier."
)
NO_TENANT = "This user belongs to no tenant; sign up or use an API key."
JWT_REQUIRED = "Managing {what} needs a user session: send `Authorization: Bearer <access token>` from POST /v1/auth/login (an API key cannot)."
DEPENDENCY_DOWN = "The database or Redis is unavailable right now; retry shortly."
VALUE_REFUSED = "The request holds a value that cannot be stored; check its text fields for NUL characters."
MODEL_IS_RERANKER = ("The model `{model}` is a reranker: it scores query-document pairs and gives no embeddings. "
                     "Send it to POST /v1/rerank; GET /v1/models shows each model's kind.")
RERANK_TOO_MANY_DOCUMENTS = ("This request has {documents} documents; your tier ({tier}) allows at most {limit} per "
                             "rerank request.")
MODEL_NOT_RERANKER = "The model `{model}` is an embedding model, not a reranker."
WORKERS_UNAVAILABLE = "No worker is serving `{model}` right now; retry shortly."


class ApiError(Exception):
    """Base of every error a client may see. `param` names the offending field."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ApiError):
    status = 400


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotAllowed(ApiError):
    status = 403
    type = "permission_error"
    code = "not_allowed"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class _RetryAfter(ApiError):
    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(_RetryAfter):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    # Set only where the admission refused (accounts.quotas.admit): its QuotaState and RateState.
    quota: object
    rate: object


class Throttled(RateLimited):
    """A per-address or per-account throttle (login, sign-up) is spent. X-RateLimit-* describe
    the counter that refused: its limit, 0 remaining, and `reset_at` (unix time) when it ends."""

    def __init__(self, message: str, *, limit: int, reset_at: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit
        self.reset_at = reset_at

    def headers(self) -> dict[str, str]:
        return super().headers() | {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": "0",
                                    "X-RateLimit-Reset": str(self.reset_at)}


class QuotaExceeded(RateLimited):
    """A daily or monthly text quota is used up; Retry-After runs to the reset (hours away).

    `x-should-retry: false` tells the OpenAI SDKs not to retry it: they retry every 429 otherwise,
    and one that caps Retry-After falls back to its own short backoff, so it would only spend the
    tenant's requests per minute on refusals."""

    code = "quota_exceeded"

    def headers(self) -> dict[str, str]:
        return super().headers() | {"x-should-retry": "false"}


class Overloaded(_RetryAfter):
    status = 503
    type = "server_error"
    code = "overloaded"


class WaitTimeout(_RetryAfter):
    """The sync wait ran out (the work goes on: a retry may find it cached). Retry-After: 1, so
    clients that honour it (the OpenAI SDKs) come back at once rather than after their own backoff."""

    status = 504
    type = "timeout_error"
    code = "timeout"


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_DRF_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "not_allowed"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested ValidationError detail to the first message and its field path."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            key = "" if key == "non_field_errors" else str(key)
            sub = f"{path}.{key}" if path and key else (key or path)
            return _first_validation_error(value, sub)
    if isinstance(detail, list):
        for i, value in enumerate(detail):
            if isinstance(value, (dict, list)) and value:
                return _first_validation_error(value, f"{path}[{i}]" if isinstance(value, dict) else path)
            if not isinstance(value, (dict, list)):
                return path or None, str(value)
    return path or None, str(detail)


_Response = TypeVar("_Response", bound=HttpResponseBase)


def _logged(response: _Response) -> _Response:
    """Marks a 5xx that is a refusal, not a fault (503 overloaded / no worker / a dependency down,
    504 wait ran out), as logged: it was logged as a warning, and Django would log each one as an
    ERROR with the request (one per request through an outage drowns real errors)."""
    response._has_been_logged = True  # type: ignore[attr-defined]  # Django's own flag (django.utils.log)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if isinstance(exc, ApiError):
        body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code)
        response = Response(body, status=exc.status, headers=exc.headers())
        if exc.status >= 500:
            logger.warning("%s %s: %s", exc.status, exc.code, exc.message)
            return _logged(response)
        return response
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.ValidationError):
        param, message = _first_validation_error(exc.detail)
        text = f"{param}: {message}" if param else message
        return Response(error_body(text, type="invalid_request_error", param=param, code="invalid_value"), status=400)
    if isinstance(exc, drf.ParseError):
        return Response(error_body(str(exc.detail), type="invalid_request_error", code="invalid_json"), status=400)
    if isinstance(exc, drf.APIException):
        type_, code = _DRF_TYPES.get(exc.status_code, ("invalid_request_error", exc.default_code))
        headers = {}
        if auth_header := getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = auth_header
        if wait := getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(wait))
        return Response(error_body(str(exc.detail), type=type_, code=code), status=exc.status_code, headers=headers)
    mapped = dependency_error(exc, where=type(context.get("view")).__name__)
    if mapped is not None:
        body, status, headers = mapped
        return _logged(Response(body, status=status, headers=headers))
    # Anything else is a bug: log it with its traceback and answer with the envelope, no details.
    logger.exception("unhandled error in %s", context.get("view"))
    return Response(error_body("Internal server error.", type="server_error", code="internal_error"), status=500)


def dependency_error(exc: BaseException, *, where: str | None = None) -> tuple[dict, int, dict[str, str]] | None:
    """(body, status, headers) for an error of the database, Redis or the broker; None for any other.

    A value the database refuses (DataError: a NUL in a text, a number out of range) is the
    request's fault: 400, and retrying cannot help. Anything else from a dependency (connection
    refused or lost, a timeout, a restart, a failover) is 503 with Retry-After: the request may be
    retried. IntegrityError is neither: a broken invariant is a bug (500).
    """
    if isinstance(exc, (DataError, psycopg.DataError)):
        logger.warning("value refused by the database in %s: %s", where, exc.__class__.__name__)
        return error_body(VALUE_REFUSED, type="invalid_request_error", code="invalid_value"), 400, {}
    if isinstance(exc, (IntegrityError, psycopg.IntegrityError)):
        return None
    if isinstance(exc, (DatabaseError, psycopg.Error, RedisError, BrokerError)):
        # The broken database connection is dropped at the end of this request.
        logger.warning("dependency error in %s: %s", where, exc.__class__.__name__)
        return (error_body(DEPENDENCY_DOWN, type="server_error", code="dependency_unavailable"), 503,
                {"Retry-After": "2"})
    return None


NOT_UNDER_V1 = "No route for {path}: the API lives under /v1/ ({method} /v1{path}); a client's base URL ends in /v1."


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """404 in the envelope. A path that is an API route once /v1 is put before it (`/embeddings`: a
    client whose base URL lacks /v1) is told where the API lives."""
    message = f"No route for {request.path}."
    if not request.path.startswith("/v1/"):
        with contextlib.suppress(Resolver404):
            resolve("/v1" + request.path)
            message = NOT_UNDER_V1.format(path=request.path, method=request.method)
    return JsonResponse(error_body(message, type="invalid_request_error", code="not_found"), status=404)


def handler500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("Internal server error.", type="server_error", code="internal_error"), status=500)


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Bad request.", type="invalid_request_error"), status=400)


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Forbidden.", type="permission_error", code="not_allowed"), status=403)
