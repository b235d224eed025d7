"""The hand-off between a web request and the workers, over Redis.

One work item per request (all its missing texts) is RPUSHed to the model's list, by the
admission script (accounts.quotas.admit with work_push) or by work_submit; the worker drains
many items into one forward pass and answers each on its own reply key, which the request
BLPOPs. The wire format is defined here and only here.

Reply frame: b"K" + int32[n] token counts + float32[n, dims] vectors (little-endian),
or b"E" + a UTF-8 message for an item the worker could not embed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
from django.conf import settings

from accounts.quotas import WORK_REFUSAL_LUA, WorkPush
from embedplatform.errors import WAIT_TIMED_OUT, WORKERS_UNAVAILABLE, ApiError, InvalidInput, Overloaded, WaitTimeout
from embedplatform.logs import request_id_get
from embedplatform.redisconn import blocking_slice, redis_client, script
from workers.queues import alive_key, job_signal_key, owner_key, reply_key, taken_key, work_list

REPLY_TTL_SECONDS = 120


@dataclass(frozen=True)
class WorkItem:
    id: str
    model: str
    texts: list[str]
    keys: list[bytes]
    scope: int
    deadline: float
    priority: str = "hi"
    rid: str | None = None  # the request id (embedplatform/logs.py), for the drain loop's logs
    tenant: int = 0  # whose usage the misses (texts, tokens, compute time) are counted to; 0: nobody's
    counts: list[int] | None = None  # how many of the request's inputs each text stands for (None: one each)

    def dumps(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "model": self.model, "texts": self.texts, "keys": [k.hex() for k in self.keys],
             "scope": self.scope, "deadline": self.deadline, "rid": self.rid, "tenant": self.tenant,
             "counts": self.counts}
        )

    @classmethod
    def loads(cls, raw: bytes) -> WorkItem:
        d = orjson.loads(raw)
        return cls(id=d["id"], model=d["model"], texts=d["texts"], keys=[bytes.fromhex(k) for k in d["keys"]],
                   scope=d["scope"], deadline=d["deadline"], rid=d.get("rid"), tenant=d.get("tenant", 0),
                   counts=d.get("counts"))

    def usage(self, tokens) -> tuple[int, int]:
        """(inputs, tokens) this item's texts stand for in its request, given each text's token count."""
        if self.counts is None:
            return len(self.texts), int(sum(int(t) for t in tokens))
        return sum(self.counts), int(sum(int(t) * c for t, c in zip(tokens, self.counts, strict=True)))


def reply_ok(tokens: np.ndarray, vectors: np.ndarray) -> bytes:
    return b"K" + np.asarray(tokens, dtype="<i4").tobytes() + np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def reply_error(message: str) -> bytes:
    return b"E" + message.encode("utf-8", "replace")


def reply_failure(error: ApiError) -> bytes:
    """An error reply that reaches the client as `error` itself (its status, type, code and message).

    b"F" + JSON. Used by the provider worker: an upstream failure is a 502/504, not bad input.
    """
    return b"F" + orjson.dumps(
        {"status": error.status, "type": error.type, "code": error.code, "param": error.param, "message": error.message}
    )


def reply_send(request_id: str, payload: bytes) -> None:
    """Answers one waiting request (the drain loop does the same in its own pipeline)."""
    key = reply_key(request_id)
    pipe = redis_client().pipeline(transaction=False)
    pipe.rpush(key, payload)
    pipe.expire(key, REPLY_TTL_SECONDS)
    pipe.execute()


def reply_parse(raw: bytes, *, n: int, dims: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[n], vectors float32[n, dims]); raises InvalidInput for an error reply and the
    carried ApiError for a b"F" reply. dims=None: taken from the frame's length (provider models)."""
    if raw[:1] == b"E":
        raise InvalidInput(f"The input could not be embedded: {raw[1:].decode('utf-8', 'replace')}", param="input")
    if raw[:1] == b"F":
        d = orjson.loads(raw[1:])
        error = ApiError(d["message"], param=d.get("param"), code=d.get("code"))
        error.status, error.type = int(d["status"]), d["type"]
        raise error
    if dims is None:
        dims = (len(raw) - 1 - 4 * n) // (4 * n) if n else 0
    tokens = np.frombuffer(raw, dtype="<i4", count=n, offset=1)
    vectors = np.frombuffer(raw, dtype="<f4", offset=1 + 4 * n).reshape(n, dims)
    return tokens, vectors


# One round trip: the admission's check (accounts/quotas.py), then the push. {1} when queued,
# {0, refusal} when not.
_QUEUE = WORK_REFUSAL_LUA + """
local refused = work_refusal(KEYS[1], KEYS[2], ARGV[2])
if refused then return {0, refused} end
redis.call('RPUSH', KEYS[1], ARGV[1])
return {1}
"""


