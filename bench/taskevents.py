"""What reporting a drain-loop pass as Celery task events costs (workers/taskevents.py).

Two figures: the drain loop's own cost, PassEvents.report() (a tuple on a queue), and the worker's
CPU per reported pass on the sender thread (three events built, serialized and published, in
batches). Against the broker of the settings (REDIS_URL / CELERY_BROKER_URL).

    REDIS_URL=... .venv/bin/python bench/taskevents.py [passes] [every]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedplatform.settings.base")

import django

django.setup()

from embedplatform.celery import app  # noqa: E402
from workers.taskevents import PassEvents, task_name  # noqa: E402


def main(passes: int, every: int) -> None:
    sender = PassEvents(app, hostname="bench@taskevents")
    name = task_name("all-MiniLM-L6-v2")
    sender.report(name, started=time.time(), runtime=0.01, texts=1)  # connect first
    while sender.sent < 1:
        time.sleep(0.01)
    cpu, wall = time.process_time(), time.perf_counter()
    spent = 0.0
    for i in range(passes):
        began = time.perf_counter()
        sender.report(name, started=time.time(), runtime=0.012, texts=32, requests=4, tenants=2, tokens=400 + i)
        spent += time.perf_counter() - began
        if i % every == every - 1:
            time.sleep(0.002)  # a pause every `every` passes: 1, each pass published on its own
    while sender.sent + sender.dropped < passes + 1:
        time.sleep(0.005)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sender.close()
    print(f"{passes} passes, a 2 ms pause every {every}: report() {spent / passes * 1e6:.2f} us a pass in the drain loop; "
          f"process CPU {cpu / passes * 1e6:.1f} us a pass (sender thread included); "
          f"{sender.sent - 1} sent, {sender.dropped} dropped, {wall:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000, int(sys.argv[2]) if len(sys.argv) > 2 else 50)
