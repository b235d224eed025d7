from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from providers.models import ProviderConfig
from tests.factories import ProviderFactory, UserFactory
from tests.providers.conftest import SECRET

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(alice):
    client = Client()
    client.force_login(UserFactory(staff=True, email="ops@example.com", password="x" * 12))
    return client


@pytest.fixture
def provider(alice, fake):
    return ProviderFactory(tenant=alice.tenant, endpoint=fake.url())


def test_admin_pages_show_only_the_mask(staff, provider):
    for url in (reverse("admin:providers_providerconfig_changelist"),
                reverse("admin:providers_providerconfig_change", args=[provider.pk]),
                reverse("admin:providers_providerconfig_add")):
        response = staff.get(url)
        assert response.status_code == 200
        assert SECRET not in response.content.decode()
    assert "sk-...WXYZ" in staff.get(reverse("admin:providers_providerconfig_changelist")).content.decode()


def test_admin_test_action_reports_each_provider(staff, provider, fake):
    response = staff.post(reverse("admin:providers_providerconfig_changelist"),
                          {"action": "test_providers", "_selected_action": [provider.pk]}, follow=True)
    assert any(str(m).startswith("myopenai: ok, 8 dimensions") for m in response.context["messages"])
    assert len(fake.requests) == 1


def test_admin_form_validates_like_the_api_and_keeps_the_key_when_blank(staff, provider, alice):
    url = reverse("admin:providers_providerconfig_change", args=[provider.pk])
    form = {"tenant": alice.tenant.pk, "name": "myopenai", "preset": "openai", "endpoint": "https://10.0.0.1/x",
            "request_template": "null", "response_path": "", "headers": "null", "model": "m", "max_inputs": "",
            "api_key": ""}
    response = staff.post(url, form)
    assert response.status_code == 200 and "a private address" in response.content.decode()
    response = staff.post(url, {**form, "endpoint": provider.endpoint})
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.model == "m" and provider.secret_mask == "sk-...WXYZ"
    assert ProviderConfig.objects.count() == 1


HEADER_VALUE = "org-secret-value-56789"


@pytest.fixture
def header_provider(alice, fake):
    return ProviderFactory(tenant=alice.tenant, name="withheader", endpoint=fake.url(),
                           headers={"Authorization": "Bearer {{api_key}}", "X-Org": HEADER_VALUE})


def _form(provider, **changes) -> dict:
    import json

    return {"tenant": provider.tenant_id, "name": provider.name, "preset": provider.preset, "endpoint": provider.endpoint,
            "request_template": "null", "response_path": "", "headers": json.dumps(provider.headers),
            "model": provider.model, "max_inputs": "", "api_key": "", **changes}


def test_admin_shows_header_values_masked_and_keeps_them_when_sent_back(staff, header_provider, fake):
    url = reverse("admin:providers_providerconfig_change", args=[header_provider.pk])
    for page in (staff.get(url), staff.get(reverse("admin:providers_providerconfig_changelist"))):
        assert HEADER_VALUE not in page.content.decode() and HEADER_VALUE[3:-4] not in page.content.decode()
    assert "org...6789" in staff.get(url).content.decode()

    response = staff.post(url, _form(header_provider, model="m"))
    assert response.status_code == 302, response.content.decode()[-2000:]
    header_provider.refresh_from_db()
    assert header_provider.model == "m" and header_provider.headers_clear()["X-Org"] == HEADER_VALUE


def test_admin_form_needs_the_key_again_to_change_the_endpoint(staff, header_provider, fake, settings):
    url = reverse("admin:providers_providerconfig_change", args=[header_provider.pk])
    response = staff.post(url, _form(header_provider, endpoint=fake.url("/v1/elsewhere")))
    assert response.status_code == 200 and "send the api_key again" in response.content.decode()
    response = staff.post(url, _form(header_provider, endpoint=fake.url("/v1/elsewhere"), api_key=SECRET))
    assert response.status_code == 200 and "send the headers again" in response.content.decode()  # X-Org too
    header_provider.refresh_from_db()
    assert header_provider.endpoint == fake.url()
