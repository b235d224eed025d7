"""Deploy checks (`manage.py check --deploy`) for the project's own settings: Django's cover the
cookies, HSTS and redirects (BEHIND_TLS); these cover what Django does not know about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.module_loading import import_string


@checks.register(checks.Tags.security, deploy=True)
def metrics_token_check(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if settings.METRICS_TOKEN:
        return []
    return [checks.Warning(
        "METRICS_TOKEN is not set: anyone who reaches GET /metrics reads the service's traffic, "
        "queue depths and job counts.",
        hint="Set METRICS_TOKEN to a long random string and give Prometheus the same token "
             "(scrape config `authorization: {credentials: <token>}`).",
        id="embedplatform.W001",
    )]


@checks.register(checks.Tags.security, deploy=True)
def csrf_check(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's W003/W016 for our CsrfViewMiddleware subclass (Django's own look for its exact path)."""
    if not any(issubclass(import_string(path), CsrfViewMiddleware) for path in settings.MIDDLEWARE
               if isinstance(path, str) and path.rpartition(".")[2] == "CsrfViewMiddleware"):
        return [checks.Warning("No CsrfViewMiddleware in MIDDLEWARE: the admin's forms have no CSRF protection.",
                               id="embedplatform.W002")]
    if not settings.CSRF_COOKIE_SECURE:
        return [checks.Warning(
            "CSRF_COOKIE_SECURE is off: the admin's CSRF cookie is also sent over plain http.",
            hint="Serve the site over https and set BEHIND_TLS=true (or CSRF_COOKIE_SECURE=true).",
            id="embedplatform.W003",
        )]
    return []
