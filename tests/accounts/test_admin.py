"""Every admin page renders for staff; non-staff users are refused."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import ApiKey, DailyUsage
from embeddings.cache import cache_upsert, text_key
from embeddings.models import CachedEmbedding, Job
from tests.factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(alice):
    staff = UserFactory(staff=True, email="ops@example.com", password="x" * 12)
    DailyUsage.objects.create(tenant=alice.tenant, day="2026-11-20", model="all-MiniLM-L6-v2", cache_hits=3)
    cache_upsert(model="all-MiniLM-L6-v2", version="v", scope=alice.tenant.pk,
                 rows=[(text_key("hello"), 2, np.ones(4, dtype=np.float32))])
    JobFactory(tenant=alice.tenant, texts=["queued a", "queued b"])
    client = Client()
    client.force_login(staff)
    return client


def _pages(alice):
    key = alice.api_key
    user = alice.tenant.users.first()
    usage = DailyUsage.objects.first()
    cached = CachedEmbedding.objects.first()
    pages = [reverse("admin:index")]
    for model, obj in (("tier", alice.tenant.tier), ("tenant", alice.tenant), ("user", user), ("apikey", key),
                       ("dailyusage", usage)):
        pages += [reverse(f"admin:accounts_{model}_changelist"), reverse(f"admin:accounts_{model}_change", args=[obj.pk])]
    pages += [reverse("admin:embeddings_cachedembedding_changelist"),
              reverse("admin:embeddings_cachedembedding_change", args=[cached.pk])]
    job = Job.objects.first()
    pages += [reverse("admin:embeddings_job_changelist"), reverse("admin:embeddings_job_change", args=[job.pk])]
    return pages


def test_every_admin_page_renders_for_staff(staff_client, alice):
    for url in _pages(alice):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        assert alice.key not in response.content.decode()
    # filters and search work
    for url in ("admin:accounts_dailyusage_changelist", "admin:embeddings_cachedembedding_changelist"):
        assert staff_client.get(reverse(url), {"q": "all-MiniLM"}).status_code == 200
    assert staff_client.get(reverse("admin:embeddings_cachedembedding_changelist"), {"q": alice.tenant.pk}).status_code == 200


def test_the_admin_revoke_action(staff_client, alice):
    response = staff_client.post(reverse("admin:accounts_apikey_changelist"),
                                 {"action": "revoke", "_selected_action": [alice.api_key.pk]})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=alice.api_key.pk).revoked_at is not None


def test_non_staff_users_are_refused(staff_client, alice):
    client = Client()
    assert client.get(reverse("admin:accounts_tenant_changelist")).status_code == 302  # to the login page
    client.force_login(alice.tenant.users.first())
    for url in _pages(alice):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_the_admin_cancels_jobs(staff_client, alice):
    job = Job.objects.get(tenant=alice.tenant)
    response = staff_client.post(reverse("admin:embeddings_job_changelist"),
                                 {"action": "cancel", "_selected_action": [str(job.pk)]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled" and not job.chunks.filter(status="queued").exists()


def test_the_admin_static_files_are_served_with_debug_off(client, settings):
    settings.DEBUG = False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200 and b"body" in b"".join(response.streaming_content)


def test_the_webhook_secret_is_masked_and_regenerated_by_an_action(staff_client, alice):
    """The tenant page never shows the webhook secret in clear nor lets it be typed in; the
    "Regenerate webhook secret" action replaces it (the tenant reads it via GET /v1/webhook-secret)."""
    tenant = alice.tenant
    before = tenant.webhook_secret
    url = reverse("admin:accounts_tenant_change", args=[tenant.pk])
    page = staff_client.get(url).content.decode()
    assert before not in page and before[3:-4] not in page
    assert f"{before[:3]}...{before[-4:]}" in page
    assert 'name="webhook_secret"' not in page
    assert before not in staff_client.get(reverse("admin:accounts_tenant_changelist")).content.decode()

    response = staff_client.post(reverse("admin:accounts_tenant_changelist"),
                                 {"action": "regenerate_webhook_secret", "_selected_action": [tenant.pk]}, follow=True)
    assert any("Regenerated the webhook secret of 1 tenant" in str(m) for m in response.context["messages"])
    tenant.refresh_from_db()
    assert tenant.webhook_secret != before and len(tenant.webhook_secret) == 64
