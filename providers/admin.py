"""Providers in the admin: per tenant, the secret only as its mask, a "test" action.

The form takes a new API key write-only (blank keeps the stored one) and runs the same
validation as the API (SSRF check included) before saving. Secret header values show as their
masks; a mask sent back keeps its value. As in the API, a change of endpoint, preset, template or
headers needs the API key (and the secret header values) again.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from embedplatform.errors import InvalidInput
from providers.models import ProviderConfig, header_is_template
from providers.presets import EMBED, preset_get
from providers.services import _routing, _save, _validate, headers_resolve, provider_check, secrets_move_check


def help_text_html(text: str) -> SafeString:
    """A model's help text for the admin, which renders help text as HTML: escaped (so that
    `<name>/<model>` shows, not a tag), with `backticked` parts as code."""
    return mark_safe(re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text)))  # escaped first


class ProviderConfigForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave blank to keep the stored key.",
    )

    class Meta:
        model = ProviderConfig
        fields = ("tenant", "name", "preset", "kind", "endpoint", "request_template", "response_path", "index_path",
                  "headers", "model", "max_inputs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kind"].required = False  # a preset's is the preset's (clean)
        for field in self.fields.values():
            field.help_text = help_text_html(str(field.help_text))
        self._before = _routing(self.instance) if self.instance.pk else None
        self._stored_secrets: set[str] = set()
        if self._before is not None and self.instance.headers_encrypted:
            self._stored_secrets = {n for n, v in self._before["headers"].items() if not header_is_template(v)}
        self.headers_clear: dict | None = None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # ModelForm.clean answers cleaned_data
        provider = self.instance
        api_key = data.get("api_key") or None
        kept: set[str] = set()
        preset = preset_get(data.get("preset") or "")
        if preset is not None or not data.get("kind"):  # a preset's kind is the preset's; custom: as picked
            data["kind"] = preset.kind if preset is not None else (self.instance.kind or EMBED)
        try:
            for field in self.Meta.fields:
                if field == "headers" and field in data:
                    self.headers_clear, kept = headers_resolve(provider, data[field])
                    provider.headers_store(self.headers_clear)
                elif field in data:
                    setattr(provider, field, data[field])
            _validate(provider, api_key=api_key)
            if self._before is not None:
                secrets_move_check(provider, self._before, api_key=api_key, headers_given=True, kept=kept,
                                   stored_secrets=self._stored_secrets)
        except InvalidInput as exc:
            raise forms.ValidationError({exc.param: exc.message} if exc.param in self.fields else exc.message) from None
        return data


@admin.register(ProviderConfig)
class ProviderConfigAdmin(admin.ModelAdmin):
    form = ProviderConfigForm
    list_display = ("name", "tenant", "preset", "kind", "effective_endpoint", "model", "secret_mask", "updated_at")
    list_filter = ("preset", "kind")
    search_fields = ("name", "tenant__name", "endpoint")
    list_select_related = ("tenant",)
    readonly_fields = ("secret_mask", "created_at", "updated_at")
    exclude = ("headers_encrypted", "headers_digest")
    actions = ["test_providers"]

    def save_model(self, request: HttpRequest, obj: ProviderConfig, form: ProviderConfigForm, change: bool) -> None:
        obj.headers_store(form.headers_clear)  # the form put the shown (masked) values back on obj
        _save(obj, api_key=form.cleaned_data.get("api_key") or None)

    @admin.action(description="Test the selected providers (one short text, or one query and two documents, each)")
    def test_providers(self, request: HttpRequest, queryset: QuerySet[ProviderConfig]) -> None:
        for provider in queryset:
            result = provider_check(provider)
            if result.ok:
                what = f"{result.dimensions} dimensions" if result.dimensions is not None else "scores"
                self.message_user(request, f"{provider.name}: ok, {what} in {result.latency_ms} ms.", messages.SUCCESS)
            else:
                self.message_user(request, f"{provider.name}: {result.error}", messages.ERROR)