def work_item(*, model: str, texts: list[str], keys: list[bytes], scope: int, wait: float, tenant: int = 0,
              counts: list[int] | None = None) -> WorkItem:
    """A work item for the model's workers, who also count the misses' usage to `tenant`
    (`counts`: see WorkItem); the admission script (work_push) or work_queue queues it."""
    return WorkItem(id=uuid.uuid4().hex, model=model, texts=texts, keys=keys, scope=scope, deadline=time.time() + wait,
                    rid=request_id_get(), tenant=tenant, counts=counts)


def _refused(model: str, depth: int) -> Overloaded:
    """503 for work that cannot be queued: no worker alive (depth -1) or `depth` items waiting."""
    if depth < 0:
        return Overloaded(WORKERS_UNAVAILABLE.format(model=model), retry_after=5, code="no_worker")
    return Overloaded(f"The `{model}` queue is full ({depth} requests waiting); retry shortly.", retry_after=2)


def work_push(item: WorkItem) -> WorkPush:
    """`item` for accounts.quotas.admit to queue in the admission's round trip (the same check as work_queue)."""
    return WorkPush(list_key=work_list(item.model, item.priority), alive_key=alive_key(item.model),
                    payload=item.dumps(), max_depth=settings.MAX_QUEUE_DEPTH,
                    refused=lambda depth: _refused(item.model, depth))


def work_queue(item: WorkItem) -> None:
    """Queues `item` for its model's workers. Raises Overloaded when none is alive or the queue is full."""
    result = script(_QUEUE)(keys=[work_list(item.model, item.priority), alive_key(item.model)],
                            args=[item.dumps(), settings.MAX_QUEUE_DEPTH], client=redis_client())
    if not result[0]:
        raise _refused(item.model, int(result[1]))


def work_submit(*, model: str, texts: list[str], keys: list[bytes], scope: int, wait: float, tenant: int = 0,
                counts: list[int] | None = None) -> WorkItem:
    """work_item + work_queue: queues the texts for the model's workers. Raises Overloaded when
    none is alive or the queue is full."""
    item = work_item(model=model, texts=texts, keys=keys, scope=scope, wait=wait, tenant=tenant, counts=counts)
    work_queue(item)
    return item


# How often a waiting request checks that the drain loop that took its item still beats.
TAKEN_CHECK_SECONDS = 1.0
WORKER_DIED = ("The worker computing this request stopped (it was restarted or killed) and no other worker "
               "serves `{model}` now; retry shortly.")


def work_wait(item: WorkItem, *, wait: float, dims: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Blocks until the worker answers `item`, at most `wait` seconds (then WaitTimeout).

    Waits in slices of at most TAKEN_CHECK_SECONDS; between them one script checks on the item
    (_CHECK). When the drain loop that took it died with it (a killed worker), the item goes back
    to the head of its list for another worker, once. When no worker of the model is alive, to take
    it or to take it over, the request ends at once with Overloaded (503 + Retry-After) instead of
    waiting out its time.
    """
    client = redis_client()
    deadline = time.monotonic() + wait
    requeued = False
    while True:
        left = deadline - time.monotonic()
        step = min(left, TAKEN_CHECK_SECONDS, blocking_slice())  # a BLPOP inside the socket timeout
        popped = client.blpop([reply_key(item.id)], timeout=max(step, 0.01))
        if popped is not None:
            return reply_parse(popped[1], n=len(item.texts), dims=dims)
        if left <= step:
            raise WaitTimeout(WAIT_TIMED_OUT.format(seconds=wait))
        state = script(_CHECK)(
            keys=[taken_key(item.id), alive_key(item.model), work_list(item.model, item.priority), reply_key(item.id)],
            args=[item.dumps(), int(requeued), owner_key("")], client=client,
        )
        if state == _REQUEUED:
            requeued = True
        elif state == _NO_WORKER:
            raise _refused(item.model, -1)
        elif state == _TAKER_DIED:
            raise Overloaded(WORKER_DIED.format(model=item.model), retry_after=2, code="worker_died")


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


def jobs_signal(models) -> None:
    """Pokes the workers of `models`: job chunks wait for them in Postgres. A signal only, kept
    short (a worker that is down does not let it grow); a lost one costs a poll interval."""
    with redis_client().pipeline(transaction=False) as pipe:
        for model in models:
            pipe.rpush(job_signal_key(model), "job")
            pipe.ltrim(job_signal_key(model), -100, -1)
        pipe.execute()


def owners_alive(tokens: list[str]) -> set[str]:
    """Which of these drain-loop tokens still beat (workers.queues.owner_key)."""
    if not tokens:
        return set()
    found = redis_client().mget([owner_key(t) for t in tokens])
    return {t for t, v in zip(tokens, found, strict=True) if v is not None}
