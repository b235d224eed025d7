"""Fixtures of the embedding tests."""

import json

import pytest

from embeddings import registry


@pytest.fixture
def models(settings, tmp_path):
    """Set EMBED_MODELS (a dict) and read the registry afresh; digests kept under tmp_path."""
    settings.VAR_DIR = tmp_path / "var"

    def load(entries: dict) -> dict[str, registry.ModelSpec]:
        settings.EMBED_MODELS = json.dumps(entries)
        registry._load.cache_clear()
        return registry.model_specs()

    yield load
    registry._load.cache_clear()
