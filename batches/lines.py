"""A batch's input file, line by line: each line is a request or the error it gets (OpenAI's shapes).

A line is `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body"}`; its body is checked as
POST /v1/embeddings checks its own (the same serializer, model and options checks), so a line is
refused here exactly where the endpoint would refuse the request, with the same error envelope.
A refused line goes to the batch's error file; the others run (batches/services.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from rest_framework import serializers

from accounts.models import Tenant
from dispatch.base import ServedModel
from embeddings.inputs import EmbedOptions, model_inputs, model_resolve
from embeddings.jobs import JOB_BYOK_REFUSED
from embeddings.serializers import EmbeddingsRequestSerializer
from embedplatform.errors import ApiError, InvalidInput, exception_handler

LINE_NOT_JSON = "Line {line} is not valid JSON: {why}."
LINE_NOT_OBJECT = "Line {line} is not a JSON object: each line is {{\"custom_id\", \"method\", \"url\", \"body\"}}."
CUSTOM_ID_MISSING = "custom_id is required: a non-empty string that names the request in the output."
CUSTOM_ID_DUPLICATE = "custom_id `{custom_id}` is used by line {first} already; each request needs its own."
METHOD_UNSUPPORTED = "method must be POST, not {method}."
URL_MISMATCH = "url must be the batch's endpoint, {endpoint}, not {url}."
BODY_MISSING = "body is required: the JSON body of a POST {endpoint} request."
OUTPUT_DTYPE_UNSUPPORTED = ("output_dtype {dtype} is not supported in batches: the output file holds float vectors, "
                            "as numbers or as base64 (encoding_format).")


@dataclass(frozen=True)
class Request:
    """A valid line: what it embeds and how its answer is written."""

    line: int  # 1-based
    custom_id: str
    texts: list[str]
    options: EmbedOptions  # model: the served model's own name (an alias resolved)
    encoding_format: str


@dataclass(frozen=True)
class Refused:
    """A refused line: the status code and error envelope POST /v1/embeddings would answer."""

    line: int
    custom_id: str | None
    status: int
    error: dict[str, Any]  # {message, type, param, code}


def _refused(line: int, custom_id: str | None, exc: Exception) -> Refused:
    response = exception_handler(exc, {"view": None})
    return Refused(line=line, custom_id=custom_id, status=response.status_code, error=response.data["error"])


class _Models:
    """model_resolve once per model name a batch names (a refusal is remembered too)."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.seen: dict[str, ServedModel | ApiError] = {}

    def get(self, model: str) -> ServedModel:
        found = self.seen.get(model)
        if found is None:
            try:
                found = model_resolve(tenant=self.tenant, model=model)
                if not found.dispatcher.runs_jobs:
                    raise InvalidInput(JOB_BYOK_REFUSED.format(model=model), param="model")
            except ApiError as exc:
                found = exc
            self.seen[model] = found
        if isinstance(found, ApiError):
            raise found
        return found


def _request(line: int, item: Any, *, endpoint: str, models: _Models) -> Request:
    """Raises ApiError or ValidationError naming what is wrong with the line."""
    if item.get("method", "POST") != "POST":
        raise InvalidInput(METHOD_UNSUPPORTED.format(method=item.get("method")), param="method",
                           code="invalid_method")
    if item.get("url") != endpoint:
        raise InvalidInput(URL_MISMATCH.format(endpoint=endpoint, url=item.get("url")), param="url",
                           code="mismatched_endpoint")
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidInput(BODY_MISSING.format(endpoint=endpoint), param="body", code="missing_required_parameter")
    serializer = EmbeddingsRequestSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if data["output_dtype"] != "float":
        raise InvalidInput(OUTPUT_DTYPE_UNSUPPORTED.format(dtype=data["output_dtype"]), param="output_dtype")
    spec = models.get(data["model"])
    options = EmbedOptions(model=spec.name, normalize=data["normalize"], dimensions=data["dimensions"],
                           truncate=data["truncate"], input_type=data["input_type"], public=data["public"])
    model_inputs(spec, data["input"], options)  # dimensions, and lengths with truncate=false: as the endpoint
    return Request(line=line, custom_id=item["custom_id"], texts=data["input"],
                   options=EmbedOptions(model=spec.name, normalize=data["normalize"], dimensions=data["dimensions"],
                                        input_type=data["input_type"], public=data["public"]),
                   encoding_format=data["encoding_format"])


def lines_read(raw: bytes, *, tenant: Tenant, endpoint: str) -> list[Request | Refused]:
    """Every non-blank line of a JSONL file, as a Request or as the Refused error it gets."""
    out: list[Request | Refused] = []
    models = _Models(tenant)
    first_line: dict[str, int] = {}
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            item = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            out.append(_refused(number, None, InvalidInput(LINE_NOT_JSON.format(line=number, why=exc),
                                                           code="invalid_json_line")))
            continue
        if not isinstance(item, dict):
            out.append(_refused(number, None, InvalidInput(LINE_NOT_OBJECT.format(line=number),
                                                           code="invalid_json_line")))
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            out.append(_refused(number, None, InvalidInput(CUSTOM_ID_MISSING, param="custom_id",
                                                           code="missing_required_parameter")))
            continue
        if custom_id in first_line:
            out.append(_refused(number, custom_id, InvalidInput(
                CUSTOM_ID_DUPLICATE.format(custom_id=custom_id, first=first_line[custom_id]), param="custom_id",
                code="duplicate_custom_id")))
            continue
        first_line[custom_id] = number
        try:
            out.append(_request(number, item, endpoint=endpoint, models=models))
        except (ApiError, serializers.ValidationError) as exc:
            out.append(_refused(number, custom_id, exc))
    return out


def group_key(options: EmbedOptions) -> tuple:
    """Lines whose options match run in one job."""
    return (options.model, options.normalize, options.dimensions, options.input_type, options.public)


def requests_grouped(lines: Iterable[Request | Refused]) -> dict[tuple, list[Request]]:
    """The valid lines by group_key, in order of first appearance, each group in line order."""
    groups: dict[tuple, list[Request]] = {}
    for line in lines:
        if isinstance(line, Request):
            groups.setdefault(group_key(line.options), []).append(line)
    return groups
