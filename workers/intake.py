"""Where a drain loop takes interactive work: its models' work lists, hi before lo, and the job
signals (dispatch/local.py puts both there)."""

from __future__ import annotations

from typing import cast

import redis as redis_lib

from dispatch.frames import REPLY_TTL_SECONDS, WorkItem
from dispatch.keys import job_signal_key, taken_key, work_list


class Intake:
    def __init__(self, redis: redis_lib.Redis, models: list[str], *, token: str, max_texts: int, jobs: bool):
        self.redis = redis
        self.token = token  # the loop's liveness token: what a taken item is marked with
        self.max_texts = max_texts
        self.lists = [work_list(m, "hi") for m in models] + [work_list(m, "lo") for m in models]
        self.signals = [job_signal_key(m) for m in models] if jobs else []

    def take(self, block: float) -> tuple[str, list[WorkItem], bool]:
        """(model, items, job signalled): blocks up to `block` seconds for the first item, then
        takes what else waits for that model, hi before lo; a job signal ends the wait with no item."""
        popped = self.redis.blpop(self.lists + self.signals, timeout=block)
        if popped is None:
            return "", [], False
        key, raw = cast(tuple[bytes, bytes], popped)
        if key.decode() in self.signals:
            return "", [], True
        first = WorkItem.loads(raw)
        room = self.max_texts - len(first.texts)
        # Each taken item is marked with this loop's token, so that the request waiting for it
        # can tell when this loop dies with it (dispatch.local.work_wait): the first in the
        # round trip that takes the others.
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(taken_key(first.id), self.token, ex=REPLY_TTL_SECONDS)
        if room > 0:
            # Both lists in one round trip, hi before lo. Items are indivisible and each list
            # may give up to (room) items, so a take can overshoot max_texts: the runtime splits
            # whatever it gets into passes of at most max_texts.
            pipe.lpop(work_list(first.model, "hi"), room)
            pipe.lpop(work_list(first.model, "lo"), room)
        more = [WorkItem.loads(raw) for got in pipe.execute()[1:] for raw in (got or [])]
        if more:
            pipe = self.redis.pipeline(transaction=False)
            for it in more:
                pipe.set(taken_key(it.id), self.token, ex=REPLY_TTL_SECONDS)
            pipe.execute()
        return first.model, [first, *more], False

    def waiting(self) -> bool:
        """Whether an interactive request waits on any of the lists (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in self.lists:
            pipe.llen(name)
        return any(pipe.execute())
