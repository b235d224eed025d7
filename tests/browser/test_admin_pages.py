"""The operators' admin in a real browser (headless Chromium through Selenium, against the live
server): log in, the tenant list's usage and bulk actions, the usage chart and its CSV, jobs
(newest first, progress, rate, ETA, search by id prefix, the cancel button), the workers page and
the form fixes. Each page is saved as a screenshot (conftest.py)."""

from __future__ import annotations

import csv
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from accounts.models import DailyUsage, Tenant, Tier
from accounts.quotas import quota_consume
from embeddings.models import CachedEmbedding, Job, JobChunk
from tests.browser.conftest import download, wait_for
from tests.factories import JobFactory, UserFactory

OPS_EMAIL, OPS_PASSWORD = "ops@example.com", "operator password 1"
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def admin_browser(chromium, live_server, redis_db, tiers):
    """The browser, logged in to the live server's admin as a superuser through the login form."""
    UserFactory(staff=True, email=OPS_EMAIL, password=OPS_PASSWORD)
    chromium.delete_all_cookies()
    chromium.get(f"{live_server.url}/admin/login/?next=/admin/")
    chromium.find_element(By.NAME, "username").send_keys(OPS_EMAIL)
    chromium.find_element(By.NAME, "password").send_keys(OPS_PASSWORD)
    _submit(chromium, chromium.find_element(By.CSS_SELECTOR, "input[type=submit]"))
    wait_for(lambda: chromium.find_elements(By.ID, "operators"), what="the admin index")
    chromium.base = live_server.url
    return chromium


def _submit(browser, element) -> None:
    """Clicks `element` and waits until the browser has left the page (a form post and its redirect)."""
    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(page))


def _go(browser, path: str) -> None:
    browser.get(browser.base + path)


def _text(browser, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def _messages(browser) -> str:
    return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "ul.messagelist li"))


def _run_action(browser, action: str, names: list[str]) -> None:
    """Ticks the rows of `names` on a change list and runs `action`."""
    for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"):
        if any(n in row.text for n in names):
            row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value(action)
    _submit(browser, browser.find_element(By.CSS_SELECTOR, "button[name=index]"))


def test_the_index_shows_the_work_waiting_per_model(admin_browser, alice, screenshot):
    JobFactory(tenant=alice.tenant, texts=["one", "two", "three"])
    _go(admin_browser, "/admin/")
    row = admin_browser.find_element(By.CSS_SELECTOR, f'#work-waiting tr[data-model="{MODEL}"]')
    assert row.find_element(By.CSS_SELECTOR, ".job-texts-left").text == "3"
    assert row.find_element(By.CSS_SELECTOR, ".jobs").text == "0 running / 1 queued"
    assert "Workers" in _text(admin_browser, "#operators")
    screenshot("admin-index")


def test_tenants_show_usage_and_are_suspended_and_moved_in_bulk(admin_browser, alice, bob, charlie, client_for,
                                                                 screenshot):
    quota_consume(tenant=alice.tenant, texts=1_234)
    JobFactory(tenant=bob.tenant, texts=["a", "b"])
    _go(admin_browser, "/admin/accounts/tenant/")
    alice_row = next(r for r in admin_browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
                     if "alice@example.com" in r.text)
    assert alice_row.find_element(By.CSS_SELECTOR, "td.field-texts_today").text == "1,234 / 50,000 (2.5%)"
    assert alice_row.find_element(By.CSS_SELECTOR, "td.field-texts_month").text == "1,234 / 1,500,000 (0.1%)"
    assert alice_row.find_element(By.CSS_SELECTOR, "td.field-keys").text == "1 / 50"
    assert alice_row.find_element(By.CSS_SELECTOR, "td.field-running_jobs").text == "-"
    bob_row = next(r for r in admin_browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
                   if "bob@example.com" in r.text)
    assert bob_row.find_element(By.CSS_SELECTOR, "td.field-texts_today").text == "2 / 50,000 (0.0%)"
    assert bob_row.find_element(By.CSS_SELECTOR, "td.field-running_jobs").text == "0 running, 1 queued"
    screenshot("tenants-list")

    _run_action(admin_browser, "suspend", ["alice@example.com", "bob@example.com"])
    assert "Suspended 2 tenant(s)" in _messages(admin_browser)
    assert set(Tenant.objects.filter(is_active=False).values_list("name", flat=True)) == {
        "alice@example.com", "bob@example.com"}
    assert client_for(alice).get("/v1/usage").status_code == 401  # the key fails at once
    screenshot("tenants-suspended")

    _run_action(admin_browser, "reactivate", ["alice@example.com"])
    assert "Reactivated 1 tenant(s)" in _messages(admin_browser)
    assert Tenant.objects.get(pk=alice.tenant.pk).is_active

    _run_action(admin_browser, "change_tier", ["charlie@example.com", "bob@example.com"])
    assert admin_browser.find_element(By.ID, "change-tier-tenants").text.count("@example.com") == 2
    Select(admin_browser.find_element(By.NAME, "tier")).select_by_visible_text("paid")
    screenshot("tenants-change-tier")
    _submit(admin_browser, admin_browser.find_element(By.NAME, "_apply"))
    assert "Moved 1 tenant(s) to the paid tier" in _messages(admin_browser)  # bob was on it already
    assert Tenant.objects.get(pk=charlie.tenant.pk).tier.name == "paid"

    _go(admin_browser, f"/admin/accounts/tenant/{alice.tenant.pk}/change/")
    usage = _text(admin_browser, "div.field-usage_now")
    assert "Today: 1,234 / 50,000 (2.5%) texts" in usage and "Daily usage chart" in usage
    screenshot("tenant-page")
    _go(admin_browser, f"/admin/accounts/tenant/{bob.tenant.pk}/change/")
    jobs = admin_browser.find_elements(By.CSS_SELECTOR, "#jobs-group tbody tr.has_original")
    assert len(jobs) == 1 and "Queued" in jobs[0].text and "0/2 (0.0%)" in jobs[0].text


