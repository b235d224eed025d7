"""System checks (`manage.py check`, and before `migrate`, which the web's start runs): settings
that are read lazily on a request are checked at start-up instead, so a mistake stops the start
with its message rather than failing requests."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured


@checks.register()
def model_aliases_check(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """EMBED_MODEL_ALIASES names served models (embeddings/registry.model_aliases)."""
    from embeddings.registry import model_aliases  # reads settings: not at import

    try:
        model_aliases()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Fix EMBED_MODEL_ALIASES (or EMBED_MODELS).", id="embeddings.E001")]
    return []
