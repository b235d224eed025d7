"""The wire format between a waiting request and whatever computes it: the work item and its reply.

One work item per request (all its missing texts). The reply is pushed on the item's reply key
(dispatch.keys.reply_key), which the request BLPOPs:

    b"K" + int32[n] token counts + float32[n, dims] vectors (little-endian)
    b"E" + a UTF-8 message: the item's texts could not be embedded (a 400)
    b"F" + JSON of an ApiError: the failure reaches the client as that error (e.g. a provider's 502)

Defined here and only here: the drain loop, the provider worker and the web all use these.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import orjson
from redis.client import Pipeline

from dispatch.keys import reply_key
from embedplatform.errors import WAIT_TIMED_OUT, ApiError, InvalidInput, WaitTimeout
from embedplatform.logs import request_id_get
from embedplatform.redisconn import blocking_slice, redis_client

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

    @classmethod
    def new(cls, *, model: str, texts: list[str], keys: list[bytes], scope: int, wait: float, tenant: int = 0,
            counts: list[int] | None = None) -> WorkItem:
        """A fresh item whose request waits `wait` seconds from now."""
        return cls(id=uuid.uuid4().hex, model=model, texts=texts, keys=keys, scope=scope, deadline=time.time() + wait,
                   rid=request_id_get(), tenant=tenant, counts=counts)

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

    def usage(self, tokens: Iterable[int]) -> tuple[int, int]:
        """(inputs, tokens) this item's texts stand for in its request, given each text's token count."""
        if self.counts is None:
            return len(self.texts), int(sum(int(t) for t in tokens))
        return sum(self.counts), int(sum(int(t) * c for t, c in zip(tokens, self.counts, strict=True)))


# A reranker's input is a (query, document) pair carried as one text, so that a pair travels,
# is deduplicated and is cached exactly as a text is: the query's length in code points, a colon,
# the query, then the document. Unambiguous whatever either holds.


def pair_join(query: str, document: str) -> str:
    """One rerank pair as the text a work item carries (and its cache key hashes)."""
    return f"{len(query)}:{query}{document}"


def pair_split(text: str) -> tuple[str, str]:
    """(query, document) of a pair_join text. Raises ValueError for any other text."""
    head, sep, rest = text.partition(":")
    if not sep or not head.isdigit() or int(head) > len(rest):
        raise ValueError("not a rerank pair")
    n = int(head)
    return rest[:n], rest[n:]


def reply_ok(tokens: npt.ArrayLike, vectors: np.ndarray) -> bytes:
    return b"K" + np.asarray(tokens, dtype="<i4").tobytes() + np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def reply_error(message: str) -> bytes:
    return b"E" + message.encode("utf-8", "replace")


def reply_failure(error: ApiError) -> bytes:
    """An error reply that reaches the client as `error` itself (its status, type, code and message):
    an upstream failure is a 502/504, not bad input."""
    return b"F" + orjson.dumps(
        {"status": error.status, "type": error.type, "code": error.code, "param": error.param, "message": error.message}
    )


def reply_push(pipe: Pipeline, item_id: str, payload: bytes) -> None:
    """Queues the answer to one waiting request on `pipe` (the caller's round trip)."""
    key = reply_key(item_id)
    pipe.rpush(key, payload)
    pipe.expire(key, REPLY_TTL_SECONDS)


def reply_send(item_id: str, payload: bytes) -> None:
    """Answers one waiting request in a round trip of its own."""
    pipe = redis_client().pipeline(transaction=False)
    reply_push(pipe, item_id, payload)
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


# A wait is cut into BLPOPs of at most this long (and always inside the Redis socket timeout),
# so that whoever waits can look at the work between two of them (dispatch/local.py).
REPLY_SLICE_SECONDS = 1.0


def reply_wait(item: WorkItem, *, wait: float, dims: int | None,
               between: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blocks until `item` is answered, at most `wait` seconds (then WaitTimeout), and parses the
    reply (reply_parse). `between` runs after each empty slice; it may raise to end the wait."""
    client = redis_client()
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        step = min(left, REPLY_SLICE_SECONDS, blocking_slice())
        popped = client.blpop([reply_key(item.id)], timeout=max(step, 0.01))
        if popped is not None:
            return reply_parse(cast(bytes, popped[1]), n=len(item.texts), dims=dims)
        if left <= step:
            raise WaitTimeout(WAIT_TIMED_OUT.format(seconds=wait))
        if between is not None:
            between()

