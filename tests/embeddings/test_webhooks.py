"""Webhook deliveries are bounded whatever the receiver does (issue 16 part 4): a total deadline
(not per read) and a cap on the response bytes read; against real misbehaving servers on
127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from embeddings.models import Job
from embeddings.webhooks import WebhookTransient, job_webhook_deliver, webhook_post
from tests.factories import JobFactory
from tests.helpers import poll_until


class _Receiver:
    """A raw HTTP server on 127.0.0.1 that reads the request, then runs `behave(conn)`."""

    def __init__(self, behave):
        self.behave = behave
        self.sent = 0
        self.requests: list[bytes] = []
        self.handled = 0  # connections whose behaviour has ended (done, or the platform hung up)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + rest)
        try:
            self.behave(self, conn)
        except OSError:
            pass  # the platform hung up: what these tests want
        finally:
            conn.close()
            self.handled += 1

    def send(self, conn, data: bytes):
        conn.sendall(data)
        self.sent += len(data)

    def close(self):
        self.sock.close()


def _trickle_body(server, conn):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100_000):
        server.send(conn, b"x")
        time.sleep(1)  # the misbehaviour under test: one byte a second


def _trickle_status(server, conn):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        server.send(conn, bytes([byte]))
        time.sleep(1)  # the misbehaviour under test: one byte a second


def _huge(server, conn):
    size = 100 * 1024 * 1024
    server.send(conn, f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    block = b"x" * 1024 * 1024
    for _ in range(100):
        server.send(conn, block)


@pytest.fixture
def receiver(settings):
    made = []

    def make(behave) -> _Receiver:
        server = _Receiver(behave)
        made.append(server)
        settings.PROVIDER_ALLOWED_HOSTS = [f"127.0.0.1:{server.port}"]
        return server

    yield make
    for server in made:
        server.close()


def _job(tenant, port) -> Job:
    job = JobFactory(tenant=tenant, texts=["w"], webhook_url=f"http://127.0.0.1:{port}/hook")
    Job.objects.filter(pk=job.pk).update(status="succeeded", done=1)
    return job


def test_a_receiver_trickling_its_body_a_byte_a_second_is_cut_at_the_total_deadline(
        alice, redis_db, receiver, transactional_db, settings):
    """Before: httpx's per-read timeout never trips (a byte comes every second) and the delivery
    reads the whole 100,000-byte body: more than a day. After: it ends at the deadline; the status
    that came in time stands."""
    settings.WEBHOOK_TIMEOUT_SECONDS = 2.0
    server = receiver(_trickle_body)
    job = _job(alice.tenant, server.port)
    started = time.monotonic()
    assert job_webhook_deliver(job_id=str(job.pk)) == "delivered"
    assert time.monotonic() - started < 3.0
    assert len(server.requests) == 1


def test_a_receiver_trickling_its_status_line_is_a_retryable_timeout_within_the_deadline(
        alice, redis_db, receiver, transactional_db, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 2.0
    server = receiver(_trickle_status)
    job = _job(alice.tenant, server.port)
    started = time.monotonic()
    with pytest.raises(WebhookTransient, match=r"no answer within 2\.0 s"):
        job_webhook_deliver(job_id=str(job.pk))
    assert time.monotonic() - started < 3.0
    assert Job.objects.get(pk=job.pk).webhook_status == "pending"


def test_a_receiver_sending_100_mb_is_read_up_to_the_cap_only(alice, redis_db, receiver, transactional_db, settings):
    settings.WEBHOOK_MAX_RESPONSE_BYTES = 64 * 1024
    server = receiver(_huge)
    job = _job(alice.tenant, server.port)
    started = time.monotonic()
    assert job_webhook_deliver(job_id=str(job.pk)) == "delivered"
    assert time.monotonic() - started < 5.0
    # The platform hung up after the cap: the receiver got at most the socket buffers' worth out.
    poll_until(lambda: server.handled == 1, timeout=5, message="the receiver to see the platform hang up")
    assert server.sent < 20 * 1024 * 1024, server.sent
    # What the client itself read: the cap plus at most one 64 KiB network read.
    status, read = webhook_post(f"http://127.0.0.1:{server.port}/hook", body=b"{}",
                                headers={"Content-Type": "application/json"}, extensions={},
                                seconds=5, max_bytes=64 * 1024)
    assert status == 200 and 64 * 1024 <= read <= 2 * 64 * 1024, read
