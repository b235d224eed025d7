from __future__ import annotations

from django.db import models
from django.utils import timezone

from providers.presets import BEARER, CUSTOM, CUSTOM_MAX_INPUTS, PRESET_CHOICES, preset_get


class ProviderConfig(models.Model):
    """A tenant's upstream embedding API (BYOK), addressed as `<name>/<upstream model>`.

    Blank endpoint / request_template / response_path / headers mean "the preset's". The
    secret is stored only as a Fernet token (providers/crypto.py) plus a display mask; it
    never leaves the worker that calls the upstream.
    """

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=64, help_text="The first part of `<name>/<model>`.")
    preset = models.CharField(max_length=32, choices=[(p, p) for p in PRESET_CHOICES], default=CUSTOM)
    endpoint = models.CharField(max_length=2000, blank=True, default="", help_text="Blank: the preset's.")
    request_template = models.JSONField(null=True, blank=True, help_text="Blank: the preset's.")
    response_path = models.CharField(max_length=500, blank=True, default="", help_text="JSONPath; blank: the preset's.")
    headers = models.JSONField(null=True, blank=True, help_text='Blank: the preset\'s, or {"Authorization": "Bearer {{api_key}}"}.')
    model = models.CharField(max_length=200, blank=True, default="", help_text="Default upstream model (tests, /v1/models).")
    max_inputs = models.PositiveIntegerField(null=True, blank=True, help_text="Texts per upstream call; blank: the preset's.")
    secret_encrypted = models.TextField(blank=True, default="", help_text="Fernet token of the API key.")
    secret_mask = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

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
    def effective_headers(self) -> dict[str, str]:
        preset = preset_get(self.preset)
        if self.headers is not None:
            return self.headers
        return dict(preset.headers) if preset else dict(BEARER)

    @property
    def effective_max_inputs(self) -> int:
        preset = preset_get(self.preset)
        limit = self.max_inputs or (preset.max_inputs if preset else CUSTOM_MAX_INPUTS)
        if _uses_single_text(self.effective_template):
            return 1
        return limit

    @property
    def usage_path(self) -> str:
        preset = preset_get(self.preset)
        return preset.usage_path if preset and self.request_template is None else ""


def _uses_single_text(template) -> bool:
    if template == "{{text}}":
        return True
    if isinstance(template, dict):
        return any(_uses_single_text(v) for v in template.values())
    if isinstance(template, list):
        return any(_uses_single_text(v) for v in template)
    return False
