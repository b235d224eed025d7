"""Log lines as JSON, each with the id of the request it belongs to.

The request id comes from the client's X-Request-ID header (when it is short and plain) or
is made here. It lives in a contextvar: `RequestIdMiddleware` sets it for a web request,
workers/signals.py carries it in Celery task headers and sets it around a task, and the
drain loop sets the ids of the requests in a batch (waiting.WorkItem.rid). Every record
that passes `RequestIdFilter` gets `request_id`, so one grep follows a request from the
API into the workers.

Secrets: nothing here logs a body or a header other than X-Request-ID. As a second line
of defence both formatters mask anything shaped like one of our API keys, a Bearer token
or a JWT, wherever it appears in a line (a message, an exception, an `extra` field).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.core.signals import request_finished
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-ID"
QUIET_PATHS = ("/health/", "/metrics")
REQUEST_ID_MAX = 64
# Several ids joined by "," (a drain-loop batch) are cut to this length.
BATCH_IDS_MAX = 512

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_VALID_ID = re.compile(rf"^[A-Za-z0-9._-]{{1,{REQUEST_ID_MAX}}}$")

# What a secret looks like in a line, and what it becomes. Our API keys keep their public
# prefix (it is the key's id everywhere else), the secret part goes.
_SECRETS = [
    (re.compile(r"\b(ep_[a-z0-9]{12})_[A-Za-z0-9_-]{8,}"), r"\1_***"),
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-][A-Za-z0-9_.~+/=-]{7,}"), r"\1 ***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "***jwt***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
    # key=value and "key": "value" shapes, also inside an already JSON-escaped string.
    (re.compile(r"""(?i)((?:password|passwd|secret|secret_key|client_secret|api_key|apikey|encryption_key)"""
                r"""\\?["']?\s*[:=]\s*\\?["']?)[^\s"'\\,}&]+"""), r"\1***"),
]


def redact(line: str) -> str:
    """`line` with every secret-shaped substring masked."""
    for pattern, replacement in _SECRETS:
        line = pattern.sub(replacement, line)
    return line


def request_id_clean(value: str | None) -> str | None:
    """The client's request id if it is safe to log and echo (short, [A-Za-z0-9._-]), else None."""
    if value and _VALID_ID.match(value):
        return value
    return None


def request_id_new() -> str:
    return uuid.uuid4().hex


def request_id_get() -> str | None:
    return request_id_var.get()


def request_id_set(value: str | None) -> contextvars.Token:
    return request_id_var.set(value)


def batch_request_ids(ids: Iterable[str | None]) -> None:
    """Marks this thread's next log lines with the request ids of a batch (the drain loop)."""
    joined = ",".join(dict.fromkeys(i for i in ids if i))
    request_id_var.set(joined[:BATCH_IDS_MAX] or None)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (None outside a request or task) to every record; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, then extras."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", ["asctime", "levelname", "name", "message", "request_id"])
        kwargs.setdefault("rename_fields", {"asctime": "timestamp", "levelname": "level", "name": "logger"})
        kwargs.setdefault("json_ensure_ascii", False)
        kwargs.setdefault("json_default", str)
        super().__init__(*args, **kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # RFC 3339 in UTC with milliseconds: what log shippers parse without configuration.
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class TextFormatter(logging.Formatter):
    """The plain-text twin (LOG_FORMAT=text), with the same masking."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return redact(super().format(record))


class RequestIdMiddleware:
    """Gives every request an id: the client's X-Request-ID when valid, else a new one.

    The id is in `request.request_id`, in the logs of everything the request does (and of the
    Celery tasks it sends), and in the response's X-Request-ID header. It is cleared when the
    response is closed (`request_finished`), after Django's own request logging has run.
    One access line per request goes to the `embedplatform.access` logger: method, path
    (never the query string, which could hold a credential), status and duration.
    """

    access_logger = logging.getLogger("embedplatform.access")

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        request_finished.connect(request_finished_clear, dispatch_uid="embedplatform.logs.request_finished_clear")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id_clean(request.headers.get(REQUEST_ID_HEADER)) or request_id_new()
        request.request_id = rid  # type: ignore[attr-defined]  # a per-request attribute the stubs cannot know
        request_id_var.set(rid)
        started = time.perf_counter()
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        # Probes and scrapes come every few seconds: their lines are DEBUG, not INFO.
        level = logging.DEBUG if request.path.startswith(QUIET_PATHS) else logging.INFO
        self.access_logger.log(
            level, "%s %s %s", request.method, request.path, response.status_code,
            extra={"method": request.method, "path": request.path, "status": response.status_code,
                   "duration_ms": round((time.perf_counter() - started) * 1000, 2)},
        )
        return response


def request_finished_clear(**kwargs: Any) -> None:
    """`request_finished` receiver: the thread's next log lines belong to no request."""
    request_id_var.set(None)
