"""A dependency that goes away answers 503 + Retry-After in the error envelope, not 500."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from embeddings import cache
from embedplatform import redisconn

pytestmark = pytest.mark.django_db


def _embed(client):
    return client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x"}, format="json")


def test_a_database_outage_is_503(alice, client_for, redis_db, monkeypatch):
    def down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(cache, "cache_lookup", down)
    response = _embed(client_for(alice))
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "dependency_unavailable"
    assert "server closed" not in response.content.decode()  # no internals in the answer


def test_a_redis_outage_is_503(alice, client_for, redis_db, monkeypatch):
    class Down:
        def __getattr__(self, name):
            raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(redisconn, "redis_client", lambda: Down())
    monkeypatch.setattr("accounts.quotas.redis_client", lambda: Down())
    response = _embed(client_for(alice))
    assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"
