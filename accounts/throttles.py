"""Throttles of the unauthenticated doors: login, sign-up and the admin login.

Counters are django-ratelimit's (fixed windows in the Redis cache, RATELIMIT_USE_CACHE), keyed
by the client's address from embedplatform/clientip.py (X-Forwarded-For only from
TRUSTED_PROXIES). Every refusal is a 429 with Retry-After and X-RateLimit-*.

Login counts every attempt per address, but only FAILED attempts per (address, email) and per
email: a stranger who knows an email cannot lock its owner out, because the owner's own
address has no failures. Past the per-email bound (a guessing campaign from many addresses)
each address that has failed for that email is refused, so a distributed attacker gets one
guess per address per window, while the owner from an address that never failed still logs in.
Checks run before the password hash, so a refused attempt costs no hashing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeGuard

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django_ratelimit.core import get_usage

from embedplatform.clientip import client_ip_key
from embedplatform.errors import LOGIN_THROTTLED, SIGNUP_THROTTLED, Throttled

if TYPE_CHECKING:
    from rest_framework.request import Request

ADMIN_LOGIN_THROTTLED = "Too many admin login attempts from your address; retry in {retry_after} s."


def _count(request: HttpRequest | Request, group: str, value: str, rate: str, *, increment: bool) -> dict | None:
    """django-ratelimit's usage of one counter ({count, limit, should_limit, time_left}); None when
    RATELIMIT_ENABLE is off. A cache failure reads as spent (limit 0): the doors fail closed."""
    return get_usage(request, group=group, key=lambda _g, _r: value, rate=rate, increment=increment)


def _spent(usage: dict | None, *, peek: bool) -> TypeGuard[dict]:
    """Whether the counter refuses: after an increment when it went over its limit; on a peek
    (failure counters) when it already holds `limit` failures."""
    if usage is None:
        return False
    return usage["count"] >= usage["limit"] if peek else usage["should_limit"]


def _throttled(template: str, usage: dict, code: str) -> Throttled:
    retry = max(1, int(usage["time_left"]))
    return Throttled(template.format(retry_after=retry), retry_after=retry, limit=usage["limit"],
                     reset_at=int(time.time()) + retry, code=code)


def _email(email: str) -> str:
    return email.strip().lower()


def login_check(request: HttpRequest | Request, *, email: str) -> None:
    """Before the password is checked: counts the attempt against the address (LOGIN_RATE_IP) and
    raises Throttled (429) when the address is spent, when it has LOGIN_RATE_IP_EMAIL failures for
    this email, or when the email has LOGIN_RATE_EMAIL failures from all addresses and this
    address has at least one. Call login_failed() after a wrong password."""
    ip, email = client_ip_key(None, request), _email(email)
    usage = _count(request, "login-ip", ip, settings.LOGIN_RATE_IP, increment=True)
    if _spent(usage, peek=False):
        raise _throttled(LOGIN_THROTTLED, usage, "login_throttled")
    pair = _count(request, "login-failed-ip-email", f"{ip}|{email}", settings.LOGIN_RATE_IP_EMAIL, increment=False)
    if _spent(pair, peek=True):
        raise _throttled(LOGIN_THROTTLED, pair, "login_throttled")
    if pair is not None and pair["count"] > 0:
        total = _count(request, "login-failed-email", email, settings.LOGIN_RATE_EMAIL, increment=False)
        if _spent(total, peek=True):
            raise _throttled(LOGIN_THROTTLED, total, "login_throttled")


def login_failed(request: HttpRequest | Request, *, email: str) -> None:
    """Counts a wrong password (or an unknown email) per (address, email) and per email."""
    ip, email = client_ip_key(None, request), _email(email)
    _count(request, "login-failed-ip-email", f"{ip}|{email}", settings.LOGIN_RATE_IP_EMAIL, increment=True)
    _count(request, "login-failed-email", email, settings.LOGIN_RATE_EMAIL, increment=True)


def signup_check(request: HttpRequest | Request) -> None:
    """Counts a sign-up against the client's address (SIGNUP_RATE_IP); raises Throttled when spent.
    Called once the body is valid, before the password is hashed."""
    usage = _count(request, "signup-ip", client_ip_key(None, request), settings.SIGNUP_RATE_IP, increment=True)
    if _spent(usage, peek=False):
        raise _throttled(SIGNUP_THROTTLED, usage, "signup_throttled")


def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """admin.site.login behind two throttles (embedplatform/urls.py routes /admin/login/ here):
    every POST per address (ADMIN_LOGIN_RATE_IP) and failed POSTs per (address, username)
    (ADMIN_LOGIN_RATE_IP_USER). A refusal is a plain-text 429 with Retry-After and X-RateLimit-*."""
    if request.method != "POST":
        return admin.site.login(request, extra_context)
    ip = client_ip_key(None, request)
    pair_key = f"{ip}|{request.POST.get('username', '').strip().lower()}"
    usage = _count(request, "admin-login-ip", ip, settings.ADMIN_LOGIN_RATE_IP, increment=True)
    refused = usage if _spent(usage, peek=False) else None
    if refused is None:
        pair = _count(request, "admin-login-failed-ip-user", pair_key, settings.ADMIN_LOGIN_RATE_IP_USER, increment=False)
        refused = pair if _spent(pair, peek=True) else None
    if refused is not None:
        error = _throttled(ADMIN_LOGIN_THROTTLED, refused, "admin_login_throttled")
        return HttpResponse(error.message, status=429, content_type="text/plain; charset=utf-8", headers=error.headers())
    response = admin.site.login(request, extra_context)
    if response.status_code == 200:  # the form again, with its error: a wrong username or password
        _count(request, "admin-login-failed-ip-user", pair_key, settings.ADMIN_LOGIN_RATE_IP_USER, increment=True)
    return response
