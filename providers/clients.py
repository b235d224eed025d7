"""Calling an upstream embeddings or rerank API: render the template, POST, parse with JSONPath.

Pure helpers (template/header/path validation and rendering, vector and score extraction) need
no network or DB. `embed_call` and `rerank_call` are the network entry points; both POST
through `_post`, which re-checks the endpoint (providers/ssrf.py) before every attempt and
connects to the checked address, never follows redirects, caps the response size and time,
and retries 429/5xx/connection failures with bounded, jittered backoff that honors
Retry-After. `embed_call` batches the texts per call up to the provider's limit;
`rerank_call` sends one query's documents (chunked at the provider's limit) and maps the
scores back by index; `rerank_pairs_call` serves a work item's pair texts (one call per query).
Every failure leaves as ProviderError (502) or ProviderTimeout (504) carrying the upstream's own
message with the secret redacted.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import orjson
from django.conf import settings
from jsonpath_ng import JSONPath
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext import parse as jsonpath_parse

from dispatch.frames import pair_split
from embedplatform import metrics
from embedplatform.errors import InvalidInput
from embedplatform.masking import secret_mask
from providers.crypto import secret_decrypt
from providers.errors import (
    UPSTREAM_BAD_RESPONSE,
    UPSTREAM_FAILED,
    UPSTREAM_REDIRECT,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    ProviderError,
    ProviderTimeout,
)
from providers.presets import EMBED, RERANK
from providers.ssrf import EndpointRefused, endpoint_check

if TYPE_CHECKING:
    from providers.models import ProviderConfig

# httpx logs every request URL at INFO; a custom endpoint's query string may hold a credential.
logging.getLogger("httpx").setLevel(logging.WARNING)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-type", "te", "upgrade"}
MAX_DIMS = 65536  # the `dimensions` bound of a BYOK model; vectors wider than settings.PROVIDER_MAX_DIMS are refused
BACKOFF_BASE_SECONDS = 0.5


class TemplateError(ValueError):
    """A request template, header set or response path that cannot work; str(exc) says why."""


# --- templates ----------------------------------------------------------------------------

# The placeholders that stand for a whole JSON value, by kind: exactly one of each group must be
# in a template (embed: the texts or the one text; rerank: the query and the documents).
_SLOTS = {
    EMBED: (("{{texts}}", "{{text}}"),),
    RERANK: (("{{query}}",), ("{{documents}}",)),
}
_EXAMPLES = {
    EMBED: '{"model": "{{model}}", "input": "{{texts}}"}',
    RERANK: '{"model": "{{model}}", "query": "{{query}}", "documents": "{{documents}}"}',
}


def template_validate(template: Any, kind: str = EMBED) -> None:
    """Raises TemplateError unless `template` is a JSON object with exactly one "{{texts}}" or
    "{{text}}" value (kind rerank: one "{{query}}" and one "{{documents}}" value) and no
    placeholder but those and "{{model}}"."""
    if not isinstance(template, dict) or not template:
        raise TemplateError(f"must be a JSON object, e.g. {_EXAMPLES[kind]}")
    groups = _SLOTS[kind]
    whole = {p for group in groups for p in group}
    names = {p.strip("{}") for p in whole}
    known = ", ".join([p for group in groups for p in group] + ["{{model}}"])
    slots: dict[str, list[str]] = {p: [] for p in whole}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            if value in whole:
                slots[value].append(where)
                return
            for name in _PLACEHOLDER.findall(value):
                if name == "model":
                    continue
                if name in names:
                    raise TemplateError(f'"{{{{{name}}}}}" must be a whole JSON value (at {where}), not part of a string')
                raise TemplateError(f'unknown placeholder "{{{{{name}}}}}" at {where}; use {known}')
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    walk(template, "$")
    for group in groups:
        found = [where for p in group for where in slots[p]]
        if len(found) != 1:
            if kind == EMBED:
                what = 'must contain "{{texts}}" (a list of texts) or "{{text}}" (one text) exactly once as a JSON value'
            else:
                what = (f'must contain "{group[0]}" exactly once as a JSON value (a rerank template takes "{{{{query}}}}" '
                        'and "{{documents}}", the list of documents)')
            raise TemplateError(what + (f"; found it at {', '.join(found)}" if found else ""))


def template_render(template: Any, *, texts: list[str], model: str) -> Any:
    """The request body: the template with JSON values substituted (never string pasting)."""
    return _render(template, {"{{texts}}": list(texts), "{{text}}": texts[0] if texts else ""}, model=model)


def rerank_render(template: Any, *, query: str, documents: list[str], model: str) -> Any:
    """A rerank request body: the template with the query, the documents and the model substituted."""
    return _render(template, {"{{query}}": query, "{{documents}}": list(documents)}, model=model)


def _render(template: Any, whole: dict[str, Any], *, model: str) -> Any:
    def walk(value: Any) -> Any:
        if isinstance(value, str):
            if value in whole:
                return whole[value]
            return _PLACEHOLDER.sub(lambda m: model if m.group(1) == "model" else m.group(0), value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(template)


def headers_validate(headers: Any) -> None:
    """Raises TemplateError unless `headers` maps header names to string values ("{{api_key}}" allowed)."""
    if not isinstance(headers, dict):
        raise TemplateError('must be a JSON object of header names to values, e.g. {"Authorization": "Bearer {{api_key}}"}')
    if len(headers) > 20:
        raise TemplateError("may have at most 20 entries")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise TemplateError(f"{name!r} is not a valid header name")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise TemplateError(f"{name} is set by the platform and may not be configured")
        if not isinstance(value, str) or len(value) > 4000 or not (value.isascii() and value.isprintable()):
            raise TemplateError(f"the value of {name} must be a single-line string of printable ASCII (as HTTP header values are)")
        for placeholder in _PLACEHOLDER.findall(value):
            if placeholder != "api_key":
                raise TemplateError(f'unknown placeholder "{{{{{placeholder}}}}}" in {name}; only {{{{api_key}}}} is known')


def headers_render(headers: dict[str, str], *, api_key: str) -> dict[str, str]:
    return {name: _PLACEHOLDER.sub(lambda m: api_key, value) for name, value in headers.items()}


@lru_cache(maxsize=256)
def path_parse(path: str) -> JSONPath:
    """The compiled JSONPath; raises TemplateError for one that does not parse."""
    if not isinstance(path, str) or not path.strip() or len(path) > 500:
        raise TemplateError("must be a JSONPath such as $.data[*].embedding")
    try:
        return jsonpath_parse(path)
    except (JSONPathError, Exception) as exc:  # jsonpath-ng's lexer raises plain Exceptions too
        raise TemplateError(f"is not a valid JSONPath ({str(exc)[:200]})") from None


# --- responses ----------------------------------------------------------------------------

def vectors_extract(body: Any, *, path: str, n: int) -> np.ndarray:
    """(n, dims) float32 from the response body. Raises ValueError saying what is wrong."""
    found = [m.value for m in path_parse(path).find(body)]
    # `$.embeddings.float` (the list itself) and `$.embeddings.float[*]` (its items) both work.
    if len(found) == 1 and isinstance(found[0], list) and found[0] and all(isinstance(v, list) for v in found[0]):
        found = found[0]
    if len(found) != n:
        raise ValueError(f"{len(found)} vectors at {path} for {n} texts")
    dims = None
    widest = settings.PROVIDER_MAX_DIMS
    for i, vec in enumerate(found):
        if isinstance(vec, list) and len(vec) > widest:  # before reading its numbers
            raise ValueError(f"vectors of {len(vec)} dimensions; the platform accepts at most {widest} "
                             "(PROVIDER_MAX_DIMS): ask the upstream for fewer, e.g. its `dimensions` option")
        if not isinstance(vec, list) or not vec or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
            raise ValueError(f"item {i} at {path} is not a list of numbers")
        if dims is None:
            dims = len(vec)
        elif len(vec) != dims:
            raise ValueError(f"vectors of different lengths ({dims} and {len(vec)})")
    if dims is None:
        raise ValueError("no vectors")
    out = np.asarray(found, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("vectors with NaN or infinite components")
    return out


def _found(body: Any, path: str) -> list:
    found = [m.value for m in path_parse(path).find(body)]
    # `$.scores` (the list itself) and `$.scores[*]` (its items) both work.
    if len(found) == 1 and isinstance(found[0], list):
        found = found[0]
    return found


def scores_extract(body: Any, *, path: str, index_path: str, n: int) -> np.ndarray:
    """float32[n]: the relevance score of each of the `n` documents sent, in their order. With
    `index_path`, the i-th score found belongs to the document of the i-th index found (answers
    come best first); every document must get exactly one (a missing one is an error, never a
    zero). Without it the scores are in document order. Raises ValueError saying what is wrong."""
    scores = _found(body, path)
    for i, score in enumerate(scores):
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise ValueError(f"item {i} at {path} is not a number")
    if not index_path:
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores at {path} for {n} documents")
        order = list(range(n))
    else:
        order = _found(body, index_path)
        if len(order) != len(scores):
            raise ValueError(f"{len(order)} indexes at {index_path} for {len(scores)} scores at {path}")
        for i, index in enumerate(order):
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
                raise ValueError(f"item {i} at {index_path} is not a document index (0 to {n - 1}): {str(index)[:40]}")
        seen = set(order)
        if len(seen) != len(order):
            raise ValueError(f"a document index appears twice at {index_path}")
        missing = [i for i in range(n) if i not in seen]
        if missing:
            raise ValueError(f"no score for document {missing[0]} of {n} ({len(missing)} missing); the request asks "
                             "for every document's score")
    out = np.empty(n, dtype=np.float32)
    out[order] = np.asarray(scores, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("scores that are NaN or infinite")
    return out


def usage_extract(body: Any, path: str) -> int | None:
    if not path:
        return None
    try:
        found = [m.value for m in path_parse(path).find(body)]
    except TemplateError:
        return None
    if len(found) == 1 and isinstance(found[0], int) and not isinstance(found[0], bool) and found[0] >= 0:
        return found[0]
    return None


def tokens_split(total: int | None, texts: list[str]) -> list[int]:
    """Per-text token counts: the call's total spread by length, or an estimate (4 chars a token)."""
    if total is None:
        return [max(1, len(t) // 4) for t in texts]
    lengths = [max(1, len(t)) for t in texts]
    whole = sum(lengths)
    return [max(1, round(total * n / whole)) for n in lengths]


def upstream_message(content: bytes) -> str:
    """The upstream's own error message: error.message, message, detail or the body's text."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:300] or "(empty body)"
    message = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or data.get("message") or data.get("detail")
    if not isinstance(message, str):
        message = json.dumps(data)[:300] if message is None else json.dumps(message)
    return " ".join(message.split())[:300]


# --- the call -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Upstream:
    """Everything a call needs, the clear secret included: built in the worker, never logged or stored."""

    name: str
    endpoint: str
    template: dict | None  # ProviderConfig.effective_template
    response_path: str
    headers: dict
    api_key: str
    max_inputs: int
    usage_path: str = ""
    preset: str = "custom"  # the metrics label (a tenant's own provider name never is one)
    kind: str = EMBED
    index_path: str = ""  # rerank: JSONPath to each score's document index ("" = document order)

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"Upstream(name={self.name!r}, endpoint={self.endpoint!r})"

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, secret_mask(self.api_key)) if self.api_key else text


def upstream_for(provider: ProviderConfig) -> Upstream:
    """The call configuration of a ProviderConfig, secret decrypted (SecretUnreadable if it cannot be)."""
    return Upstream(
        name=provider.name,
        endpoint=provider.effective_endpoint,
        template=provider.effective_template,
        response_path=provider.effective_response_path,
        headers=provider.headers_clear(),  # secret values decrypted here, in the worker
        api_key=secret_decrypt(provider.secret_encrypted) if provider.secret_encrypted else "",
        max_inputs=provider.effective_max_inputs,
        usage_path=provider.usage_path,
        preset=provider.preset,
        kind=provider.kind,
        index_path=provider.effective_index_path,
    )


class _Transient(Exception):
    def __init__(self, error: ProviderError, retry_after: float | None = None, kind: str = "connect"):
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.kind = kind


def _error(message: str, kind: str) -> ProviderError:
    error = ProviderError(message)
    error.kind = kind  # the metrics label
    return error


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _send(up: Upstream, body: bytes, *, timeout: float) -> tuple[int, httpx.Headers, bytes]:
    """One POST to the checked, pinned address. Raises EndpointRefused, httpx errors, ProviderError."""
    target = endpoint_check(up.endpoint)
    headers = {
        **headers_render(up.headers, api_key=up.api_key),
        "Host": target.host_header,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    limit = settings.PROVIDER_MAX_RESPONSE_BYTES
    ends = time.monotonic() + timeout
    with (
        httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False) as client,
        client.stream("POST", target.pinned_url(), content=body, headers=headers, extensions=target.extensions) as resp,
    ):
        chunks, size = [], 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _error(UPSTREAM_BAD_RESPONSE.format(name=up.name, message=f"the response is over {limit} bytes"),
                             "too_large")
            if time.monotonic() > ends:
                raise httpx.ReadTimeout("response too slow")
            chunks.append(chunk)
        return resp.status_code, resp.headers, b"".join(chunks)


def _attempt(up: Upstream, body: bytes, *, timeout: float) -> Any:
    """One attempt, timed and counted (embed_provider_call_seconds / embed_provider_errors)."""
    started = time.perf_counter()
    kind = None
    try:
        return _attempt_once(up, body, timeout=timeout)
    except ProviderTimeout:
        kind = "timeout"
        raise
    except _Transient as exc:
        kind = exc.kind
        raise
    except ProviderError as exc:
        kind = getattr(exc, "kind", "error")
        raise
    finally:
        metrics.provider_call_observe(up.preset, time.perf_counter() - started)
        if kind:
            metrics.provider_error_inc(up.preset, kind)


def _attempt_once(up: Upstream, body: bytes, *, timeout: float) -> Any:
    """One attempt: the parsed JSON body, or ProviderError/ProviderTimeout, or _Transient (retry)."""
    try:
        status, headers, content = _send(up, body, timeout=timeout)
    except EndpointRefused as exc:
        raise _error(UPSTREAM_UNREACHABLE.format(name=up.name, message=f"the endpoint {exc}"), "refused") from None
    except httpx.TimeoutException:
        raise ProviderTimeout(UPSTREAM_TIMEOUT.format(name=up.name, seconds=round(timeout, 1))) from None
    except httpx.TransportError as exc:
        error = ProviderError(UPSTREAM_UNREACHABLE.format(name=up.name, message=up.redact(str(exc))[:200] or type(exc).__name__))
        raise _Transient(error) from None
    if 200 <= status < 300:
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise _error(UPSTREAM_BAD_RESPONSE.format(name=up.name, message="the body is not JSON"), "bad_response") from None
    if 300 <= status < 400:
        location = up.redact(headers.get("location", "?"))[:200]
        raise _error(UPSTREAM_REDIRECT.format(name=up.name, status=status, location=location), "redirect")
    kind = "http_429" if status == 429 else ("http_5xx" if status >= 500 else "http_4xx")
    error = _error(UPSTREAM_FAILED.format(name=up.name, status=status, message=up.redact(upstream_message(content))), kind)
    if status == 429 or status >= 500:
        raise _Transient(error, _retry_after(headers.get("retry-after")), kind)
    raise error


def _post(up: Upstream, payload: Any, *, deadline: float | None) -> Any:
    """POSTs with retries: transient failures wait (Retry-After, else jittered exponential backoff)
    as long as the retry budget, PROVIDER_MAX_BACKOFF_SECONDS and the deadline allow."""
    body = json.dumps(payload).encode("ascii")  # ASCII-escaped: lone surrogates cannot break it
    attempt = 0
    while True:
        remaining = settings.PROVIDER_TIMEOUT_SECONDS if deadline is None else deadline - time.time()
        if remaining <= 0.05:
            raise ProviderTimeout(UPSTREAM_TIMEOUT.format(name=up.name, seconds=settings.PROVIDER_TIMEOUT_SECONDS))
        try:
            return _attempt(up, body, timeout=min(settings.PROVIDER_TIMEOUT_SECONDS, remaining))
        except _Transient as exc:
            wait = exc.retry_after
            if wait is None:
                wait = min(settings.PROVIDER_MAX_BACKOFF_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt) * random.uniform(0.5, 1.0)
            out_of_time = deadline is not None and time.time() + wait >= deadline
            if attempt >= settings.PROVIDER_MAX_RETRIES or wait > settings.PROVIDER_MAX_BACKOFF_SECONDS or out_of_time:
                raise exc.error from None
            time.sleep(wait)
            attempt += 1


def embed_call(up: Upstream, *, model: str, texts: list[str], deadline: float | None = None) -> tuple[np.ndarray, list[int]]:
    """(vectors float32[n, dims], tokens per text) for `texts`, in order, in as few calls as the
    provider's per-call limit allows. Raises ProviderError / ProviderTimeout."""
    per_call = max(1, min(up.max_inputs, settings.PROVIDER_MAX_INPUTS_PER_CALL))
    parts: list[np.ndarray] = []
    tokens: list[int] = []
    for start in range(0, len(texts), per_call):
        batch = texts[start : start + per_call]
        body = _post(up, template_render(up.template, texts=batch, model=model), deadline=deadline)
        try:
            vectors = vectors_extract(body, path=up.response_path, n=len(batch))
        except ValueError as exc:
            raise ProviderError(UPSTREAM_BAD_RESPONSE.format(name=up.name, message=str(exc))) from None
        if parts and vectors.shape[1] != parts[0].shape[1]:
            raise ProviderError(UPSTREAM_BAD_RESPONSE.format(name=up.name, message="vectors of different lengths"))
        parts.append(vectors)
        tokens += tokens_split(usage_extract(body, up.usage_path), batch)
    return np.concatenate(parts), tokens


def rerank_call(up: Upstream, *, model: str, query: str, documents: list[str],
                deadline: float | None = None) -> tuple[np.ndarray, list[int]]:
    """(scores float32[n], tokens per document) of `documents` against `query`, in document order:
    one call per the provider's max_inputs documents (one call, normally). Raises ProviderError /
    ProviderTimeout, a 502 where the answer leaves a document without its score."""
    per_call = max(1, up.max_inputs)  # not PROVIDER_MAX_INPUTS_PER_CALL: a query's documents stay together
    parts: list[np.ndarray] = []
    tokens: list[int] = []
    for start in range(0, len(documents), per_call):
        batch = documents[start : start + per_call]
        body = _post(up, rerank_render(up.template, query=query, documents=batch, model=model), deadline=deadline)
        try:
            parts.append(scores_extract(body, path=up.response_path, index_path=up.index_path, n=len(batch)))
        except ValueError as exc:
            raise _error(UPSTREAM_BAD_RESPONSE.format(name=up.name, message=str(exc)), "bad_response") from None
        tokens += tokens_split(usage_extract(body, up.usage_path), [query + d for d in batch])
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)), tokens


