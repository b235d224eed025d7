"""The platform's own models: work items on a Redis list per model, drained by the workers.

The request's misses become one WorkItem, RPUSHed to `embed:q:<model>:hi` by the admission
script (accounts.quotas.admit, with the push of LocalDispatch.submit) in the round trip that
admits the request, or by LocalDispatch.send. A drain loop (workers/drain.py) takes many items
into one forward pass, stores the vectors, records the misses' usage and answers each item on
its reply key; the request waits on it (work_wait). Job chunks wait in Postgres; a list per
model only signals them (jobs_signal).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import redis
from django.conf import settings

from dispatch.base import Dispatcher, Handle, ServedModel, WorkPush
from dispatch.frames import WorkItem, reply_wait
from dispatch.keys import alive_key, job_signal_key, owner_key, reply_key, taken_key, work_list
from embedplatform.errors import WORKERS_UNAVAILABLE, Overloaded
from embedplatform.redisconn import redis_client, script

# Whether work may join a model's list: nil when yes, -1 when no worker is alive, else the
# list's depth (it is full). The one definition of that check: the admission script
# (accounts/quotas.py) and _QUEUE below both open with it.
WORK_REFUSAL_LUA = """
local function work_refusal(list_key, alive_key, max_depth)
  if redis.call('EXISTS', alive_key) == 0 then return -1 end
  local depth = redis.call('LLEN', list_key)
  if depth >= tonumber(max_depth) then return depth end
  return nil
end
"""

# One round trip: the refusal check, then the push. {1} when queued, {0, refusal} when not.
_QUEUE = WORK_REFUSAL_LUA + """
local refused = work_refusal(KEYS[1], KEYS[2], ARGV[2])
if refused then return {0, refused} end
redis.call('RPUSH', KEYS[1], ARGV[1])
return {1}
"""


def refused(model: str, depth: int) -> Overloaded:
    """503 for work that cannot be queued: no worker alive (depth -1) or `depth` items waiting."""
    if depth < 0:
        return Overloaded(WORKERS_UNAVAILABLE.format(model=model), retry_after=5, code="no_worker")
    return Overloaded(f"The `{model}` queue is full ({depth} requests waiting); retry shortly.", retry_after=2)


class LocalDispatch(Dispatcher):
    """The platform's models. The drain loop that computes an item counts its usage."""

    kind = "local"
    counts_usage = True
    runs_jobs = True

    def submit(self, *, model: ServedModel, texts: list[str], keys: list[bytes], scope: int, wait: float,
               tenant: int, counts: list[int] | None = None) -> Handle:
        item = WorkItem.new(model=model.name, texts=texts, keys=keys, scope=scope, wait=wait, tenant=tenant,
                            counts=counts)
        push = WorkPush(list_key=work_list(item.model, item.priority), alive_key=alive_key(item.model),
                        payload=item.dumps(), max_depth=settings.MAX_QUEUE_DEPTH,
                        refused=lambda depth: refused(item.model, depth))
        return Handle(model=model, item=item, push=push)

    def send(self, handle: Handle) -> None:
        """Queues the item (one round trip) unless the admission did. Raises Overloaded when no
        worker of the model is alive or its queue is full."""
        if handle.queued:
            return
        push = handle.push
        assert push is not None  # submit always builds one
        result = script(_QUEUE)(keys=[push.list_key, push.alive_key], args=[push.payload, push.max_depth],
                                client=redis_client())
        if not result[0]:
            raise push.refused(int(result[1]))
        handle.queued = True

    def wait(self, handle: Handle, *, wait: float) -> tuple[np.ndarray, np.ndarray]:
        return work_wait(handle.item, wait=wait, dims=None)


LOCAL = LocalDispatch()

WORKER_DIED = ("The worker computing this request stopped (it was restarted or killed) and no other worker "
               "serves `{model}` now; retry shortly.")


def work_wait(item: WorkItem, *, wait: float, dims: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Blocks until the worker answers `item`, at most `wait` seconds (then WaitTimeout).

    dispatch.frames.reply_wait, with one script between its slices that checks on the item
    (_CHECK). When the drain loop that took it died with it (a killed worker), the item goes back
    to the head of its list for another worker, once. When no worker of the model is alive, to take
    it or to take it over, the request ends at once with Overloaded (503 + Retry-After) instead of
    waiting out its time. dims=None: taken from the reply's length.
    """
    client = redis_client()
    requeued = False

    def check() -> None:
        nonlocal requeued
        state = script(_CHECK)(
            keys=[taken_key(item.id), alive_key(item.model), work_list(item.model, item.priority), reply_key(item.id)],
            args=[item.dumps(), int(requeued), owner_key("")], client=client,
        )
        if state == _REQUEUED:
            requeued = True
        elif state == _NO_WORKER:
            raise refused(item.model, -1)
        elif state == _TAKER_DIED:
            raise Overloaded(WORKER_DIED.format(model=item.model), retry_after=2, code="worker_died")

    return reply_wait(item, wait=wait, dims=dims, between=check)


_WAITING, _REQUEUED, _NO_WORKER, _TAKER_DIED = 0, 1, 2, 3

# One round trip between two slices of a wait: is the item still in good hands?
# KEYS: taken marker, the model's alive key, the item's list, its reply key.
# ARGV: the item as queued, 1 if it was handed back once already, the owner-key prefix.
_CHECK = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local taker = redis.call('GET', KEYS[1])
if not taker then
  if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('LREM', KEYS[3], 1, ARGV[1]) == 1 then return 2 end
  return 0
end
if redis.call('EXISTS', ARGV[3] .. taker) == 1 then return 0 end
if ARGV[2] == '1' or redis.call('EXISTS', KEYS[2]) == 0 then return 3 end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
return 1
"""


def jobs_signal(models: Iterable[str]) -> None:
    """Pokes the workers of `models`: job chunks wait for them in Postgres. A signal only, kept
    short (a worker that is down does not let it grow); a lost one costs a poll interval."""
    with redis_client().pipeline(transaction=False) as pipe:
        for model in models:
            pipe.rpush(job_signal_key(model), "job")
            pipe.ltrim(job_signal_key(model), -100, -1)
        pipe.execute()


def owners_alive(tokens: list[str], *, client: redis.Redis | None = None) -> set[str]:
    """Which of these drain-loop tokens still beat (dispatch.keys.owner_key)."""
    if not tokens:
        return set()
    found = (client or redis_client()).mget([owner_key(t) for t in tokens])
    return {t for t, v in zip(tokens, found, strict=True) if v is not None}
