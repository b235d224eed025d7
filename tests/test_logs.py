"""JSON logs with a request id that follows a request into Celery tasks; no secret is logged."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from contextlib import contextmanager

import pytest
from celery import shared_task
from celery.contrib.testing.worker import start_worker
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse

from embedplatform import logs
from embedplatform.celery import app as celery_app

MODEL = "all-MiniLM-L6-v2"


@contextmanager
def json_lines(level=logging.DEBUG):
    """Every record on the root logger, formatted exactly as production formats it (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    lines: list[dict] = []
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines() if line.strip())
        lines.append({"_raw": stream.getvalue()})


def raw(lines) -> str:
    return lines[-1]["_raw"]


def test_it_writes_one_json_object_per_line_with_the_request_id():
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    logs.request_id_set("req-1")
    try:
        logs.RequestIdFilter().filter(record)
    finally:
        logs.request_id_set(None)
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["message"] == "hello world"
    assert out["level"] == "WARNING" and out["logger"] == "x.y"
    assert out["request_id"] == "req-1"
    assert out["timestamp"].endswith("Z")


def test_it_echoes_a_valid_request_id_and_logs_it(client):
    with json_lines() as lines:
        r = client.get("/health/live", HTTP_X_REQUEST_ID="client-id_1.2")
    assert r["X-Request-ID"] == "client-id_1.2"
    access = [line for line in lines if line.get("logger") == "embedplatform.access"]
    assert access and access[0]["request_id"] == "client-id_1.2"
    assert access[0]["status"] == 200 and access[0]["path"] == "/health/live"


@pytest.mark.parametrize("sent", ["has space", "a" * 65, "semi;colon", "new\nline", ""])
def test_it_replaces_an_unsafe_request_id(client, sent):
    r = client.get("/health/live", HTTP_X_REQUEST_ID=sent)
    assert r["X-Request-ID"] != sent
    assert len(r["X-Request-ID"]) == 32 and int(r["X-Request-ID"], 16) >= 0


def test_each_request_gets_its_own_id_and_none_is_left_behind(client):
    first = client.get("/health/live")["X-Request-ID"]
    second = client.get("/health/live")["X-Request-ID"]
    assert first != second
    assert logs.request_id_get() is None  # cleared when the response closed


def test_the_drain_loop_logs_carry_the_request_ids_of_its_batch(alice, client_for, drainer):
    """The work item carries the request id to the drain loop thread, whose lines then name it."""
    ids: list[str | None] = []

    class Grab(logging.Handler):
        def emit(self, record):
            ids.append(getattr(record, "request_id", None))

    grab = Grab()
    grab.addFilter(logs.RequestIdFilter())
    runtime = drainer.runtimes[MODEL]
    original, calls = runtime.encode, []

    def fails_once(texts, **kw):  # a failing batch logs from inside the loop, then retries item by item
        calls.append(len(texts))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(texts, **kw)

    logging.getLogger("workers.drain").addHandler(grab)
    runtime.encode = fails_once
    try:
        r = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": f"rid {uuid.uuid4()}"},
                                   format="json", HTTP_X_REQUEST_ID="batch-rid-2")
    finally:
        runtime.encode = original
        logging.getLogger("workers.drain").removeHandler(grab)
    assert r.status_code == 200
    assert "batch-rid-2" in ids


# --- secrets -------------------------------------------------------------------------------

def _has_signup() -> bool:
    try:
        reverse("signup")
        return True
    except NoReverseMatch:
        return False


