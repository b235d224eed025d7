"""The cluster-wide Prometheus collectors of the embedding path, read at scrape time by the web's
/metrics only (embedplatform.metrics.CLUSTER_REGISTRY; registered in EmbeddingsConfig.ready), so
that summing over targets never counts a queue twice."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from dispatch.keys import work_list
from embeddings.models import Job
from embeddings.registry import model_specs
from embedplatform.redisconn import redis_client

logger = logging.getLogger(__name__)


class QueueDepthCollector:
    """embed_queue_depth{model, priority}: texts-lists waiting in Redis, read at scrape time.

    A scrape while Redis is down yields no sample (and logs why) instead of failing /metrics.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "embed_queue_depth", "Work items waiting in a model's Redis list (hi: interactive, lo: bulk).",
            labels=["model", "priority"],
        )
        try:
            names = list(model_specs())
            pipe = redis_client().pipeline(transaction=False)
            for name in names:
                for priority in ("hi", "lo"):
                    pipe.llen(work_list(name, priority))
            depths = iter(pipe.execute())
        except redis.RedisError as exc:
            logger.warning("queue depth not collected: %s", exc.__class__.__name__)
            return
        for name in names:
            for priority in ("hi", "lo"):
                family.add_metric([name, priority], next(depths))
        yield family


class JobStatusCollector:
    """embed_jobs{status}: Job rows by status, one GROUP BY per scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("embed_jobs", "Jobs by status.", labels=["status"])
        try:
            rows = list(Job.objects.values_list("status").annotate(n=Count("pk")).order_by())
        except DatabaseError as exc:
            logger.warning("jobs by status not collected: %s", exc.__class__.__name__)
            return
        for status, n in rows:
            family.add_metric([str(status)], n)
        yield family
