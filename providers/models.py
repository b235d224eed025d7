from __future__ import annotations

import re
from typing import Any

import orjson
from django.db import models
from django.utils import timezone

from embedplatform.masking import secret_mask
from providers.crypto import secret_decrypt, secret_digest, secret_encrypt
from providers.presets import (
    BEARER,
    CUSTOM,
    CUSTOM_MAX_DOCUMENTS,
    CUSTOM_MAX_INPUTS,
    EMBED,
    KINDS,
    PRESET_CHOICES,
    RERANK,
    preset_get,
)


class ProviderConfig(models.Model):
    """A tenant's upstream embedding or rerank API (BYOK), addressed as `<name>/<upstream model>`.

`kind` says which: "embed" (vectors, POST /v1/embeddings) or "rerank" (a query's relevance
scores for documents, POST /v1/rerank); a preset's kind is the preset's.

    Blank endpoint / request_template / response_path / headers mean "the preset's". The
    secret is stored only as a Fernet token (providers/crypto.py) plus a display mask; it
    never leaves the worker that calls the upstream. So are header values other than an
    `{{api_key}}` template ("Bearer {{api_key}}"): `headers` holds their masks,
    `headers_encrypted` the Fernet token of their clear values (see `headers_store`).
    """

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=64, help_text="The first part of `<name>/<model>`.")
    preset = models.CharField(max_length=32, choices=[(p, p) for p in PRESET_CHOICES], default=CUSTOM)
    endpoint = models.CharField(max_length=2000, blank=True, default="", help_text="Blank: the preset's.")
    request_template = models.JSONField(null=True, blank=True, help_text="Blank: the preset's.")
    response_path = models.CharField(max_length=500, blank=True, default="",
                                     help_text="JSONPath to the vectors (rerank: to the relevance scores); blank: the "
                                               "preset's.")
    kind = models.CharField(max_length=8, choices=[(k, k) for k in KINDS], default=EMBED,
                            help_text="embed: vectors (POST /v1/embeddings); rerank: relevance scores (POST /v1/rerank). "
                                      "A preset's kind is the preset's.")
    index_path = models.CharField(
        max_length=500, blank=True, default="",
        help_text="Rerank: JSONPath to each score's document index, e.g. `$.results[*].index`; blank: the preset's, "
                  "or (custom) the scores come in document order.",
    )
    headers = models.JSONField(
        null=True, blank=True,
        help_text='Blank: the preset\'s, or {"Authorization": "Bearer {{api_key}}"}. Values other than an {{api_key}} '
                  "template are secrets: stored encrypted and shown masked (send a mask back to keep its value).",
    )
    headers_encrypted = models.TextField(blank=True, default="", help_text="Fernet token of the secret header values.")
    headers_digest = models.CharField(max_length=64, blank=True, default="",
                                      help_text="Keyed digest of the secret header values (part of the cache version).")
    model = models.CharField(max_length=200, blank=True, default="", help_text="Default upstream model (tests, /v1/models).")
    max_inputs = models.PositiveIntegerField(null=True, blank=True,
                                             help_text="Texts (rerank: documents) per upstream call; blank: the preset's.")
    secret_encrypted = models.TextField(blank=True, default="", help_text="Fernet token of the API key.")
    secret_mask = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    tenant_id: int  # the `tenant` column (declared for the type checker)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="provider_name_per_tenant")]
        ordering = ["tenant_id", "name"]
        verbose_name = "provider"

    def __str__(self) -> str:
        return f"{self.name} ({self.preset}, tenant {self.tenant_id})"

    # --- the effective configuration: the tenant's values over the preset's ------------------
    @property
    def effective_endpoint(self) -> str:
        preset = preset_get(self.preset)
        return self.endpoint or (preset.endpoint if preset else "")

    @property
    def effective_template(self) -> dict | None:
        preset = preset_get(self.preset)
        return self.request_template if self.request_template is not None else (preset.request_template if preset else None)

    @property
    def effective_response_path(self) -> str:
        preset = preset_get(self.preset)
        return self.response_path or (preset.response_path if preset else "")

    @property
    def effective_index_path(self) -> str:
        """A rerank provider's JSONPath to each score's document index; "" = scores in document order."""
        if self.kind != RERANK:
            return ""
        preset = preset_get(self.preset)
        return self.index_path or (preset.index_path if preset else "")

    @property
    def effective_headers(self) -> dict[str, str]:
        """The headers as shown: {{api_key}} templates as written, every other value masked."""
        preset = preset_get(self.preset)
        if self.headers is not None:
            return self.headers
        return dict(preset.headers) if preset else dict(BEARER)

    def headers_clear(self) -> dict[str, str]:
        """The headers as sent (before {{api_key}} is filled in): secret values decrypted.
        Raises SecretUnreadable when ENCRYPTION_KEY cannot open them."""
        public = self.effective_headers
        if self.headers is None or not self.headers_encrypted:
            return dict(public)
        secrets = orjson.loads(secret_decrypt(self.headers_encrypted))
        return {name: secrets.get(name, value) for name, value in public.items()}

    def headers_store(self, clear: dict[str, str] | None) -> None:
        """Sets the headers from their clear values: templates stay as written, every other value
        is encrypted (headers_encrypted) and shown by its mask (headers); headers_digest changes
        exactly when a secret value does."""
        if clear is None:
            self.headers, self.headers_encrypted, self.headers_digest = None, "", ""
            return
        secrets = {name: value for name, value in clear.items() if not header_is_template(value)}
        self.headers = {name: secret_mask(value) if name in secrets else value for name, value in clear.items()}
        if secrets:
            plain = orjson.dumps(secrets, option=orjson.OPT_SORT_KEYS).decode()
            self.headers_encrypted, self.headers_digest = secret_encrypt(plain), secret_digest(plain)
        else:
            self.headers_encrypted, self.headers_digest = "", ""

    @property
    def effective_max_inputs(self) -> int:
        preset = preset_get(self.preset)
        custom = CUSTOM_MAX_DOCUMENTS if self.kind == RERANK else CUSTOM_MAX_INPUTS
        limit = self.max_inputs or (preset.max_inputs if preset else custom)
        if _uses_single_text(self.effective_template):
            return 1
        return limit

    @property
    def usage_path(self) -> str:
        preset = preset_get(self.preset)
        return preset.usage_path if preset and self.request_template is None else ""


_TEMPLATE_VALUE = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9._-]{0,31}\s+)?\{\{\s*api_key\s*\}\}\s*$")


def header_is_template(value: str) -> bool:
    """True for "{{api_key}}" or "<scheme> {{api_key}}" ("Bearer {{api_key}}"): no secret in it.
    Every other header value may be one, so it is stored encrypted and shown masked."""
    return isinstance(value, str) and bool(_TEMPLATE_VALUE.match(value))


def _uses_single_text(template: Any) -> bool:
    if template == "{{text}}":
        return True
    if isinstance(template, dict):
        return any(_uses_single_text(v) for v in template.values())
    if isinstance(template, list):
        return any(_uses_single_text(v) for v in template)
    return False
