"""BYOK providers: create / update / delete / test.

Embedding through a provider: providers/dispatch.py (the web side) and
workers/provider_calls.py (the provider worker's call).
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import Tenant
from embedplatform.errors import ApiError, InvalidInput
from embedplatform.masking import secret_mask
from providers.clients import (
    TemplateError,
    embed_call,
    headers_validate,
    path_parse,
    rerank_call,
    template_validate,
    upstream_for,
)
from providers.crypto import secret_encrypt
from providers.errors import PROVIDER_NAME_TAKEN
from providers.models import ProviderConfig, header_is_template
from providers.presets import CUSTOM, EMBED, KINDS, PRESET_CHOICES, RERANK, preset_get
from providers.selectors import provider_get
from providers.ssrf import EndpointRefused, endpoint_check

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_INPUTS_LIMIT = 2048
TEST_TEXT = "embedplatform provider test"
TEST_DOCUMENTS = ["embedplatform reranks documents against a query", "an unrelated sentence about the weather"]


# --- management ---------------------------------------------------------------------------

_FIELDS = ("name", "preset", "kind", "endpoint", "request_template", "response_path", "index_path", "headers", "model",
           "max_inputs")


def _validate(provider: ProviderConfig, *, api_key: str | None) -> None:
    """Raises InvalidInput (param = the field) unless the effective configuration can work.

    Resolves the endpoint's host now (SSRF check at save time; it runs again at every call).
    """
    if not NAME_RE.match(provider.name or ""):
        raise InvalidInput("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/').",
                           param="name")
    if provider.preset not in PRESET_CHOICES:
        raise InvalidInput(f"preset: must be one of {', '.join(PRESET_CHOICES)}; got `{provider.preset}`.", param="preset")
    preset = preset_get(provider.preset)
    if provider.kind not in KINDS:
        raise InvalidInput(f"kind: must be one of {', '.join(KINDS)}; got `{provider.kind}`.", param="kind")
    if preset is not None and provider.kind != preset.kind:
        raise InvalidInput(f"kind: the {provider.preset} preset is of kind {preset.kind}; kind `{provider.kind}` needs "
                           "another preset (or custom).", param="kind")
    if provider.index_path and provider.kind != RERANK:
        raise InvalidInput("index_path: only a rerank provider has one.", param="index_path")
    if provider.preset == CUSTOM:
        for field in ("endpoint", "request_template", "response_path"):
            if not getattr(provider, field):
                raise InvalidInput(f"{field}: required for a custom provider.", param=field)
    if not provider.effective_endpoint:
        raise InvalidInput(f"endpoint: required for the {provider.preset} preset (your deployment's URL).", param="endpoint")
    try:
        endpoint_check(provider.effective_endpoint)
    except EndpointRefused as exc:
        raise InvalidInput(f"endpoint: {exc}.", param="endpoint") from None
    headers = provider.headers_clear()
    value: Any  # each check takes its own kind of value
    for field, check, value in (
        ("request_template", lambda t: template_validate(t, provider.kind), provider.effective_template),
        ("response_path", path_parse, provider.effective_response_path),
        ("index_path", lambda p: p and path_parse(p), provider.effective_index_path),
        ("headers", headers_validate, headers),
    ):
        try:
            check(value)
        except TemplateError as exc:
            raise InvalidInput(f"{field}: {exc}.", param=field) from None
    if provider.max_inputs is not None and not 1 <= provider.max_inputs <= MAX_INPUTS_LIMIT:
        raise InvalidInput(f"max_inputs: must be between 1 and {MAX_INPUTS_LIMIT}.", param="max_inputs")
    if len(provider.model or "") > 200:
        raise InvalidInput("model: at most 200 characters.", param="model")
    # It travels in an HTTP header (e.g. Bearer {{api_key}}): printable ASCII only, else every call would fail.
    if api_key is not None and (len(api_key) > 4000 or not (api_key.isascii() and api_key.isprintable())):
        raise InvalidInput("api_key: a single line of at most 4000 printable ASCII characters.", param="api_key")
    needs_key = any("{{api_key}}" in v.replace(" ", "") for v in headers.values())
    has_key = bool(api_key) if api_key is not None else bool(provider.secret_encrypted)
    if needs_key and not has_key:
        which = "this preset" if preset else "the headers ({{api_key}})"
        raise InvalidInput(f"api_key: required by {which}.", param="api_key")


def _save(provider: ProviderConfig, *, api_key: str | None) -> ProviderConfig:
    if api_key is not None:
        provider.secret_encrypted = secret_encrypt(api_key) if api_key else ""
        provider.secret_mask = secret_mask(api_key)
    try:
        with transaction.atomic():
            provider.save()
    except IntegrityError:
        raise InvalidInput(PROVIDER_NAME_TAKEN.format(name=provider.name), param="name", code="name_taken") from None
    return provider


# Fields that decide where the stored secrets go or how they are sent: changing one needs them again.
ROUTING_FIELDS = ("endpoint", "preset", "request_template", "headers")
API_KEY_AGAIN = (
    "api_key: changing {fields} decides where or how the stored API key is sent, so send the api_key again in the "
    'same request (or "" to remove it).'
)
HEADERS_AGAIN = (
    "headers: changing {fields} would send the stored secret header values ({names}) to the new configuration; "
    "send the headers again with those values in clear in the same request."
)


def headers_resolve(provider: ProviderConfig, headers: Any) -> tuple[dict | None, set[str]]:
    """(the clear headers a create/update asks for, the names of stored secret values it kept).

    A value equal to the mask of the stored secret value of the same header keeps that value, so
    the shown (masked) headers can be sent back unchanged. Raises InvalidInput (param headers).
    """
    if headers is None:
        return None, set()
    try:
        headers_validate(headers)
    except TemplateError as exc:
        raise InvalidInput(f"headers: {exc}.", param="headers") from None
    if provider.pk is None or provider.headers is None or not provider.headers_encrypted:
        return dict(headers), set()
    stored, shown = provider.headers_clear(), provider.headers
    kept = {name for name, value in headers.items()
            if name in stored and not header_is_template(stored[name]) and value == shown.get(name)}
    return {name: stored[name] if name in kept else value for name, value in headers.items()}, kept


def _routing(provider: ProviderConfig) -> dict:
    return {"endpoint": provider.effective_endpoint, "preset": provider.preset,
            "request_template": provider.effective_template, "headers": provider.headers_clear()}


def secrets_move_check(provider: ProviderConfig, before: dict, *, api_key: str | None, headers_given: bool,
                       kept: set[str], stored_secrets: set[str]) -> None:
    """Raises InvalidInput unless every stored secret that a change of where or how it is sent
    would carry along is given again in the same request (`before`: _routing of the stored row)."""
    after = _routing(provider)
    changed = [f for f in ROUTING_FIELDS if before[f] != after[f]]
    if not changed:
        return
    fields = ", ".join(changed)
    if api_key is None and provider.secret_encrypted:
        raise InvalidInput(API_KEY_AGAIN.format(fields=fields), param="api_key", code="api_key_required")
    carried = sorted(kept if headers_given else stored_secrets)
    where = [f for f in changed if f != "headers"]
    if where and carried:
        raise InvalidInput(HEADERS_AGAIN.format(fields=", ".join(where), names=", ".join(carried)), param="headers",
                           code="headers_required")


def provider_create(
    *,
    tenant: Tenant,
    name: str,
    preset: str = CUSTOM,
    endpoint: str = "",
    request_template: dict | None = None,
    response_path: str = "",
    headers: dict | None = None,
    api_key: str = "",
    model: str = "",
    max_inputs: int | None = None,
    kind: str | None = None,
    index_path: str = "",
) -> ProviderConfig:
    """Creates the tenant's provider. Raises InvalidInput naming the field that cannot work.
    `kind` defaults to the preset's (custom: embed)."""
    preset_obj = preset_get(preset)
    provider = ProviderConfig(
        tenant=tenant, name=name, preset=preset, endpoint=endpoint or "", request_template=request_template,
        response_path=response_path or "", model=model or (preset_obj.default_model if preset_obj else ""),
        max_inputs=max_inputs, kind=kind or (preset_obj.kind if preset_obj else EMBED), index_path=index_path or "",
    )
    provider.headers_store(headers_resolve(provider, headers)[0])
    _validate(provider, api_key=api_key)
    return _save(provider, api_key=api_key)