def test_no_key_password_or_token_is_ever_logged(alice, client_for, drainer, caplog):
    """GIVEN a real key, a bogus key, a signup and a login with a password (where those exist)
    WHEN the requests run with every logger at DEBUG
    THEN neither the records (caplog) nor the JSON lines contain any of the secrets."""
    caplog.set_level(logging.DEBUG)
    bogus = "ep_abcdefghijkl_" + "B0gusSecretPart" * 3
    password = "Sup3r-Secret-Passw0rd-" + uuid.uuid4().hex[:6]
    secrets = [alice.key, alice.key.split("_", 2)[2], bogus, "B0gusSecretPart", password]
    with json_lines() as lines:
        ok = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": "hello"}, format="json")
        assert ok.status_code == 200
        assert client_for(key=bogus).post("/v1/embeddings", {"model": MODEL, "input": "x"},
                                          format="json").status_code == 401
        assert client_for(key="not-even-a-key-" + "Z" * 20).get("/v1/models").status_code == 401
        if _has_signup():
            email = f"log-{uuid.uuid4().hex[:8]}@example.com"
            signup = client_for().post("/v1/auth/signup", {"email": email, "password": password}, format="json")
            assert signup.status_code in (201, 400, 429), signup.content
            if signup.status_code == 201:
                secrets.append(signup.json()["api_key"])
                login = client_for().post("/v1/auth/login", {"email": email, "password": password}, format="json")
                if login.status_code == 200:
                    secrets += [login.json()["access"], login.json()["refresh"]]
            client_for().post("/v1/auth/login", {"email": email, "password": password + "x"}, format="json")
    text = caplog.text + "\n" + raw(lines)
    assert any(line.get("logger") == "embedplatform.access" for line in lines[:-1])  # logging did run
    for secret in secrets:
        assert secret not in text, f"a secret reached the logs: {secret[:6]}..."


def test_the_formatters_mask_secret_shaped_text_anyway():
    key = "ep_abcdefghijkl_" + "S" * 40
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Authorization: Bearer %s password=%s", (key, "pw123456"),
                               None)
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        out = formatter.format(record)
        assert "S" * 40 not in out and "pw123456" not in out


# --- into Celery tasks -------------------------------------------------------------------

TASK_SAW: dict[str, str | None] = {}


@shared_task(name="tests.log_request_id")
def log_request_id_task(marker: str) -> None:
    TASK_SAW[marker] = logs.request_id_get()
    logging.getLogger("tests.task").warning("task ran %s", marker)


@pytest.fixture
def celery_worker(redis_db):
    """A real Celery worker in a thread of this process, on the tests' Redis broker."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="INFO", shutdown_timeout=10) as w:
        # The worker's setup_logging hook applied settings.LOGGING to this process: put pytest's back.
        root.handlers[:] = handlers
        root.setLevel(level)
        yield w


def test_the_request_id_follows_a_request_into_its_celery_task(celery_worker):
    records: list[logging.LogRecord] = []
    arrived = threading.Event()

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record)
            if record.getMessage().startswith("task ran"):
                arrived.set()

    grab = Grab()
    grab.addFilter(logs.RequestIdFilter())
    logging.getLogger().addHandler(grab)
    marker = uuid.uuid4().hex

    def view(request):
        log_request_id_task.delay(marker)
        return HttpResponse("queued")

    try:
        response = logs.RequestIdMiddleware(view)(RequestFactory().get("/x", HTTP_X_REQUEST_ID="from-the-api-7"))
        assert response["X-Request-ID"] == "from-the-api-7"
        assert arrived.wait(30), f"the task never logged (ran: {marker in TASK_SAW})"
    finally:
        logging.getLogger().removeHandler(grab)
        logs.request_id_set(None)
    assert TASK_SAW[marker] == "from-the-api-7"
    task_lines = [r for r in records if r.getMessage() == f"task ran {marker}"]
    assert task_lines[0].request_id == "from-the-api-7"
    assert task_lines[0].thread != threading.get_ident()  # logged by the worker, not by the test


def test_a_refusal_is_one_warning_not_an_error_per_request(alice, client_for, redis_db, caplog):
    """A 503 (no worker serves the model) during an outage is expected and retried: one WARNING
    naming the code, and no django.request ERROR (which would page someone for every request)."""
    with caplog.at_level(logging.WARNING):
        response = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": "x"}, format="json")
    assert response.status_code == 503 and response["Retry-After"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("no_worker" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
