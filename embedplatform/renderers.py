from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from django.http import HttpResponse
from rest_framework import renderers

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JSONRenderer(renderers.JSONRenderer):
    """orjson: lists of floats, which is all we send, are where the stdlib json is slowest."""

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, option=_OPTIONS)


def json_answer(data: Any, status: int = 200) -> HttpResponse:
    """The body as JSONRenderer writes it, in a plain HttpResponse: for the data plane's successful
    answers, which skip DRF's Response (its template-response machinery is a share of a cache hit's
    time; docs/BENCHMARKS.md). The view's negotiation still runs first (406 for an Accept no renderer
    meets), and errors still go through DRF's exception handler."""
    return HttpResponse(orjson.dumps(data, option=_OPTIONS), status=status, content_type="application/json")
