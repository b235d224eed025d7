import time

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from accounts import authcache
from accounts.authcache import key_cached
from accounts.models import ApiKey
from accounts.services import api_key_revoke

pytestmark = pytest.mark.django_db


def _error(response, status):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_it_accepts_a_valid_key(alice, client_for):
    assert client_for(alice).get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic abc", "Bearer sk-not-ours", "Bearer ep_aaaaaaaaaaaa_wrongsecret"],
)
def test_it_refuses_missing_or_bad_credentials(alice, client, header):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    error = _error(client.get("/v1/models", **kwargs), 401)
    assert error["type"] == "authentication_error"


def test_a_right_prefix_with_a_wrong_secret_fails(alice, client_for):
    forged = f"ep_{alice.api_key.prefix}_{'x' * 43}"
    _error(client_for(key=forged).get("/v1/models"), 401)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs"])  # a view that checks the epoch itself; the data plane
def test_a_revoked_key_fails_on_its_next_request(alice, client_for, redis_db, path):
    api = client_for(alice)
    assert api.get(path).status_code == 200
    assert key_cached(alice.api_key.prefix) is not None  # served from this process's key cache now
    api_key_revoke(tenant=alice.tenant, prefix=alice.api_key.prefix)
    _error(api.get(path), 401)


def test_an_admin_revocation_reaches_a_cached_key(alice, client_for, redis_db, admin_client):
    api = client_for(alice)
    assert api.get("/v1/jobs").status_code == 200
    response = admin_client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [alice.api_key.pk]})
    assert response.status_code == 302
    _error(api.get("/v1/jobs"), 401)


def test_a_tier_change_reaches_a_cached_key_at_once(alice, client_for, redis_db):
    api = client_for(alice)
    assert api.get("/v1/jobs")["X-RateLimit-Limit-Requests"] == "3000"
    tier = alice.tenant.tier
    tier.requests_per_minute = 7
    tier.save()
    assert api.get("/v1/jobs")["X-RateLimit-Limit-Requests"] == "7"


def test_a_cached_key_costs_no_query(alice, client_for, redis_db, django_assert_num_queries):
    api = client_for(alice)
    local_model = "/v1/models/all-MiniLM-L6-v2"  # a view of no SQL of its own (the list reads the providers)
    assert api.get(local_model).status_code == 200
    with django_assert_num_queries(0):
        assert api.get(local_model).status_code == 200


def test_a_flushed_redis_or_an_expired_entry_reloads_the_key(alice, client_for, redis_db, monkeypatch):
    """Out-of-band writes (raw SQL, a queryset .update()) send no invalidation: an entry lives at
    most AUTH_CACHE_SECONDS, and an emptied Redis gets a fresh epoch that matches no entry."""
    api = client_for(alice)
    assert api.get("/v1/models").status_code == 200
    ApiKey.objects.filter(pk=alice.api_key.pk).update(revoked_at=timezone.now())  # no signal, no bump
    assert api.get("/v1/models").status_code == 200  # still cached: the bound below is what limits this
    redis_db.flushdb()
    _error(api.get("/v1/models"), 401)

    ApiKey.objects.filter(pk=alice.api_key.pk).update(revoked_at=None)
    assert api.get("/v1/models").status_code == 200
    ApiKey.objects.filter(pk=alice.api_key.pk).update(revoked_at=timezone.now())
    later = time.monotonic() + settings.AUTH_CACHE_SECONDS + 1
    monkeypatch.setattr(authcache.time, "monotonic", lambda: later)
    _error(api.get("/v1/models"), 401)


def test_an_inactive_tenant_is_refused(alice, client_for):
    alice.tenant.is_active = False
    alice.tenant.save()
    _error(client_for(alice).get("/v1/models"), 401)


def test_keys_are_stored_hashed(alice):
    row = ApiKey.objects.get(pk=alice.api_key.pk)
    assert alice.key not in (row.key_hash, row.prefix)
    assert len(row.key_hash) == 64


def test_create_tenant_prints_a_working_key_last(tiers, client_for, capsys):
    call_command("create_tenant", "dora@example.com", "--tier", "paid")
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert key.startswith("ep_")
    assert client_for(key=key).get("/v1/models").status_code == 200


def test_create_tenant_refuses_an_unknown_tier(tiers):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown tier `gold`"):
        call_command("create_tenant", "eve@example.com", "--tier", "gold")


def test_a_revoked_key_fails_on_the_embedding_endpoints_even_with_a_bad_body(alice, client_for, redis_db):
    """The embedding endpoints check the epoch in their admission round trip; a request that
    fails before it (bad input) is checked in handle_exception: 401 either way, never 400."""
    api = client_for(alice)
    assert api.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": []}, format="json").status_code == 400
    api_key_revoke(tenant=alice.tenant, prefix=alice.api_key.prefix)
    _error(api.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": []}, format="json"), 401)
    _error(api.post("/v1/embed", {"text": "fine"}, format="json"), 401)