NOT_A_PAIR = "The provider `{name}` is a reranker: it scores query-document pairs (POST /v1/rerank)."


def rerank_pairs_call(up: Upstream, *, model: str, texts: list[str],
                      deadline: float | None = None) -> tuple[np.ndarray, list[int]]:
    """A rerank work item's pair texts (dispatch.frames.pair_join) scored: (float32[n, 1] in the
    item's order, tokens per pair). The pairs are grouped by query, one rerank_call each (a
    request's pairs share one query). Raises InvalidInput for a text that is not a pair."""
    by_query: dict[str, list[int]] = {}
    documents: list[str] = []
    for i, text in enumerate(texts):
        try:
            query, document = pair_split(text)
        except ValueError:
            raise InvalidInput(NOT_A_PAIR.format(name=up.name), param="model", code="model_kind") from None
        by_query.setdefault(query, []).append(i)
        documents.append(document)
    out = np.empty((len(texts), 1), dtype=np.float32)
    tokens = [0] * len(texts)
    for query, where in by_query.items():
        scores, counts = rerank_call(up, model=model, query=query, documents=[documents[i] for i in where],
                                     deadline=deadline)
        out[where, 0] = scores
        for i, count in zip(where, counts, strict=True):
            tokens[i] = count
    return out, tokens