def provider_update(*, tenant: Tenant, provider_id: int, **changes: Any) -> ProviderConfig:
    """Changes the given fields (api_key: a new secret; "" removes it). NotFound for another tenant's.

    A change of endpoint, preset, request_template or headers needs the api_key (and any secret
    header value) again in the same request: whoever holds a session must not be able to send the
    stored secrets somewhere else (InvalidInput, param api_key / headers).
    """
    provider = provider_get(tenant=tenant, provider_id=provider_id)
    api_key = changes.pop("api_key", None)
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}.")
    before = _routing(provider)
    stored_secrets = set(provider.headers or {}) if provider.headers_encrypted else set()
    stored_secrets = {n for n in stored_secrets if not header_is_template(before["headers"].get(n, ""))}
    kept: set[str] = set()
    preset_obj = preset_get(changes.get("preset", ""))
    if preset_obj is not None and "kind" not in changes:
        changes["kind"] = preset_obj.kind  # a new preset brings its kind
    for field, value in changes.items():
        if field in ("endpoint", "response_path", "index_path", "model") and value is None:
            value = ""
        if field == "headers":
            clear, kept = headers_resolve(provider, value)
            provider.headers_store(clear)
            continue
        setattr(provider, field, value)
    if provider.kind != RERANK and "index_path" not in changes:
        provider.index_path = ""  # an embedding provider has none (e.g. after a change to an embedding preset)
    _validate(provider, api_key=api_key)
    secrets_move_check(provider, before, api_key=api_key, headers_given="headers" in changes, kept=kept,
                       stored_secrets=stored_secrets)
    return _save(provider, api_key=api_key)