def test_the_usage_page_draws_the_chart_and_exports_csv(admin_browser, alice, bob, screenshot):
    today = timezone.now().date()
    rows = [  # (days ago, tenant, model, hits, misses)
        (2, alice, MODEL, 10, 5), (1, alice, MODEL, 0, 20), (1, alice, "tiny-model", 7, 0), (0, bob, MODEL, 3, 4),
    ]
    for ago, world, model, hits, misses in rows:
        DailyUsage.objects.create(tenant=world.tenant, day=today - timedelta(days=ago), model=model, cache_hits=hits,
                                  cache_misses=misses, tokens=hits + misses, compute_ms=1.5)
    _go(admin_browser, f"/admin/accounts/dailyusage/report/?date_from={today - timedelta(days=6)}&date_to={today}")
    bars = admin_browser.find_elements(By.CSS_SELECTOR, "#usage-chart svg rect.bar")
    drawn = sorted((b.get_attribute("data-label"), b.get_attribute("data-series"), b.get_attribute("data-value"))
                   for b in bars)
    expected = sorted((str(today - timedelta(days=ago)), f"{w.tenant.name} · {model}", str(hits + misses))
                      for ago, w, model, hits, misses in rows)
    assert drawn == expected
    assert all(float(b.get_attribute("height")) > 0 for b in bars)
    legend = _text(admin_browser, "#usage-legend")
    assert "alice@example.com · all-MiniLM-L6-v2: 35" in legend and "bob@example.com · all-MiniLM-L6-v2: 7" in legend
    screenshot("usage-chart")

    path = download(admin_browser, lambda: admin_browser.find_element(By.ID, "usage-csv").click(), ".csv")
    with path.open(newline="") as f:
        got = list(csv.DictReader(f))
    assert [(r["day"], r["tenant"], r["model"], r["cache_hits"], r["cache_misses"], r["texts"]) for r in got] == sorted(
        ((str(today - timedelta(days=ago)), w.tenant.name, model, str(hits), str(misses), str(hits + misses))
         for ago, w, model, hits, misses in rows), key=lambda r: (r[0], r[1], r[2]))

    # one tenant, one model
    Select(admin_browser.find_element(By.NAME, "tenant")).select_by_visible_text("alice@example.com")
    Select(admin_browser.find_element(By.NAME, "model")).select_by_visible_text("tiny-model")
    _submit(admin_browser, admin_browser.find_element(By.CSS_SELECTOR, "#usage-filters input[type=submit]"))
    bars = admin_browser.find_elements(By.CSS_SELECTOR, "#usage-chart svg rect.bar")
    assert [(b.get_attribute("data-series"), b.get_attribute("data-value")) for b in bars] == [
        ("alice@example.com · tiny-model", "7")]


