"""The operators' reads on jobs and workers: progress, rate and ETA; the work waiting per model; the
live drain loops with their throughput, as the loops publish them (heartbeat and counters); the
jobs list's order and id-prefix search; the cancel button's view."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse

from embeddings.admin_selectors import duration_text, job_progress, work_waiting, worker_overview
from embeddings.models import Job, JobChunk
from tests.factories import JobFactory, UserFactory
from workers.answers import stats_add
from workers.drain import Drainer

pytestmark = pytest.mark.django_db

MODEL = "all-MiniLM-L6-v2"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _job(**fields) -> Job:
    return Job(model=MODEL, total=100, **fields)


def test_job_progress_rate_and_eta():
    queued = job_progress(_job(status="queued"), now=T0)
    assert (queued.rate, queued.eta_seconds, queued.percent) == (None, None, 0.0)
    running = job_progress(_job(status="running", done=40, started_at=T0 - timedelta(seconds=20)), now=T0)
    assert running.rate == 2.0 and running.eta_seconds == 30.0 and running.percent == 40.0
    stuck = job_progress(_job(status="running", done=0, started_at=T0 - timedelta(seconds=20)), now=T0)
    assert stuck.rate == 0.0 and stuck.eta_seconds is None
    finished = job_progress(_job(status="succeeded", done=100, started_at=T0 - timedelta(seconds=50),
                                 finished_at=T0 - timedelta(seconds=10)), now=T0)
    assert finished.rate == 2.5 and finished.eta_seconds is None  # the rate up to its end, not to now
    cancelled = job_progress(_job(status="cancelled", done=10, started_at=T0 - timedelta(seconds=10),
                                  finished_at=T0), now=T0)
    assert cancelled.eta_seconds is None
    assert [duration_text(s) for s in (None, 42, 185, 3720)] == ["-", "42 s", "3 min 05 s", "1 h 02 min"]


def test_work_waiting_counts_jobs_and_their_texts_left(alice, bob, redis_db):
    JobFactory(tenant=alice.tenant, texts=["a", "b", "c"])
    running = JobFactory(tenant=bob.tenant, texts=["x", "y"])
    Job.objects.filter(pk=running.pk).update(status="running", done=1)
    done = JobFactory(tenant=bob.tenant, texts=["z"])
    Job.objects.filter(pk=done.pk).update(status="succeeded", done=1)
    (work,) = [m for m in work_waiting() if m.model == MODEL]
    assert (work.jobs_queued, work.jobs_running, work.job_texts_left, work.queue_depth, work.workers) == (1, 1, 4, 0, [])


def test_worker_overview_shows_each_live_loop_with_its_rates(redis_db):
    loop = Drainer(runtimes={MODEL: object()}, redis=redis_db, max_texts=64, max_tokens=4096, name="w1")
    gone = Drainer(runtimes={MODEL: object()}, redis=redis_db, max_texts=64, max_tokens=4096, name="w-gone")
    loop.heartbeat(force=True)
    gone.heartbeat(force=True)
    gone._clear_heartbeat()  # a loop that stopped: no longer listed

    def add(**counts: int) -> None:
        pipe = redis_db.pipeline()
        stats_add(pipe, "w1", **counts)
        pipe.execute()

    add(batches=2, items=3, texts=10)

    def passes_meanwhile(seconds: float) -> None:  # the loop works while the page waits for a second reading
        add(batches=4, items=4, texts=40)
        time.sleep(seconds)

    first = worker_overview(wait=0.2, sleep=passes_meanwhile)
    (w,) = first.workers
    assert w.id == "w1" and w.models == [MODEL] and w.queue_depth == 0
    assert w.counters.texts == 50 and w.counters.batches == 6 and w.counters.items == 7
    assert w.window_s is not None and 0.2 <= w.window_s < 2
    assert w.texts_per_s == pytest.approx(40 / w.window_s) and w.texts_per_pass == 10.0
    assert w.last_beat is not None and w.beat_age_s is not None and w.beat_age_s < 5
    (work,) = [m for m in first.models if m.model == MODEL]
    assert [s.id for s in work.workers] == ["w1"]

    time.sleep(1.0)  # a later look takes its rate against the earlier readings, without waiting
    add(batches=1, items=1, texts=5)
    later = worker_overview(wait=0, sleep=lambda s: pytest.fail("no second reading needed"))
    (w,) = later.workers
    assert w.window_s is not None and w.window_s >= 1.0 and w.counters.texts == 55
    assert w.texts_per_s == pytest.approx(45 / w.window_s)  # since the oldest reading kept (before the 40)


def test_jobs_list_newest_first_and_found_by_id_prefix(alice, redis_db):
    client = Client()
    client.force_login(UserFactory(staff=True, email="ops@example.com"))
    old = JobFactory(tenant=alice.tenant, texts=["a"])
    Job.objects.filter(pk=old.pk).update(created_at=old.created_at - timedelta(hours=1))
    new = JobFactory(tenant=alice.tenant, texts=["b"])
    page = client.get(reverse("admin:embeddings_job_changelist")).content.decode()
    assert page.index(str(new.pk)) < page.index(str(old.pk))
    found = client.get(reverse("admin:embeddings_job_changelist"), {"q": str(old.pk)[:13]}).content.decode()
    assert str(old.pk) in found and str(new.pk) not in found

    cancel = reverse("admin:embeddings_job_cancel", args=[new.pk])
    assert client.get(cancel).status_code == 405
    page = client.get(reverse("admin:embeddings_job_change", args=[new.pk])).content.decode()
    assert 'id="job-cancel"' in page and 'name="_save"' not in page
    assert client.post(cancel).status_code == 302
    new.refresh_from_db()
    assert new.status == "cancelled" and not JobChunk.objects.filter(job=new, status="queued").exists()
    page = client.get(reverse("admin:embeddings_job_change", args=[new.pk])).content.decode()
    assert 'id="job-cancel"' not in page  # nothing left to cancel
    again = client.post(cancel, follow=True).content.decode()
    assert "was already cancelled" in again
