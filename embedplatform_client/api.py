"""The HTTP side of the client: one httpx connection pool, the platform's error envelope turned
into exceptions, and the retry policy.

Waited out: 503 (server overloaded or a dependency down) and lost connections, with exponential
backoff and jitter, honouring Retry-After; a 429 whose Retry-After is short (the tenant's
requests-per-minute window). Raised at once: a 429 for a spent text quota (its Retry-After is
hours away: `x-should-retry: false`, code quota_exceeded, or a wait over `max_wait`), 401 and
every other 4xx. This module imports nothing of the server: the client is a separate program.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"
RESULTS_PAGE = 1000  # the most GET /v1/jobs/{id}/results gives in one page

AUTH_HINT = "Pass --api-key or set EMBED_API_KEY to a key of your tenant (POST /v1/keys makes one)."


class ApiError(Exception):
    """The server refused a request (or could not be reached): `message` is the server's own."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class AuthError(ApiError):
    """401: no key, or a key the server does not know (revoked, mistyped)."""


class QuotaError(ApiError):
    """429 that retrying soon will not fix: the daily or monthly text quota is spent."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class TooLarge(ApiError):
    """413: the job has more texts (or bytes) than the tier or the server takes in one job."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error response, with the message of the OpenAI-shaped envelope."""
    try:
        error = response.json().get("error") or {}
        message, code = str(error.get("message") or ""), error.get("code")
    except (ValueError, AttributeError):
        message, code = "", None
    message = message or response.text[:300] or response.reason_phrase
    status = response.status_code
    if status == 401:
        return AuthError(f"The server refused the API key (401): {message} {AUTH_HINT}", status=status, code=code)
    if status == 413:
        return TooLarge(message, status=status, code=code)
    if status == 429:
        wait = _retry_after(response)
        when = f" Retry after {_human(wait)}." if wait is not None else ""
        return QuotaError(f"{message}{when}", status=status, code=code, retry_after=wait)
    return ApiError(f"{status}: {message}", status=status, code=code)


class EmbedClient:
    """A tenant's view of the platform's job API, over one keep-alive connection pool.

    `url` defaults to $EMBED_URL, then http://127.0.0.1:8000; `api_key` to $EMBED_API_KEY.
    Every method either returns the server's answer or raises ApiError (AuthError, QuotaError,
    TooLarge), after waiting out what is transient (module docstring). `sleep` is the pause
    between tries (tests pass a recorder).
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 8, max_wait: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = (url or os.environ.get("EMBED_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("EMBED_API_KEY") or ""
        if not key:
            raise AuthError(f"No API key. {AUTH_HINT}")
        self.max_retries = max_retries
        self.max_wait = max_wait
        self._sleep = sleep
        self._http = httpx.Client(base_url=f"{self.url}/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {key}", "User-Agent": "embedplatform-client"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the job API ------------------------------------------------------------------------

    def job_create(self, texts: list[str], *, model: str | None = None, dimensions: int | None = None) -> dict:
        """POST /v1/jobs: the job (202), its texts already counted against the quota.

        A connection that fails before the request was sent is tried again; one that fails after
        it is raised, since the job may exist (trying again could make a second one)."""
        body: dict[str, Any] = {"texts": texts}
        if model:
            body["model"] = model
        if dimensions:
            body["dimensions"] = dimensions
        return self._send("POST", "/jobs", json=body).json()

    def job_get(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}: status and progress (`done` of `total`)."""
        return self._send("GET", f"/jobs/{job_id}").json()

    def job_vectors(self, job_id: str, total: int) -> np.ndarray:
        """The results of a succeeded job as a float32 matrix, row i = text i, fetched in pages of
        base64 float32 (a quarter of the JSON floats' size)."""
        rows: np.ndarray | None = None
        for offset in range(0, total, RESULTS_PAGE):
            page = self._send("GET", f"/jobs/{job_id}/results",
                              params={"offset": offset, "limit": RESULTS_PAGE, "encoding_format": "base64"}).json()
            for item in page["data"]:
                vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
                if rows is None:
                    rows = np.empty((total, vector.shape[0]), dtype=np.float32)
                rows[item["index"]] = vector
        if rows is None:
            raise ApiError(f"job {job_id} returned no results")
        return rows

    # --- one request, with the retry policy ---------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            delay: float | None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # A POST is tried again only when it never left (the job would not exist).
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if (method != "GET" and sent) or attempt >= self.max_retries:
                    raise ApiError(f"Cannot reach {self.url}: {exc!r}") from exc
                delay = self._backoff(attempt)
            else:
                if response.status_code < 400:
                    return response
                error = error_from(response)
                delay = self._retry_delay(response, error, attempt, idempotent=method == "GET")
                if delay is None:
                    raise error
            attempt += 1
            self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _retry_delay(self, response: httpx.Response, error: ApiError, attempt: int, *,
                     idempotent: bool) -> float | None:
        """Seconds to wait before trying again, or None to raise `error` now. The server's 503
        refuses a request whole (nothing created); a 502/504 from a proxy in front of it may
        have passed the request on, so only a GET is tried again after one."""
        wait = _retry_after(response)
        if response.status_code == 429:
            spent = (error.code == "quota_exceeded" or response.headers.get("x-should-retry") == "false"
                     or (wait is not None and wait > self.max_wait))
            if spent or attempt >= self.max_retries * 4:  # the minute window opens again within a minute
                return None
            return wait if wait is not None else self._backoff(attempt)
        retried = (503, 502, 504) if idempotent else (503,)
        if response.status_code in retried and attempt < self.max_retries:
            return min(wait, self.max_wait) if wait is not None else self._backoff(attempt)
        return None
