import os
from logging.config import dictConfig
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedplatform.settings.base")

app = Celery("embedplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def config_loggers(*args: Any, **kwargs: Any) -> None:
    dictConfig(settings.LOGGING)

# The drain loop of the embedding workers (workers/bootsteps.py), by name: no import here.
app.steps["worker"].add("workers.bootsteps:DrainStep")
