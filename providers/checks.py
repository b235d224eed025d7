"""A system check (run by migrate, runserver and `manage.py check`): ENCRYPTION_KEY must hold
Fernet keys, so a typo stops start-up with a clear message instead of failing the first
provider request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from providers.crypto import fernet


@checks.register(checks.Tags.security)
def encryption_key_check(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        fernet()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="providers.E001")]
    return []
