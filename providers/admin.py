"""Providers in the admin: per tenant, the secret only as its mask, a "test" action.

The form takes a new API key write-only (blank keeps the stored one) and runs the same
validation as the API (SSRF check included) before saving.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from embedplatform.errors import InvalidInput
from providers.models import ProviderConfig
from providers.services import _save, _validate, provider_check


class ProviderConfigForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave blank to keep the stored key.",
    )

    class Meta:
        model = ProviderConfig
        fields = ("tenant", "name", "preset", "endpoint", "request_template", "response_path", "headers", "model",
                  "max_inputs")

    def clean(self):
        data = super().clean()
        provider = self.instance
        for field in self.Meta.fields:
            if field in data:
                setattr(provider, field, data[field])
        try:
            _validate(provider, api_key=data.get("api_key") or None)
        except InvalidInput as exc:
            raise forms.ValidationError({exc.param: exc.message} if exc.param in self.fields else exc.message) from None
        return data


@admin.register(ProviderConfig)
class ProviderConfigAdmin(admin.ModelAdmin):
    form = ProviderConfigForm
    list_display = ("name", "tenant", "preset", "effective_endpoint", "model", "secret_mask", "updated_at")
    list_filter = ("preset",)
    search_fields = ("name", "tenant__name", "endpoint")
    list_select_related = ("tenant",)
    readonly_fields = ("secret_mask", "created_at", "updated_at")
    actions = ["test_providers"]

    def save_model(self, request, obj, form, change):
        _save(obj, api_key=form.cleaned_data.get("api_key") or None)

    @admin.action(description="Test the selected providers (one short text each)")
    def test_providers(self, request, queryset):
        for provider in queryset:
            result = provider_check(provider)
            if result.ok:
                self.message_user(request, f"{provider.name}: ok, {result.dimensions} dimensions in {result.latency_ms} ms.",
                                  messages.SUCCESS)
            else:
                self.message_user(request, f"{provider.name}: {result.error}", messages.ERROR)
