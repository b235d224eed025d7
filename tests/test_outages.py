"""A dependency that is down or unreachable is 503 + Retry-After in OpenAI's envelope, within the
client timeouts, on every path: authentication (API key and JWT), admission and the error
handling itself. Real failures, not mocks: a Redis URL or a database port where nothing listens
(connection refused), and a loopback port that listens but never accepts (a network partition:
the connect hangs until its timeout). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
import redis as redis_lib
from django.db import connection
from redis.exceptions import ConnectionError as RedisConnectionError

from embedplatform import redisconn

ENDPOINTS = [
    ("post", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "down"}),
    ("post", "/v1/jobs", {"texts": ["down"]}),
    ("get", "/v1/usage", None),
    ("get", "/v1/keys", None),
    ("get", "/v1/providers", None),
]
NEEDS_NO_REDIS_WITH_A_JWT = {"/v1/keys", "/v1/providers"}  # a JWT and Postgres are all they need


def _closed_port() -> int:
    """A loopback port where nothing listens: a connect is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def blackhole():
    """A loopback port that listens but never accepts: its one-place backlog is taken by a filler,
    so the kernel drops every further SYN and a connect hangs until the client's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    with socket.socket() as probe:
        probe.settimeout(0.2)
        with pytest.raises(OSError):
            probe.connect(("127.0.0.1", port))
    yield port
    filler.close()
    listener.close()


@pytest.fixture
def silent():
    """A loopback port that accepts connections (the kernel does) but never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def _redis_at(settings, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/{settings.TEST_REDIS_DB}"
    settings.REDIS_URL = url  # embedplatform/redisconn.py drops its clients on the change
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": url}}


@contextlib.contextmanager
def _database_at(port: int, connect_timeout: int | None = None):
    """Points the default connection at 127.0.0.1:`port` (reconnecting), then back."""
    saved = dict(connection.settings_dict)
    saved_options = dict(saved.get("OPTIONS") or {})
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    if connect_timeout is not None:
        connection.settings_dict["OPTIONS"] = {**saved_options, "connect_timeout": connect_timeout}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
        connection.settings_dict["OPTIONS"] = saved_options


def _client(kind, world, client_for, jwt_for):
    return client_for(world) if kind == "key" else jwt_for(world)


def _call(client, method, url, body):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def _assert_503(response):
    assert response.status_code == 503, (response.status_code, response.content)
    assert int(response["Retry-After"]) >= 1
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["code"] == "dependency_unavailable"


@pytest.mark.parametrize("kind", ["key", "jwt"])
@pytest.mark.parametrize(("method", "url", "body"), ENDPOINTS)
def test_redis_refusing_connections_is_503(alice, client_for, jwt_for, redis_db, settings, kind, method, url, body):
    client = _client(kind, alice, client_for, jwt_for)
    _redis_at(settings, _closed_port())
    response = _call(client, method, url, body)
    if kind == "jwt" and url in NEEDS_NO_REDIS_WITH_A_JWT:
        assert response.status_code == 200, response.content
        return
    _assert_503(response)


@pytest.mark.parametrize("kind", ["key", "jwt"])
@pytest.mark.parametrize(("method", "url", "body"), ENDPOINTS)
def test_a_database_refusing_connections_is_503(alice, client_for, jwt_for, redis_db, transactional_db, kind, method,
                                                url, body):
    client = _client(kind, alice, client_for, jwt_for)
    with _database_at(_closed_port()):
        response = _call(client, method, url, body)
    _assert_503(response)


@pytest.mark.django_db
def test_an_error_raised_outside_drfs_handler_is_still_503(alice, client_for, redis_db, monkeypatch):
    """The last line of defence (embedplatform/middleware.py): a dependency error that escapes the
    view itself, here from finalize_response, which runs after DRF's exception handling."""
    from embeddings.views import DataPlaneApi

    def down(self, request, response, *args, **kwargs):
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(DataPlaneApi, "finalize_response", down)
    _assert_503(client_for(alice).post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x"}, format="json"))


@pytest.mark.parametrize("kind", ["key", "jwt"])
@pytest.mark.django_db
def test_a_redis_that_never_accepts_fails_within_the_connect_timeout(alice, client_for, jwt_for, redis_db, settings,
                                                                      blackhole, kind):
    """One connect timeout, not one per Redis call the request would still make: with a JWT the
    admission meets it, and neither the request count after the error nor the quota headers try
    again."""
    client = _client(kind, alice, client_for, jwt_for)
    settings.REDIS_CONNECT_TIMEOUT = 1
    _redis_at(settings, blackhole)
    started = time.monotonic()
    response = client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "partition"}, format="json")
    elapsed = time.monotonic() - started
    _assert_503(response)
    assert elapsed < 1.9, elapsed


