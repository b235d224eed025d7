"""A JSON parser that enforces MAX_REQUEST_BYTES while reading and uses orjson.

DRF reads the body from the request stream, which bypasses Django's
DATA_UPLOAD_MAX_MEMORY_SIZE check; this parser reads at most limit+1 bytes, so an
oversized body is answered with 413 without being held in memory. Every body the API takes is
JSON, whatever its label says: `curl -d`'s form type, text/plain, or none at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from embedplatform.errors import PayloadTooLarge


class JSONParser(parsers.JSONParser):
    def parse(self, stream: IO[Any] | None, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        view = (parser_context or {}).get("view")
        limit = getattr(view, "max_request_bytes", None) or settings.MAX_REQUEST_BYTES
        request = (parser_context or {}).get("request")
        length = request.META.get("CONTENT_LENGTH") if request is not None else None
        if length and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"The request body is {int(length)} bytes; the limit is {limit}.")
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.")
        if not data:
            raise ParseError("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"The request body is not valid JSON: {exc}.") from None


class CurlJSONParser(JSONParser):
    """`curl -d '{...}'` labels JSON as form data; parse it as the JSON it is."""

    media_type = "application/x-www-form-urlencoded"


class PlainTextJSONParser(JSONParser):
    """A string body labelled `text/plain` (fetch()'s default, some HTTP clients') is JSON here too."""

    media_type = "text/plain"


# Accept headers whose answer DRF's negotiation gives without parsing anything: what clients send.
_PLAIN_ACCEPT = frozenset(("", "*/*", "application/json"))


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, except that a body sent without a Content-Type is read by the first parser
    (JSON) instead of being refused with 415: every body this API takes is JSON. The renderer for no
    Accept header, `*/*` or `application/json` is picked without DRF's media-range parsing (a share
    of a cache hit's time): the same choice DRF makes for them; any other Accept goes through DRF."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        if not request.content_type:
            return next(iter(parsers), None)
        return super().select_parser(request, parsers)

    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer],
                        format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)  # a list from the view (APIView.get_renderers)
        accept = request.META.get("HTTP_ACCEPT", "")
        if format_suffix is None and accept in _PLAIN_ACCEPT and renderers and not self.settings.URL_FORMAT_OVERRIDE:
            first = renderers[0]
            if accept != "application/json" or first.media_type == "application/json":
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