def test_jobs_newest_first_with_rate_eta_search_and_cancel(admin_browser, alice, screenshot):
    now = timezone.now()
    old = JobFactory(tenant=alice.tenant, texts=["old"])
    Job.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=2))
    running = JobFactory(tenant=alice.tenant, texts=[f"text {i}" for i in range(100)])
    Job.objects.filter(pk=running.pk).update(created_at=now - timedelta(minutes=5), status="running", done=40,
                                             started_at=now - timedelta(seconds=20))
    newest = JobFactory(tenant=alice.tenant, texts=["new"])

    _go(admin_browser, "/admin/embeddings/job/")
    ids = [a.text for a in admin_browser.find_elements(By.CSS_SELECTOR, "#result_list tbody th a")]
    assert ids == [str(newest.pk), str(running.pk), str(old.pk)]
    row = admin_browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")[1]
    assert "40/100 (40.0%)" in row.find_element(By.CSS_SELECTOR, "td.field-progress").text
    assert re.fullmatch(r"[12](\.\d)? texts/s", row.find_element(By.CSS_SELECTOR, "td.field-rate").text)
    assert re.fullmatch(r"\d+ s", row.find_element(By.CSS_SELECTOR, "td.field-eta").text)
    screenshot("jobs-list")

    search = admin_browser.find_element(By.ID, "searchbar")
    search.send_keys(str(running.pk)[:8])
    _submit(admin_browser, admin_browser.find_element(By.CSS_SELECTOR, "#changelist-search input[type=submit]"))
    assert [a.text for a in admin_browser.find_elements(By.CSS_SELECTOR, "#result_list tbody th a")] == [str(running.pk)]

    _submit(admin_browser, admin_browser.find_element(By.LINK_TEXT, str(running.pk)))
    assert not admin_browser.find_elements(By.NAME, "_save")  # read-only: no Save buttons
    assert "40/100" in _text(admin_browser, "div.field-progress")
    assert "texts/s" in _text(admin_browser, "div.field-rate")
    screenshot("job-page")
    _submit(admin_browser, admin_browser.find_element(By.ID, "job-cancel"))
    assert "cancelled" in _messages(admin_browser)
    running.refresh_from_db()
    assert running.status == "cancelled"
    assert not JobChunk.objects.filter(job=running, status="queued").exists()
    assert not admin_browser.find_elements(By.ID, "job-cancel")  # nothing left to cancel
    screenshot("job-cancelled")


def test_the_workers_page_shows_the_live_loop(admin_browser, alice, client_for, drainer, screenshot):
    _go(admin_browser, "/admin/embeddings/job/workers/")  # the first look reads the counters
    row = admin_browser.find_element(By.CSS_SELECTOR, 'tr.worker[data-worker="test-drainer"]')
    assert MODEL in row.text
    for i in range(3):
        response = client_for(alice).post("/v1/embeddings", {"model": MODEL, "input": [f"w{i} {j}" for j in range(5)]},
                                          format="json")
        assert response.status_code == 200
    _go(admin_browser, "/admin/embeddings/job/workers/")
    row = admin_browser.find_element(By.CSS_SELECTOR, 'tr.worker[data-worker="test-drainer"]')
    assert int(row.find_element(By.CSS_SELECTOR, ".texts-total").text.replace(",", "")) >= 15
    assert float(row.find_element(By.CSS_SELECTOR, ".texts-per-s").text) > 0
    assert float(row.find_element(By.CSS_SELECTOR, ".texts-per-pass").text) >= 1
    assert re.match(r"\d+ s ago", row.find_element(By.CSS_SELECTOR, ".last-beat").text)
    model_row = admin_browser.find_element(By.CSS_SELECTOR, f'#work-waiting tr[data-model="{MODEL}"]')
    assert model_row.find_element(By.CSS_SELECTOR, ".queue-depth").text == "0"
    screenshot("workers")


def test_the_form_fixes(admin_browser, alice, screenshot):
    tier = Tier.objects.get(name="paid")
    _go(admin_browser, f"/admin/accounts/tier/{tier.pk}/change/")
    for name in ("daily_limit", "monthly_limit", "max_job_texts", "max_cache_bytes"):
        text_w, box_w = admin_browser.execute_script("""
            const el = document.getElementById(arguments[0]); const cs = getComputedStyle(el);
            const ctx = document.createElement('canvas').getContext('2d'); ctx.font = cs.font;
            return [ctx.measureText(el.value).width,
                    el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)];""", f"id_{name}")
        assert text_w + 16 <= box_w, f"{name}: {text_w} px of text in a {box_w} px box"  # 16: the spin buttons
    assert admin_browser.find_element(By.ID, "id_monthly_limit").get_attribute("value") == "1500000"
    screenshot("tier-form")

    _go(admin_browser, "/admin/providers/providerconfig/add/")
    assert "The first part of <name>/<model>." in _text(admin_browser, "#id_name_helptext")
    screenshot("provider-form")

    CachedEmbedding.objects.create(text_sha256=b"\x01" * 32, model=MODEL, model_version="v", scope=alice.tenant.pk,
                                   dims=4, tokens=1, vector=b"\x00" * 16)
    usage = DailyUsage.objects.create(tenant=alice.tenant, day="2026-01-01", model=MODEL)
    for name, path in (("cache-entry-read-only", f"/admin/embeddings/cachedembedding/{CachedEmbedding.objects.get().pk}/change/"),
                       ("usage-row-read-only", f"/admin/accounts/dailyusage/{usage.pk}/change/")):
        _go(admin_browser, path)
        assert not admin_browser.find_elements(By.NAME, "_save"), path
        assert admin_browser.find_elements(By.CSS_SELECTOR, ".submit-row a.closelink"), path
        screenshot(name)