@pytest.mark.django_db
def test_a_redis_that_never_answers_fails_within_the_socket_timeout(alice, client_for, redis_db, settings, silent):
    client = client_for(alice)
    settings.REDIS_SOCKET_TIMEOUT = 0.5
    _redis_at(settings, silent)
    started = time.monotonic()
    response = client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "partition"}, format="json")
    elapsed = time.monotonic() - started
    _assert_503(response)
    assert elapsed < 3, elapsed


def test_the_redis_clients_have_connect_and_socket_timeouts(settings):
    kwargs = redisconn.redis_client().connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == settings.REDIS_CONNECT_TIMEOUT > 0
    assert kwargs["socket_timeout"] == settings.REDIS_SOCKET_TIMEOUT > settings.REDIS_CONNECT_TIMEOUT
    options = settings.CACHES["default"]["OPTIONS"]
    assert options["SOCKET_CONNECT_TIMEOUT"] == settings.REDIS_CONNECT_TIMEOUT
    assert options["SOCKET_TIMEOUT"] == settings.REDIS_SOCKET_TIMEOUT
    transport = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    assert transport["socket_connect_timeout"] == settings.REDIS_CONNECT_TIMEOUT
    assert transport["socket_timeout"] == settings.REDIS_SOCKET_TIMEOUT
    assert settings.DATABASES["default"]["OPTIONS"]["connect_timeout"] == settings.DATABASE_CONNECT_TIMEOUT > 0


@pytest.mark.django_db
def test_a_sync_wait_longer_than_the_socket_timeout_still_waits(alice, redis_db, settings):
    """BLPOP is sliced (dispatch/local.py): a wait of 1.5 s on a 0.5 s socket timeout ends as a
    WaitTimeout after its full wait, not as a Redis TimeoutError after 0.5 s."""
    from dispatch import local
    from embedplatform.errors import WaitTimeout
    from tests import handoff

    settings.REDIS_SOCKET_TIMEOUT = 0.5
    item = handoff.work_item(model="all-MiniLM-L6-v2", texts=["x"], keys=[b"k" * 32], scope=1, wait=1.5)
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        local.work_wait(item, wait=1.5, dims=384)
    assert 1.4 < time.monotonic() - started < 2.5


@pytest.mark.django_db
def test_a_reply_that_arrives_during_a_later_slice_is_taken(alice, redis_db, settings):
    import threading

    import numpy as np

    from dispatch import frames, local
    from tests import handoff

    settings.REDIS_SOCKET_TIMEOUT = 0.5
    item = handoff.work_item(model="all-MiniLM-L6-v2", texts=["x"], keys=[b"k" * 32], scope=1, wait=5)
    vector = np.arange(4, dtype=np.float32)
    timer = threading.Timer(1.2, frames.reply_send, args=(item.id, frames.reply_ok(np.array([3]), vector[None])))
    timer.start()
    try:
        tokens, vectors = local.work_wait(item, wait=5, dims=4)
    finally:
        timer.cancel()
    assert list(tokens) == [3] and vectors[0].tolist() == vector.tolist()


@pytest.mark.django_db(transaction=True)
def test_a_database_that_never_accepts_fails_within_the_connect_timeout(alice, jwt_for, redis_db, blackhole):
    client = jwt_for(alice)
    started = time.monotonic()
    with _database_at(blackhole, connect_timeout=2):  # libpq's smallest connect_timeout is 2 s
        response = client.get("/v1/usage")
    elapsed = time.monotonic() - started
    _assert_503(response)
    assert elapsed < 6, elapsed


def test_redis_clients_follow_a_settings_change(settings):
    first = redisconn.redis_client()
    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/{settings.TEST_REDIS_DB}"
    second = redisconn.redis_client()
    assert second is not first
    with pytest.raises(redis_lib.ConnectionError):
        second.ping()


@pytest.mark.django_db
def test_login_with_redis_down_is_503(alice, redis_db, settings, client):
    """The login throttle (django-ratelimit) counts in the Django cache, which is Redis."""
    _redis_at(settings, _closed_port())
    response = client.post("/v1/auth/login", {"email": "alice@example.com", "password": "correct horse battery"},
                           content_type="application/json")
    _assert_503(response)
