"""Cache retention: per-entry hit stats (counted off the hit path, flushed in batches), pruning of
unused entries (manage.py cache_prune, CACHE_RETENTION_DAYS), DELETE /v1/cache and the cache
sizes in /v1/usage and the admin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from embeddings.cache import PUBLIC_SCOPE, cache_upsert, text_key
from embeddings.models import CachedEmbedding
from embeddings.registry import DEFAULT_MODEL, model_get
from embeddings.retention import cache_hits_flush, cache_prune, duration_parse
from tests.factories import UserFactory

MODEL = DEFAULT_MODEL


def _version() -> str:
    return model_get(MODEL).version


def _store(scope: int, *texts: str, model: str = MODEL, version: str | None = None, age: timedelta | None = None,
           dims: int = 384) -> None:
    cache_upsert(model=model, version=version or _version(), scope=scope,
                 rows=[(text_key(t), 2, np.full(dims, 0.5, dtype=np.float32)) for t in texts])
    if age is not None:
        CachedEmbedding.objects.filter(scope=scope, model=model, text_sha256__in=[text_key(t) for t in texts]).update(
            created_at=timezone.now() - age)


def _row(scope: int, text: str, model: str = MODEL) -> CachedEmbedding:
    return CachedEmbedding.objects.get(scope=scope, model=model, text_sha256=text_key(text))


def _embed(client, texts):
    return client.post("/v1/embeddings", {"model": MODEL, "input": texts}, format="json")


# --- hit stats ----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_hits_are_counted_off_the_hit_path_and_flushed_in_batches(alice, client_for, redis_db,
                                                                   django_assert_num_queries):
    """GIVEN entries of alice's scope and the public scope
    WHEN alice is served them (the second time from the process's memory, with no SQL at all)
    THEN nothing is written per request, and the flush sets hit_count and last_hit_at."""
    scope = alice.tenant.pk
    _store(scope, "mine a", "mine b", "never hit")
    _store(PUBLIC_SCOPE, "everyone's")
    client = client_for(alice)
    first = _embed(client, ["mine a", "everyone's", "mine a"])
    assert first.status_code == 200, first.content
    assert [d["cached"] for d in first.json()["data"]] == [True, True, True]
    assert _embed(client, ["mine a", "mine b"]).status_code == 200
    with django_assert_num_queries(0):  # a hot hit: still no SQL, the hit counted in the admission's round trip
        assert _embed(client, ["mine a", "mine b"]).json()["data"][0]["cached"] is True
    assert _row(scope, "mine a").hit_count == 0  # nothing written on the hit path

    started = timezone.now()
    assert cache_hits_flush(batch_size=2) == 3  # three entries, in two batches
    a, b, never, public = _row(scope, "mine a"), _row(scope, "mine b"), _row(scope, "never hit"), _row(
        PUBLIC_SCOPE, "everyone's")
    assert (a.hit_count, b.hit_count, public.hit_count, never.hit_count) == (3, 2, 1, 0)  # once per request
    assert a.last_hit_at >= started - timedelta(seconds=1) and never.last_hit_at is None
    assert not redis_db.keys("cachehits:*")  # nothing left waiting
    assert cache_hits_flush() == 0

    _embed(client, ["mine b"])
    assert cache_hits_flush() == 1 and _row(scope, "mine b").hit_count == 3  # later flushes add up


@pytest.mark.django_db
def test_a_hash_left_by_a_dead_flusher_is_picked_up_and_deleted_rows_are_skipped(alice, client_for, redis_db):
    scope = alice.tenant.pk
    _store(scope, "kept", "gone")
    _embed(client_for(alice), ["kept", "gone"])
    [member] = redis_db.smembers("cachehits:dirty")
    redis_db.rename(b"cachehits:" + member, b"cachehits:flushing:dead:" + member)  # a flusher died here
    redis_db.srem("cachehits:dirty", member)
    CachedEmbedding.objects.filter(text_sha256=text_key("gone")).delete()
    assert cache_hits_flush() == 1
    assert _row(scope, "kept").hit_count == 1 and not redis_db.keys("cachehits:*")


@pytest.mark.django_db
def test_the_beat_flush_task_flushes_hit_stats_too(alice, client_for, redis_db):
    from workers.tasks import usage_flush

    _store(alice.tenant.pk, "beat")
    _embed(client_for(alice), ["beat"])
    usage_flush()  # celery beat's workers.usage_flush, called as a function
    assert _row(alice.tenant.pk, "beat").hit_count == 1


@pytest.mark.django_db
def test_job_chunks_that_find_texts_cached_count_hits(alice, redis_db):
    from embeddings.jobs import ClaimedChunk
    from workers.jobfeed import JobFeed

    scope = alice.tenant.pk
    _store(scope, "job text")
    _store(PUBLIC_SCOPE, "public job text")
    chunk = ClaimedChunk(id=1, job_id="j", tenant_id=scope, model=MODEL, version=_version(), scope=scope, start=0,
                         texts=["job text", "public job text", "new"], lease="l", attempts=1)
    keys = [text_key(t) for t in chunk.texts]
    hits = JobFeed(lease_seconds=30, poll_seconds=1).lookup(chunk, keys)
    assert len(hits) == 2
    cache_hits_flush()
    assert _row(scope, "job text").hit_count == 1 and _row(PUBLIC_SCOPE, "public job text").hit_count == 1


# --- pruning -------------------------------------------------------------------------------------

def test_durations_parse_days_hours_minutes():
    assert duration_parse("90d") == timedelta(days=90)
    assert duration_parse("12h") == timedelta(hours=12)
    assert duration_parse(" 30m ") == timedelta(minutes=30)
    for bad in ("", "90", "d", "1.5d", "-3d", "3w", "90 days"):
        with pytest.raises(ValueError, match="is not a duration"):
            duration_parse(bad)


@pytest.fixture
def aged(alice, bob, redis_db):
    """alice: two old entries never hit, one old but hit lately, one new; bob and the public scope:
    one old entry each; and one old entry of alice's of another model."""
    a, b = alice.tenant.pk, bob.tenant.pk
    old = timedelta(days=100)
    _store(a, "old 1", "old 2", "old but hit", age=old)
    _store(a, "new")
    _store(a, "other model old", model="other-model", age=old)
    _store(b, "bob old", age=old)
    _store(PUBLIC_SCOPE, "public old", age=old)
    CachedEmbedding.objects.filter(text_sha256=text_key("old but hit")).update(
        last_hit_at=timezone.now() - timedelta(days=3))
    return a, b


@pytest.mark.django_db
def test_prune_deletes_entries_unused_for_that_long_in_batches(aged):
    assert cache_prune(unused_for=timedelta(days=90), dry_run=True) == 5
    assert CachedEmbedding.objects.count() == 7  # a dry run deletes nothing
    progress = []
    assert cache_prune(unused_for=timedelta(days=90), batch_size=2, on_batch=progress.append) == 5
    assert progress == [2, 4, 5]
    left = {bytes(r.text_sha256) for r in CachedEmbedding.objects.all()}
    assert left == {text_key("old but hit"), text_key("new")}


@pytest.mark.django_db
def test_prune_can_keep_to_one_tenant_and_one_model(aged):
    a, b = aged
    assert cache_prune(unused_for=timedelta(days=90), tenant_id=a, model=MODEL) == 2
    assert cache_prune(unused_for=timedelta(days=90), tenant_id=a) == 1  # the other model's
    assert CachedEmbedding.objects.filter(scope=b).count() == 1
    assert CachedEmbedding.objects.filter(scope=PUBLIC_SCOPE).count() == 1
    assert cache_prune(unused_for=timedelta(days=90), tenant_id=PUBLIC_SCOPE) == 1


@pytest.mark.django_db
def test_prune_flushes_pending_hits_first(alice, client_for, aged):
    """An entry served a moment ago (its hit still waiting in Redis) is not taken for unused."""
    assert _embed(client_for(alice), ["old 1"]).json()["data"][0]["cached"] is True
    assert cache_prune(unused_for=timedelta(days=90), tenant_id=alice.tenant.pk, model=MODEL) == 1
    assert _row(alice.tenant.pk, "old 1").hit_count == 1


@pytest.mark.django_db
def test_the_prune_command_prints_progress_and_the_total(aged):
    out = io.StringIO()
    call_command("cache_prune", "--unused-for", "90d", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "dry run: 5 entries unused for 90d would be deleted"
    assert CachedEmbedding.objects.count() == 7
    out = io.StringIO()
    call_command("cache_prune", "--unused-for", "90d", "--tenant", str(aged[0]), "--model", MODEL,
                 "--batch-size", "1", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert lines == ["deleted 1 entries so far", "deleted 2 entries so far",
                     f"deleted 2 entries of tenant {aged[0]} of model {MODEL} unused for 90d"]
    for args, message in ((["--unused-for", "soon"], "is not a duration"), (["--unused-for", "0d"], "more than 0"),
                          (["--unused-for", "1d", "--tenant", "999999"], "No tenant with id 999999")):
        with pytest.raises(CommandError, match=message):
            call_command("cache_prune", *args)


@pytest.mark.django_db
def test_cache_retention_days_prunes_daily_from_beat_on_the_default_queue(aged, settings):
    from workers.tasks import cache_prune as cache_prune_task

    assert "cache-prune" not in settings.CELERY_BEAT_SCHEDULE  # unset: kept forever
    settings.CACHE_RETENTION_DAYS = None
    assert cache_prune_task() == 0 and CachedEmbedding.objects.count() == 7
    settings.CACHE_RETENTION_DAYS = 90
    assert cache_prune_task() == 5

    # The settings as a deployment reads them, with CACHE_RETENTION_DAYS in its environment.
    env = {**os.environ, "CACHE_RETENTION_DAYS": "90", "DJANGO_SETTINGS_MODULE": "embedplatform.settings.base"}
    shown = subprocess.run(
        [sys.executable, "-c", "import django, json; django.setup(); from django.conf import settings; "
         "e = settings.CELERY_BEAT_SCHEDULE['cache-prune']; "
         "print(json.dumps({'task': e['task'], 'options': e.get('options', {}), 'hour': sorted(e['schedule'].hour)}))"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    entry = json.loads(shown.stdout.strip().splitlines()[-1])
    assert entry["task"] == cache_prune_task.name == "workers.cache_prune"
    assert "queue" not in entry["options"] and "workers.cache_prune" not in settings.CELERY_TASK_ROUTES
    assert entry["hour"] == [3]  # once a day


def test_cache_retention_days_must_be_a_positive_number(monkeypatch):
    import subprocess
    import sys

    from django.conf import settings

    env = {"CACHE_RETENTION_DAYS": "0", "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "embedplatform.settings.base",
           "DATABASE_URL": "postgresql://localhost/x", "REDIS_URL": settings.REDIS_URL, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True,
                          text=True, cwd=settings.BASE_DIR)
    assert done.returncode != 0 and "CACHE_RETENTION_DAYS=0" in done.stderr


# --- DELETE /v1/cache ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_tenant_deletes_its_own_entries_of_some_texts(alice, bob, jwt_for, redis_db):
    a, b = alice.tenant.pk, bob.tenant.pk
    _store(a, "forget me", "keep me")
    _store(a, "forget me", model="other-model")
    _store(b, "forget me")
    _store(PUBLIC_SCOPE, "forget me")
    response = jwt_for(alice).delete("/v1/cache", {"texts": ["forget me", "never cached"], "model": MODEL},
                                     format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"deleted": 1}
    assert not CachedEmbedding.objects.filter(scope=a, model=MODEL, text_sha256=text_key("forget me")).exists()
    assert CachedEmbedding.objects.filter(scope=a).count() == 2  # "keep me" and the other model's
    # Charlie test: bob's and the public entries are untouched, and bob cannot delete alice's.
    assert CachedEmbedding.objects.filter(scope__in=[b, PUBLIC_SCOPE]).count() == 2
    assert jwt_for(bob).delete("/v1/cache", {"texts": ["keep me"]}, format="json").json() == {"deleted": 0}
    assert _row(a, "keep me")
    # Without a model: every model's entries of the text.
    assert jwt_for(alice).delete("/v1/cache", {"texts": "forget me"}, format="json").json() == {"deleted": 1}


@pytest.mark.django_db
def test_a_text_is_deleted_behind_every_prompt_or_one_input_type(alice, jwt_for, redis_db, settings):
    """The embedding path keys sha256(prompt + text): the delete computes the same keys."""
    from embeddings.registry import model_specs

    spec = model_specs()[MODEL]
    monkeyed = {"query": "query: ", "document": "passage: "}
    original = dict(spec.prompts)
    spec.prompts.clear()
    spec.prompts.update(monkeyed)
    try:
        a = alice.tenant.pk
        _store(a, "t", "query: t", "passage: t", "query: u")
        client = jwt_for(alice)
        body = {"texts": ["t"], "model": MODEL, "input_type": "query"}
        assert client.delete("/v1/cache", body, format="json").json() == {"deleted": 1}
        assert not CachedEmbedding.objects.filter(text_sha256=text_key("query: t")).exists()
        assert client.delete("/v1/cache", {"texts": ["t", "u"]}, format="json").json() == {"deleted": 3}
        assert CachedEmbedding.objects.filter(scope=a).count() == 0
    finally:
        spec.prompts.clear()
        spec.prompts.update(original)


@pytest.mark.django_db
def test_a_tenant_deletes_all_its_entries_or_one_models(alice, bob, jwt_for, redis_db):
    a, b = alice.tenant.pk, bob.tenant.pk
    _store(a, "1", "2", "3")
    _store(a, "4", model="other-model")
    _store(b, "1")
    _store(PUBLIC_SCOPE, "1")
    client = jwt_for(alice)
    assert client.delete("/v1/cache", {"model": "other-model"}, format="json").json() == {"deleted": 1}
    assert client.delete("/v1/cache", format="json").json() == {"deleted": 3}
    assert not CachedEmbedding.objects.filter(scope=a).exists()
    assert CachedEmbedding.objects.filter(scope__in=[b, PUBLIC_SCOPE]).count() == 2


@pytest.mark.django_db
def test_deleting_in_batches_deletes_everything(alice, redis_db):
    from embeddings.retention import cache_delete

    _store(alice.tenant.pk, *[f"t{i}" for i in range(7)])
    assert cache_delete(tenant=alice.tenant, batch_size=3) == 7
    assert not CachedEmbedding.objects.exists()


@pytest.mark.django_db
def test_cache_deletion_needs_a_user_session(alice, client_for, redis_db):
    _store(alice.tenant.pk, "x")
    response = client_for(alice).delete("/v1/cache", {}, format="json")  # an API key, as /v1/keys refuses it
    assert response.status_code == 403 and response.json()["error"]["code"] == "jwt_required"
    assert client_for().delete("/v1/cache", {}, format="json").status_code == 401
    assert CachedEmbedding.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "param", "message"), [
    ({"texts": []}, "texts", "empty array"),
    ({"texts": [""]}, "texts", ""),
    ({"texts": 3}, "texts", "must be a string or an array"),
    ({"texts": ["a", 3]}, "texts", ""),
    ({"model": ""}, "model", ""),
    ({"input_type": "query"}, "input_type", "input_type applies to texts"),
    ({"texts": ["a"], "input_type": "title"}, "input_type", ""),
])
def test_bad_cache_deletions_are_400_in_the_envelope(alice, jwt_for, redis_db, body, param, message):
    _store(alice.tenant.pk, "a")
    response = jwt_for(alice).delete("/v1/cache", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert message in error["message"]
    assert CachedEmbedding.objects.count() == 1


def test_no_web_process_serves_a_deleted_vector_from_memory(alice, client_for, jwt_for, drainer):
    """GIVEN alice's text served from this process's hot tier
    WHEN she deletes it (the delete only moves her scope's epoch in Redis: any other process
    learns it the same way, in its admission round trip)
    THEN her next request is not answered from memory: it is computed again (cached: false)."""
    client = client_for(alice)
    text = "a private thought"
    assert _embed(client, [text]).json()["data"][0]["cached"] is False
    assert _embed(client, [text]).json()["data"][0]["cached"] is True  # now also in this process's memory
    assert jwt_for(alice).delete("/v1/cache", {"texts": [text]}, format="json").json() == {"deleted": 1}
    again = _embed(client, [text])
    assert again.status_code == 200 and again.json()["data"][0]["cached"] is False
    assert _embed(client, [text]).json()["data"][0]["cached"] is True  # stored and served again as usual
    assert client.get("/v1/usage").json()["quota"]["used_today"] == 4  # the refused admission counted nothing


# --- sizes ------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_usage_shows_the_cache_size_per_model(alice, bob, client_for, redis_db):
    _store(alice.tenant.pk, "1", "2", "3")
    _store(alice.tenant.pk, "4", model="small-model", dims=8)
    _store(PUBLIC_SCOPE, "5")
    body = client_for(alice).get("/v1/usage").json()
    assert body["total_cached"] == 4
    assert body["cache"] == {
        "entries": 4, "bytes": 3 * 384 * 4 + 8 * 4,
        "models": [{"model": MODEL, "entries": 3, "bytes": 3 * 384 * 4},
                   {"model": "small-model", "entries": 1, "bytes": 32}],
        "limit_bytes": 16 << 30, "full": False,  # the paid tier's max_cache_bytes (embeddings/cachecap.py)
    }
    assert client_for(bob).get("/v1/usage").json()["cache"] == {"entries": 0, "bytes": 0, "models": [],
                                                                 "limit_bytes": 16 << 30, "full": False}


@pytest.mark.django_db
def test_the_tenant_admin_page_shows_the_cache_size(alice, redis_db):
    from django.test import Client
    from django.urls import reverse

    _store(alice.tenant.pk, "1", "2")
    client = Client()
    client.force_login(UserFactory(staff=True, email="ops@example.com", password="x" * 12))
    page = client.get(reverse("admin:accounts_tenant_change", args=[alice.tenant.pk]))
    assert page.status_code == 200
    assert f"{MODEL}: 2 entries, 3.0\xa0KB" in page.content.decode()
