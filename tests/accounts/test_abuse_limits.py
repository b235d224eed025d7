"""Limits per tenant and per client address (issue 16, part 2): the active-key cap, the sign-up
and admin-login throttles, and the client address behind TRUSTED_PROXIES, through HTTP."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "a long passphrase 42"


def _signup(ip: str, email: str, **extra):
    client = APIClient(REMOTE_ADDR=ip, **extra)
    return client.post("/v1/auth/signup", {"email": email, "password": PASSWORD}, format="json")


def _assert_throttled(response, code: str):
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    assert int(response["X-RateLimit-Limit"]) >= 1 and response["X-RateLimit-Remaining"] == "0"
    assert int(response["X-RateLimit-Reset"]) >= int(time.time())
    assert response.json()["error"]["code"] == code


# --- active API keys per tenant --------------------------------------------------------------

def test_a_tenant_cannot_hold_more_active_keys_than_its_tier_allows(charlie, jwt_for, client_for, redis_db):
    """GIVEN charlie on free (max_keys 5) with one key WHEN he makes keys THEN the sixth active
    one is a 403 naming the cap and the way out; revoking one makes room again."""
    assert charlie.tenant.tier.max_keys == 5
    session = jwt_for(charlie)
    made = [session.post("/v1/keys", {"name": f"k{i}"}, format="json") for i in range(4)]
    assert [r.status_code for r in made] == [201] * 4
    refused = session.post("/v1/keys", {"name": "one too many"}, format="json")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "key_limit" and error["type"] == "permission_error"
    assert "allows 5 active API keys" in error["message"] and "DELETE /v1/keys/{prefix}" in error["message"]
    assert "upgrade" in error["message"]
    assert ApiKey.objects.filter(tenant=charlie.tenant, revoked_at__isnull=True).count() == 5
    # every key still works; a revoked key frees a slot
    assert client_for(key=made[0].json()["api_key"]).get("/v1/models").status_code == 200
    assert session.delete(f"/v1/keys/{made[0].json()['prefix']}").status_code == 200
    assert session.post("/v1/keys", {"name": "again"}, format="json").status_code == 201
    assert session.post("/v1/keys", {"name": "and over"}, format="json").status_code == 403


def test_the_sign_up_key_counts_toward_the_cap(tiers, redis_db):
    assert _signup("10.0.0.1", "erin@example.com").status_code == 201
    login = APIClient().post("/v1/auth/login", {"email": "erin@example.com", "password": PASSWORD}, format="json")
    session = APIClient()
    session.credentials(HTTP_AUTHORIZATION=f"Bearer {login.json()['access']}")
    codes = [session.post("/v1/keys", {}, format="json").status_code for _ in range(5)]
    assert codes == [201, 201, 201, 201, 403]  # 1 from sign-up + 4 = free's 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_key_creation_cannot_overshoot_the_cap(charlie, jwt_for, redis_db):
    """Ten POST /v1/keys at once for a tenant with 1 of 5 keys: exactly 4 are made."""
    token = jwt_for(charlie)._credentials["HTTP_AUTHORIZATION"]
    codes: list[int] = []
    barrier = threading.Barrier(10)

    def post():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=token)
        barrier.wait()
        try:
            codes.append(client.post("/v1/keys", {}, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] * 4 + [403] * 6
    assert ApiKey.objects.filter(tenant=charlie.tenant, revoked_at__isnull=True).count() == 5


# --- sign-up per client address --------------------------------------------------------------

def test_sign_up_is_throttled_per_client_address(tiers, redis_db, settings):
    settings.SIGNUP_RATE_IP = "2/h"
    assert [_signup("10.0.0.1", f"u{i}@example.com").status_code for i in range(2)] == [201, 201]
    refused = _signup("10.0.0.1", "u2@example.com")
    _assert_throttled(refused, "signup_throttled")
    assert not User.objects.filter(email="u2@example.com").exists()
    # a forged X-Forwarded-For from a peer that is not a trusted proxy changes nothing
    _assert_throttled(_signup("10.0.0.1", "u3@example.com", HTTP_X_FORWARDED_FOR="203.0.113.9"), "signup_throttled")
    # another address has its own budget
    assert _signup("10.0.0.2", "u4@example.com").status_code == 201


def test_behind_a_trusted_proxy_the_forwarded_address_counts(tiers, redis_db, settings):
    settings.SIGNUP_RATE_IP = "1/h"
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    proxy = "10.0.0.254"
    assert _signup(proxy, "a@example.com", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 201
    # the client cannot escape its bucket by prepending addresses: the proxy appended the real one
    _assert_throttled(_signup(proxy, "b@example.com", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.7"),
                      "signup_throttled")
    # two proxies deep: the right-most untrusted entry is the client
    _assert_throttled(_signup(proxy, "c@example.com", HTTP_X_FORWARDED_FOR="203.0.113.7, 10.0.0.3"),
                      "signup_throttled")
    # other clients behind the same proxy are not throttled by 203.0.113.7's sign-up
    assert _signup(proxy, "d@example.com", HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 201


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.4", "", [], "198.51.100.4"),
        ("198.51.100.4", "1.2.3.4", [], "198.51.100.4"),  # untrusted peer: the header is ignored
        ("198.51.100.4", "1.2.3.4", ["10.0.0.0/8"], "198.51.100.4"),
        ("10.1.1.1", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.1.1.1", "6.6.6.6, 1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.1.1.1", "1.2.3.4:5678", ["10.1.1.1"], "1.2.3.4"),
        ("10.1.1.1", "[2001:db8::1]:443", ["10.1.1.1"], "2001:db8::1"),
        ("10.1.1.1", "", ["10.1.1.1"], "10.1.1.1"),  # a trusted proxy that forwarded nothing
        ("10.1.1.1", "not-an-ip, 10.2.2.2", ["10.0.0.0/8"], "10.2.2.2"),  # garbage: trust no further
        ("::ffff:10.1.1.1", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("", "1.2.3.4", ["10.0.0.0/8"], ""),
    ],
)
def test_client_ip(settings, remote, forwarded, trusted, expected):
    from embedplatform.clientip import client_ip

    settings.TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_an_ipv6_client_is_counted_by_its_64(settings):
    from embedplatform.clientip import client_ip_key

    request = RequestFactory().get("/", REMOTE_ADDR="2001:db8:1:2:aaaa::1")
    other = RequestFactory().get("/", REMOTE_ADDR="2001:db8:1:2:bbbb::9")
    assert client_ip_key(None, request) == client_ip_key(None, other) == "2001:db8:1:2::"
    assert client_ip_key(None, RequestFactory().get("/", REMOTE_ADDR="")) == "no-remote-addr"


# --- /admin/login/ ---------------------------------------------------------------------------

def _admin_login(ip: str, username: str, password: str):
    return Client(REMOTE_ADDR=ip).post("/admin/login/", {"username": username, "password": password,
                                                          "next": "/admin/"})


def test_admin_login_is_throttled_per_address_and_username(tiers, redis_db, settings):
    settings.ADMIN_LOGIN_RATE_IP_USER = "3/h"
    settings.ADMIN_LOGIN_RATE_IP = "6/h"
    UserFactory(staff=True, email="ops@example.com", password="right password 42")
    codes = [_admin_login("10.0.0.1", "ops@example.com", f"guess {i}").status_code for i in range(3)]
    assert codes == [200, 200, 200]  # the form again, with its error
    refused = _admin_login("10.0.0.1", "ops@example.com", "right password 42")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert refused["X-RateLimit-Remaining"] == "0" and "Too many admin login attempts" in refused.content.decode()
    # the owner from another address is not locked out by the stranger
    assert _admin_login("10.0.0.2", "ops@example.com", "right password 42").status_code == 302
    # the address as a whole: 6 POSTs per hour, whatever the username
    codes = [_admin_login("10.0.0.1", f"x{i}@example.com", "nope").status_code for i in range(3)]
    assert codes == [200, 200, 429]
    # forged X-Forwarded-For from an untrusted peer does not open a fresh bucket
    forged = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5").post(
        "/admin/login/", {"username": "y@example.com", "password": "nope"})
    assert forged.status_code == 429
    assert Client(REMOTE_ADDR="10.0.0.1").get("/admin/login/").status_code == 200  # the form still renders
