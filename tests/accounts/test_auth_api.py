"""Sign-up, login, refresh and the JWT-only key endpoints, against real Postgres and Redis."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey, User

pytestmark = pytest.mark.django_db


def _signup(client: APIClient, email="dora@example.com", password="a long passphrase 42", **extra):
    return client.post("/v1/auth/signup", {"email": email, "password": password, **extra}, format="json")


def _login(client: APIClient, email="dora@example.com", password="a long passphrase 42"):
    return client.post("/v1/auth/login", {"email": email, "password": password}, format="json")


def test_it_signs_up_on_the_free_tier_with_a_first_key(tiers, redis_db):
    response = _signup(APIClient(), tenant_name="Dora's lab")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tier"] == "free"
    user = User.objects.get(pk=body["user_id"])
    assert user.tenant_id == body["tenant_id"] and user.tenant.name == "Dora's lab"
    assert body["api_key"].startswith("ep_")
    key = ApiKey.objects.get(tenant_id=body["tenant_id"])
    assert body["api_key"] not in key.key_hash  # stored as a hash only
    # the key works on the data plane (free tier: server models are refused with a hint)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['api_key']}")
    refused = client.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}, format="json")
    assert refused.status_code == 403
    assert "configure a provider" in refused.json()["error"]["message"]


def test_it_refuses_a_duplicate_email_with_409(tiers, redis_db):
    assert _signup(APIClient()).status_code == 201
    again = _signup(APIClient(), email="DORA@example.com")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "email_taken"
    assert User.objects.filter(email="dora@example.com").count() == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"email": "dora@example.com", "password": "short"}, "password"),
        ({"email": "dora@example.com", "password": "password123"}, "password"),  # common
        ({"email": "dora@example.com", "password": "12345678901234"}, "password"),  # numeric
        ({"email": "not-an-email", "password": "a long passphrase 42"}, "email"),
        ({"password": "a long passphrase 42"}, "email"),
        ({"email": "dora@example.com"}, "password"),
    ],
)
def test_it_explains_bad_signups(tiers, redis_db, body, param):
    response = APIClient().post("/v1/auth/signup", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert not User.objects.exists()


def test_it_logs_in_and_refreshes(tiers, redis_db):
    _signup(APIClient())
    response = _login(APIClient(), email="Dora@Example.com")
    assert response.status_code == 200, response.content
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert client.get("/v1/keys").status_code == 200

    refreshed = APIClient().post("/v1/auth/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    assert set(refreshed.json()) == {"access", "expires_in"}
    bad = APIClient().post("/v1/auth/refresh", {"refresh": "nope"}, format="json")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"


def test_it_refuses_a_wrong_password_and_a_bad_token(tiers, redis_db):
    _signup(APIClient())
    wrong = _login(APIClient(), password="not the password")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "Wrong email or password."
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer aaa.bbb.ccc")
    response = client.get("/v1/keys")
    assert response.status_code == 401
    assert "access token" in response.json()["error"]["message"]


def _login_from(ip: str, email="dora@example.com", password="a long passphrase 42"):
    return _login(APIClient(REMOTE_ADDR=ip), email=email, password=password)


def test_it_throttles_failed_logins_per_address_and_email_and_per_ip(tiers, redis_db, settings):
    settings.LOGIN_RATE_IP_EMAIL = "3/h"
    settings.LOGIN_RATE_IP = "6/h"
    _signup(APIClient())
    codes = [_login_from("10.0.0.1", password=f"guess {i}").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # even the right password is throttled from this address now: brute force gains nothing
    throttled = _login_from("10.0.0.1")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
    assert throttled["X-RateLimit-Remaining"] == "0" and int(throttled["X-RateLimit-Limit"]) == 3
    assert throttled.json()["error"]["code"] == "login_throttled"
    # the address as a whole: 6 attempts per hour, whatever the email
    codes = [_login_from("10.0.0.1", email=f"x{i}@example.com").status_code for i in range(2)]
    assert codes == [401, 429]
    assert _login_from("10.1.2.3", email="y@example.com", password="p").status_code == 401


def test_a_stranger_cannot_lock_the_owner_out(tiers, redis_db, settings):
    """GIVEN a stranger who knows dora's email and spends the per-(address, email) failures
    WHEN dora logs in from her own address THEN she gets in: only failures count, per address."""
    settings.LOGIN_RATE_IP_EMAIL = "3/h"
    _signup(APIClient())
    for i in range(5):
        _login_from("203.0.113.66", password=f"guess {i}")
    assert _login_from("203.0.113.66").status_code == 429
    assert _login_from("198.51.100.20").status_code == 200
    # and her successes never count against her
    assert [_login_from("198.51.100.20").status_code for _ in range(4)] == [200] * 4


def test_a_guessing_campaign_from_many_addresses_gets_one_guess_per_address(tiers, redis_db, settings):
    """Past LOGIN_RATE_EMAIL failures for an email, an address that has failed for it is refused,
    and a fresh address has one try: the owner with the right password gets in."""
    settings.LOGIN_RATE_IP_EMAIL = "5/h"
    settings.LOGIN_RATE_EMAIL = "3/h"
    _signup(APIClient())
    assert [_login_from(f"203.0.113.{i}", password="guess").status_code for i in range(3)] == [401] * 3
    assert _login_from("203.0.113.0", password="guess again").status_code == 429  # failed here before
    assert _login_from("203.0.113.50", password="guess").status_code == 401  # a fresh address: one try
    assert _login_from("203.0.113.50", password="guess 2").status_code == 429
    assert _login_from("198.51.100.20").status_code == 200  # the owner, from an address that never failed
    # a forged X-Forwarded-For does not make an address fresh
    forged = APIClient(REMOTE_ADDR="203.0.113.0", HTTP_X_FORWARDED_FOR="192.0.2.1")
    assert _login(forged, password="guess 3").status_code == 429


def test_an_api_key_cannot_manage_keys(alice, client_for, redis_db):
    client = client_for(alice)
    for response in (client.get("/v1/keys"), client.post("/v1/keys", {}, format="json"),
                     client.delete(f"/v1/keys/{alice.api_key.prefix}")):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "jwt_required"
    assert ApiKey.objects.filter(tenant=alice.tenant).count() == 1
    assert client_for().get("/v1/keys").status_code == 401


def test_keys_are_created_listed_and_revoked_at_once(alice, jwt_for, client_for, redis_db):
    session = jwt_for(alice)
    created = session.post("/v1/keys", {"name": "ci"}, format="json")
    assert created.status_code == 201
    new = created.json()
    assert new["name"] == "ci" and new["api_key"].startswith(f"ep_{new['prefix']}_")
    listed = session.get("/v1/keys").json()["data"]
    assert listed[0]["prefix"] == new["prefix"]
    assert all("api_key" not in k and "key_hash" not in k for k in listed)

    data_client = client_for(key=new["api_key"])
    assert data_client.get("/v1/models").status_code == 200
    assert session.delete(f"/v1/keys/{new['prefix']}").json()["revoked"] is True
    # the very next request fails: nothing about keys is cached
    assert data_client.get("/v1/models").status_code == 401
    again = session.delete(f"/v1/keys/{new['prefix']}")
    assert again.status_code == 200  # idempotent for the owner
    revoked = next(k for k in session.get("/v1/keys").json()["data"] if k["prefix"] == new["prefix"])
    assert revoked["revoked_at"] is not None


def test_bob_cannot_see_or_revoke_alices_keys(alice, bob, jwt_for, client_for, redis_db):
    response = jwt_for(bob).delete(f"/v1/keys/{alice.api_key.prefix}")
    assert response.status_code == 404
    assert client_for(alice).get("/v1/models").status_code == 200  # still alive
    bob_keys = [k["prefix"] for k in jwt_for(bob).get("/v1/keys").json()["data"]]
    assert alice.api_key.prefix not in bob_keys and bob_keys == [bob.api_key.prefix]
    assert jwt_for(bob).delete("/v1/keys/doesnotexist").status_code == 404


def test_last_used_at_is_kept_without_a_write_per_request(alice, client_for, redis_db, django_assert_max_num_queries):
    client = client_for(alice)
    client.get("/v1/models")
    alice.api_key.refresh_from_db()
    first = alice.api_key.last_used_at
    assert first is not None
    with django_assert_max_num_queries(1):  # the key lookup only, no UPDATE
        client.get("/v1/models")
    alice.api_key.refresh_from_db()
    assert alice.api_key.last_used_at == first


def test_the_webhook_secret_needs_a_jwt_and_is_per_tenant(alice, bob, jwt_for, client_for, redis_db):
    secret = jwt_for(alice).get("/v1/webhook-secret").json()["webhook_secret"]
    assert secret == alice.tenant.webhook_secret and len(secret) == 64
    assert secret != jwt_for(bob).get("/v1/webhook-secret").json()["webhook_secret"]
    assert client_for(alice).get("/v1/webhook-secret").status_code == 403


def test_the_webhook_secret_endpoint_describes_the_timestamped_signature(alice, jwt_for, redis_db):
    body = jwt_for(alice).get("/v1/webhook-secret").json()
    assert body["header"] == "X-Signature"
    assert body["algorithm"].startswith("t=<unix seconds>,v1=") and '"<t>.<raw body>"' in body["algorithm"]