def provider_delete(*, tenant: Tenant, provider_id: int) -> None:
    provider_get(tenant=tenant, provider_id=provider_id).delete()


@dataclass(frozen=True)
class TestResult:
    ok: bool
    model: str
    dimensions: int | None = None  # a rerank provider's: None (it gives scores)
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None


def provider_test(*, tenant: Tenant, provider_id: int, model: str | None = None) -> TestResult:
    """One tiny real upstream call (one short text). Never raises for an upstream failure:
    the result says what failed (the upstream's message, never the secret)."""
    provider = provider_get(tenant=tenant, provider_id=provider_id)
    return provider_check(provider, model=model)


# Test calls run here, not in the web thread, so the web thread's wait ends at the deadline
# whatever the upstream does (an attempt's connect and read timeouts could each run to it). A
# few threads per process: a call still running past its deadline ends within two attempt
# timeouts, and a test still queued when its deadline passes is cancelled, never run.
_TEST_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="provider-test")
TEST_TIMED_OUT = "The provider did not answer within {seconds:g} s (PROVIDER_TEST_TIMEOUT_SECONDS)."


def provider_check(provider: ProviderConfig, *, model: str | None = None) -> TestResult:
    """provider_test without the tenant check, for the admin's "test" action: one short text, or
    (a rerank provider) one query and two documents. Ends within PROVIDER_TEST_TIMEOUT_SECONDS,
    retries included (then a 504 result)."""
    model = model or provider.model
    if not model and "{{model}}" in str(provider.effective_template):
        return TestResult(ok=False, model="", status=400, error="No model given and the provider has no default model.")
    started = time.perf_counter()
    limit = settings.PROVIDER_TEST_TIMEOUT_SECONDS
    deadline = time.time() + limit
    if provider.kind == RERANK:
        call = _TEST_POOL.submit(rerank_call, upstream_for(provider), model=model, query=TEST_TEXT,
                                 documents=TEST_DOCUMENTS, deadline=deadline)
    else:
        call = _TEST_POOL.submit(embed_call, upstream_for(provider), model=model, texts=[TEST_TEXT], deadline=deadline)
    try:
        vectors, _ = call.result(timeout=limit)
    except FuturesTimeout:
        call.cancel()
        return TestResult(ok=False, model=model, status=504, error=TEST_TIMED_OUT.format(seconds=limit))
    except ApiError as exc:
        return TestResult(ok=False, model=model, status=exc.status, error=exc.message)
    return TestResult(ok=True, model=model, dimensions=int(vectors.shape[1]) if vectors.ndim == 2 else None,
                      latency_ms=round((time.perf_counter() - started) * 1000, 1))
