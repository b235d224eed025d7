"""Liveness and readiness: db, broker, and a live worker for every served model."""

from __future__ import annotations

import logging

from django.db import connection
from django.http import JsonResponse

from embeddings.registry import model_specs
from embeddings.waiting import redis_client
from embedplatform.celery import app as celery_app
from workers.queues import heartbeat_pattern

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


def live(request):
    return JsonResponse({"status": "ok"})


def ready(request):
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
    body = {"status": "fail" if failing else "ok", "failing": failing, "workers": workers}
    response = JsonResponse(body, status=status)
    if failing:
        response["Retry-After"] = "5"
    return response
