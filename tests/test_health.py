"""/health/live and /health/ready: a short-lived cache, and a 503 that names what fails."""

from __future__ import annotations

import pytest

from embeddings import health

MODEL = "all-MiniLM-L6-v2"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def checks(monkeypatch, settings):
    """Every dependency check replaced by a counter that answers what the test says."""
    settings.HEALTH_CACHE_SECONDS = 2.0
    state = {"db": None, "broker": None, "workers": {MODEL: ["w1"]}, "calls": 0}

    def db():
        state["calls"] += 1
        return state["db"]

    monkeypatch.setattr(health, "check_db", db)
    monkeypatch.setattr(health, "check_broker", lambda: state["broker"])
    monkeypatch.setattr(health, "check_workers", lambda: state["workers"])
    clock = Clock()
    monkeypatch.setattr(health.ready_cache, "clock", clock)
    health.ready_cache.clear()
    yield state, clock
    health.ready_cache.clear()


def test_live_answers_without_any_dependency(client):
    r = client.get("/health/live")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ready_is_answered_from_a_short_lived_cache(client, checks):
    state, clock = checks
    assert client.get("/health/ready").status_code == 200
    clock.now += 1.9
    assert client.get("/health/ready").status_code == 200
    assert state["calls"] == 1  # the second probe cost nothing
    state["db"] = "database unreachable: OperationalError"
    clock.now += 0.2  # now older than HEALTH_CACHE_SECONDS
    r = client.get("/health/ready")
    assert state["calls"] == 2
    assert r.status_code == 503


def test_a_503_names_every_failing_dependency(client, checks):
    state, _ = checks
    state["db"] = "database unreachable: OperationalError"
    state["broker"] = "broker unreachable: ConnectionRefusedError"
    state["workers"] = {MODEL: []}
    r = client.get("/health/ready")
    assert r.status_code == 503
    assert r["Retry-After"]
    body = r.json()
    assert body["status"] == "fail"
    assert set(body["failing"]) == {"db", "broker", f"workers:{MODEL}"}
    assert MODEL in body["failing"][f"workers:{MODEL}"]


def test_a_503_is_logged_as_a_warning_naming_what_fails_not_as_a_server_error(client, checks, caplog):
    state, _ = checks
    state["workers"] = {MODEL: []}
    with caplog.at_level("INFO", logger="django.request"):
        assert client.get("/health/ready").status_code == 503
    records = [r for r in caplog.records if r.name == "django.request"]
    assert [r.levelname for r in records] == ["WARNING"]
    assert f"no live worker serves {MODEL}" in records[0].getMessage()


def test_ready_names_the_live_workers_per_model(client, checks):
    r = client.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "failing": {}, "workers": {MODEL: ["w1"]}}


def test_a_zero_cache_runs_the_checks_every_time(client, checks, settings):
    state, _ = checks
    settings.HEALTH_CACHE_SECONDS = 0
    client.get("/health/ready")
    client.get("/health/ready")
    assert state["calls"] == 2


def test_ready_is_ok_against_the_real_dependencies(client, drainer):
    """db, broker and a live worker heartbeat: the real checks, no stubs."""
    health.ready_cache.clear()
    try:
        r = client.get("/health/ready")
    finally:
        health.ready_cache.clear()
    assert r.status_code == 200, r.json()
    assert r.json()["workers"][MODEL] == ["test-drainer"]
