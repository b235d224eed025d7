"""A real upstream embeddings and rerank API on 127.0.0.1, for the BYOK tests.

Speaks OpenAI's shape (POST /v1/embeddings: {"model", "input"} -> {"data": [{"embedding"}],
"usage"}) and Cohere's v2 shape (POST /v2/embed: {"model", "texts"} -> {"embeddings":
{"float": [...]}, "meta"}). Vectors are a deterministic function of the text
(`FakeProvider.vector`). Rerank, on any path ending in /rerank ({"query", "documents",
"top_n"?}): Cohere's and Jina's answer {"results": [{"index", "relevance_score"}], ...}, best
first; Voyage's {"data": [...], "usage"} where the path holds "voyage"; TEI's ({"query",
"texts"} -> [{"index", "score"}]) where it holds "tei". Scores are a deterministic function of
the pair (`FakeProvider.score`). Failures are scripted per request with `then(...)`: a status
with a message and headers (500, 429 + Retry-After), a delay, a huge body, a redirect, a rerank
answer short of its worst results (drop=) or any JSON body (body=). Every request is recorded
(path, headers, JSON body, arrival time).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIMS = 8


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict
    at: float


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
        step = fake.script.popleft() if fake.script else {}
        if step.get("sleep"):
            time.sleep(step["sleep"])  # a slow upstream: the behaviour the test asked for
        if step.get("redirect"):
            return self._send(302, b"", {"Location": step["redirect"]})
        if step.get("huge"):
            return self._send(200, b" " * step["huge"])
        if step.get("status"):
            message = step.get("message", f"fake upstream error {step['status']}")
            return self._send(step["status"], json.dumps({"error": {"message": message}}).encode(), step.get("headers"))
        if fake.expected_key is not None:
            given = self.headers.get("Authorization", "")
            if given != f"Bearer {fake.expected_key}":
                message = f"Incorrect API key provided: {given.removeprefix('Bearer ')}"
                return self._send(401, json.dumps({"error": {"message": message}}).encode())
        if step.get("body") is not None:
            return self._send(200, json.dumps(step["body"]).encode())
        if self.path.endswith("/rerank"):
            return self._send(200, json.dumps(fake.rerank_answer(self.path, body, drop=step.get("drop", 0))).encode())
        if self.path.startswith("/v2/embed"):
            texts = body.get("texts") or []
            out = {"id": "fake", "embeddings": {"float": [fake.vector(t) for t in texts]},
                   "meta": {"billed_units": {"input_tokens": sum(len(t) for t in texts)}}}
        else:
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else (texts or [])
            out = {"object": "list", "model": body.get("model"),
                   "data": [{"object": "embedding", "index": i,
                             "embedding": [0.01] * step["dims"] if step.get("dims") else fake.vector(t)}
                            for i, t in enumerate(texts)],
                   "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}}
        self._send(200, json.dumps(out).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeProvider


class FakeProvider:
    def __init__(self, expected_key: str | None = None):
        self.requests: list[Recorded] = []
        self.script: deque[dict] = deque()
        self.expected_key = expected_key
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-provider")
        self._thread.start()

    @property
    def host(self) -> str:
        """The PROVIDER_ALLOWED_HOSTS entry for this server."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/v1/embeddings") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @staticmethod
    def vector(text: str) -> list[float]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        return [round(b / 127.5 - 1.0, 6) for b in digest[:DIMS]]

    @staticmethod
    def score(query: str, document: str) -> float:
        digest = hashlib.sha256(f"{query}\x00{document}".encode("utf-8", "surrogatepass")).digest()
        return round(int.from_bytes(digest[:4], "big") / 2**32, 6)

    def rerank_answer(self, path: str, body: dict, *, drop: int = 0) -> object:
        """The rerank API's answer for `body`, in the shape its path names; `drop` leaves out that
        many of the worst results."""
        query = body.get("query", "")
        documents = body.get("texts" if "tei" in path else "documents") or []
        ranked = sorted(range(len(documents)), key=lambda i: -self.score(query, documents[i]))
        if body.get("top_n") or body.get("top_k"):
            ranked = ranked[: body.get("top_n") or body.get("top_k")]
        ranked = ranked[: len(ranked) - drop]
        if "tei" in path:
            return [{"index": i, "score": self.score(query, documents[i])} for i in ranked]
        results = [{"index": i, "relevance_score": self.score(query, documents[i])} for i in ranked]
        tokens = sum(len(d) for d in documents) + len(query) * len(documents)
        if "voyage" in path:
            return {"object": "list", "data": results, "model": body.get("model"), "usage": {"total_tokens": tokens}}
        return {"id": "fake", "results": results, "meta": {"billed_units": {"search_units": 1}},
                "usage": {"total_tokens": tokens}}

    def then(self, **step) -> FakeProvider:
        """Scripts the next unscripted request: status=, message=, headers=, sleep=, huge=, redirect=, dims=
        (vectors of that width), drop= (a rerank answer without its worst N results), body= (this JSON)."""
        self.script.append(step)
        return self

    def reset(self) -> None:
        self.requests.clear()
        self.script.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
