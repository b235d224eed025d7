"""Liveness and readiness: db, broker, and a live worker for every served model."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils.log import log_response

from dispatch.keys import heartbeat_pattern
from embeddings.registry import model_specs
from embedplatform.celery import app as celery_app
from embedplatform.redisconn import redis_client

logger = logging.getLogger(__name__)


def check_db() -> str | None:
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"database unreachable: {exc.__class__.__name__}"


def check_broker() -> str | None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:
        return f"broker unreachable: {exc.__class__.__name__}"


def check_workers() -> dict[str, list[str]]:
    """Model name -> names of the workers whose heartbeat is fresh."""
    client = redis_client()
    found = {}
    for name in model_specs():
        keys = list(client.scan_iter(match=heartbeat_pattern(name), count=100))
        found[name] = sorted(k.decode().rsplit(":", 1)[-1] for k in keys)
    return found


def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def ready_state() -> tuple[int, dict]:
    """(200 or 503, body): every check run now. 503's `failing` names each failing part."""
    failing: dict[str, str] = {}
    for name, check in (("db", check_db), ("broker", check_broker)):
        problem = check()
        if problem:
            failing[name] = problem
    workers: dict[str, list[str]] = {}
    try:
        workers = check_workers()
        for model, names in workers.items():
            if not names:
                failing[f"workers:{model}"] = f"no live worker serves {model}"
    except Exception as exc:
        failing["redis"] = f"redis unreachable: {exc.__class__.__name__}"
    status = 503 if failing else 200
    return status, {"status": "fail" if failing else "ok", "failing": failing, "workers": workers}


class _ReadyCache:
    """The last ready_state() of this process, reused for HEALTH_CACHE_SECONDS.

    Load balancers and orchestrators probe every few seconds from several places; without
    this each probe costs a DB query, a broker connection and a Redis SCAN. One thread
    refreshes at a time; the others wait for it rather than running the checks too.
    """

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: tuple[int, dict] | None = None

    def get(self, max_age: float) -> tuple[int, dict]:
        with self._lock:
            now = self.clock()
            if self._value is None or self._at is None or now - self._at >= max_age:
                self._value = ready_state()
                self._at = self.clock()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = self._value = None


ready_cache = _ReadyCache()


def ready(request: HttpRequest) -> JsonResponse:
    status, body = ready_cache.get(settings.HEALTH_CACHE_SECONDS)
    response = JsonResponse(body, status=status)
    if status != 200:
        response["Retry-After"] = "5"
        # Not ready is a state that probes report (a worker still loading its model, say), not a
        # server error: a warning that names what fails, instead of Django's ERROR for any 5xx.
        log_response("Not ready: %s", "; ".join(body["failing"].values()), response=response, request=request,
                     level="warning")
    return response
