"""BYOK fixtures: the fake upstream (tests/fakes/provider_server.py), JWT clients, and a real
Celery worker on the provider queue running in this process (threads pool, like production)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import PROVIDER_SECRET
from tests.fakes.provider_server import FakeProvider

SECRET = PROVIDER_SECRET  # the key the fake expects, and ProviderFactory's


@pytest.fixture(scope="session")
def fake_server():
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture
def fake(fake_server, settings) -> FakeProvider:
    """The fake, reset, allow-listed (it is on 127.0.0.1 over http), with quick retry settings."""
    fake_server.reset()
    fake_server.expected_key = SECRET
    settings.PROVIDER_ALLOWED_HOSTS = [fake_server.host]
    settings.PROVIDER_MAX_BACKOFF_SECONDS = 3.0
    settings.PROVIDER_TIMEOUT_SECONDS = 5.0
    return fake_server


@pytest.fixture
def jwt_client():
    """A client logged in as the world's user with a JWT access token."""
    from rest_framework_simplejwt.tokens import AccessToken

    def make(world) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(world.tenant.users.first())}")
        return client

    return make


@pytest.fixture(scope="module")
def provider_worker(django_db_setup):
    """A real Celery worker consuming the provider queue in a thread of this process (not eager).

    Module-scoped: it stops before other test modules start their own in-process workers
    (two in one process share Celery's global worker state)."""
    from celery.contrib.testing.worker import start_worker

    from dispatch.keys import PROVIDER_QUEUE
    from embedplatform.celery import app

    try:
        with start_worker(app, pool="threads", concurrency=4, queues=[PROVIDER_QUEUE], perform_ping_check=False,
                          loglevel="WARNING", shutdown_timeout=20) as worker:
            yield worker
    finally:
        # `queues=` narrowed the app's own queue selection (app.amqp.queues.select): reset it, or
        # the next in-process worker of the session would consume the provider queue only.
        del app.amqp.queues


def openai_body(fake: FakeProvider, name: str = "myopenai", **extra) -> dict:
    """POST /v1/providers body for the openai preset pointed at the fake."""
    return {"name": name, "preset": "openai", "endpoint": fake.url(), "api_key": SECRET, **extra}
