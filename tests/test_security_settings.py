"""Deployment hardening: the admin refuses framing, and with the documented production settings
(DEBUG off, BEHIND_TLS=true, METRICS_TOKEN) `manage.py check --deploy` is clean, cookies are
Secure, HSTS is sent, http is redirected to https, and plain-http probes of /health/ still work.

The production cases run in a subprocess with a clean environment, so they read the settings
exactly as a deployment does (embedplatform.settings.base from environment variables). Nothing
there connects to the database or Redis (the URLs point at closed ports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

HOST = "embed.example.com"
# What the README documents for production (besides DATABASE_URL / REDIS_URL).
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "prod-like-secret-key-9c7f0e4b2a1d8e6f3b5a7c9d1e3f5a7b9c1d3e5f7a9b",
    "ENCRYPTION_KEY": "wDBOYgsOnKWlkV5dGfXprVV5LyEOFKjykTMlm0XJa1Y=",
    "ALLOWED_HOSTS": HOST,
    "BEHIND_TLS": "true",
    "METRICS_TOKEN": "metrics-token-for-the-test-0123456789",
}
# Closed ports: settings need the URLs, and nothing in these tests may connect.
OFFLINE_URLS = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/never_connected",
    "REDIS_URL": "redis://127.0.0.1:9/0",
}


def _run(args: list[str], extra_env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "DJANGO_SETTINGS_MODULE": "embedplatform.settings.base", "VAR_DIR": str(ROOT / "var"),
           **OFFLINE_URLS, **extra_env}
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kw)


def check_deploy(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], extra_env)


def test_check_deploy_is_clean_with_the_documented_production_settings():
    result = check_deploy(PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stderr and "ERRORS" not in result.stderr, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_names_what_is_missing_without_them():
    """Without BEHIND_TLS and METRICS_TOKEN the same check fails, naming each setting."""
    env = {k: v for k, v in PRODUCTION_ENV.items() if k not in ("BEHIND_TLS", "METRICS_TOKEN")}
    result = check_deploy(env)
    assert result.returncode != 0
    for check_id in ("embedplatform.W001", "embedplatform.W003", "security.W004", "security.W008",
                     "security.W010"):
        assert check_id in result.stderr, (check_id, result.stderr)


_REQUESTS = textwrap.dedent(f"""
    import json
    import django
    django.setup()
    from django.conf import settings
    from django.test import Client

    client = Client(SERVER_NAME="{HOST}")
    out = {{"settings": {{name: getattr(settings, name) for name in (
        "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
        "SECURE_PROXY_SSL_HEADER")}}}}

    def seen(r):
        return {{"status": r.status_code, "headers": dict(r.headers),
                 "cookies": {{k: {{"secure": bool(m["secure"]), "httponly": bool(m["httponly"])}}
                             for k, m in r.cookies.items()}}}}

    out["admin_http"] = seen(client.get("/admin/login/"))
    out["admin_https"] = seen(client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https"))
    out["health_http"] = seen(client.get("/health/live"))
    out["metrics_http"] = seen(client.get("/metrics"))
    out["v1_http"] = seen(client.get("/v1/models"))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def production():
    """Requests answered by the app under the documented production settings."""
    result = _run(["-c", _REQUESTS], PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_cookies_are_secure_and_the_proxy_header_is_trusted(production):
    s = production["settings"]
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True
    assert s["SECURE_SSL_REDIRECT"] is True and s["SECURE_HSTS_SECONDS"] >= 31536000
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    # The admin's login page over https (as the proxy says): its CSRF cookie is Secure.
    assert production["admin_https"]["cookies"]["csrftoken"]["secure"] is True


def test_production_redirects_http_and_sends_hsts_over_https(production):
    http = production["admin_http"]
    assert http["status"] == 301
    assert http["headers"]["Location"] == f"https://{HOST}/admin/login/"
    https = production["admin_https"]
    assert https["status"] == 200
    assert https["headers"]["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert https["headers"]["X-Frame-Options"] == "DENY"
    # The API is redirected as well: a client that sends its key over http learns it at once.
    assert production["v1_http"]["status"] == 301


def test_plain_http_probes_and_scrapes_are_not_redirected(production):
    """Kubernetes/compose probes and Prometheus reach the web directly over http, past the proxy."""
    assert production["health_http"]["status"] == 200
    assert production["metrics_http"]["status"] == 401  # answered (token required), not redirected


def test_a_bad_proxy_header_setting_stops_start_up():
    result = check_deploy({**PRODUCTION_ENV, "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"})
    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER" in result.stderr and "HTTP_X_FORWARDED_PROTO,https" in result.stderr


@pytest.mark.django_db
def test_admin_pages_refuse_framing(client, admin_client):
    login = client.get("/admin/login/")
    assert login.status_code == 200
    assert login["X-Frame-Options"] == "DENY"
    index = admin_client.get("/admin/")
    assert index.status_code == 200
    assert index["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_api_answers_refuse_framing_too(client):
    answer = client.get("/v1/models")
    assert answer.status_code == 401
    assert answer["X-Frame-Options"] == "DENY"


def test_the_dev_defaults_keep_plain_http_working(settings):
    """Without BEHIND_TLS (make run on http://localhost) nothing forces https."""
    assert settings.BEHIND_TLS is False
    assert not settings.SECURE_SSL_REDIRECT and not settings.SESSION_COOKIE_SECURE
    assert settings.SECURE_HSTS_SECONDS == 0 and settings.SECURE_PROXY_SSL_HEADER is None
