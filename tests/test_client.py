"""The bulk client (embedplatform_client) against the live stack (granian + a real worker):
files to .npy and JSONL in input order, a killed run and an interrupted one resumed without
submitting their texts again; and its retry policy against a scripted HTTP server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from embeddings.models import Job
from embedplatform_client import AuthError, EmbedClient, FileEmbedder, QuotaError
from tests.helpers import poll_until, tier_limit

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"


def _texts(n: int, tag: str) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"client {tag} {run} text {i}: {'word ' * (i % 7)}end" for i in range(n)]


def _reference(live_stack, key: str, texts: list[str]) -> np.ndarray:
    """What /v1/embeddings returns for the texts, float32, in order."""
    r = httpx.post(f"{live_stack.url}/v1/embeddings", json={"model": MODEL, "input": texts},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedplatform_client", "embed", *args, "--poll", "0.1"]


def _env(live_stack, key: str) -> dict:
    return {**live_stack.env, "EMBED_URL": live_stack.url, "EMBED_API_KEY": key}


def _run(live_stack, key: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), env=_env(live_stack, key), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _jobs(world) -> int:
    return Job.objects.filter(tenant=world.tenant).count()


def _jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["npy", "jsonl"])
@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_it_embeds_a_file_in_input_order(live_stack, alice, tmp_path, fmt):
    """GIVEN 200 texts (a .txt for .npy, a JSONL with "text" for .jsonl) WHEN the CLI embeds them
    as jobs of 64 THEN the output holds /v1/embeddings' vectors in input order, the progress bar
    counted to 200, and a second run finds the output complete and submits nothing."""
    texts = _texts(200, fmt)
    if fmt == "npy":
        source = tmp_path / "texts.txt"
        source.write_text("\n".join(texts) + "\n")
    else:
        source = tmp_path / "texts.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / f"vectors.{fmt}"

    done = _run(live_stack, alice.key, str(source), "--out", str(out), "--chunk", "64")
    assert done.returncode == 0, done.stderr
    assert "200/200" in done.stderr  # the tqdm bar, fed by the jobs' `done`
    assert _jobs(alice) == 4  # 64 + 64 + 64 + 8

    want = _reference(live_stack, alice.key, texts)
    if fmt == "npy":
        got = np.load(out)
        assert got.dtype == np.float32 and got.shape == (200, 384)
    else:
        rows = _jsonl_rows(out)
        assert [r["index"] for r in rows] == list(range(200))
        assert [r["text"] for r in rows] == texts
        got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    assert not (tmp_path / f"vectors.{fmt}.partial").exists()

    again = _run(live_stack, alice.key, str(source), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert _jobs(alice) == 4


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_killed_run_resumes_its_jobs(live_stack, alice, tmp_path):
    """GIVEN a run SIGKILLed once its first job is recorded WHEN the same command runs again THEN
    without --resume it refuses and says how to go on; with --resume it polls the recorded job
    instead of submitting it again, and the output is complete and equal."""
    texts = _texts(200, "killed")
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts))
    out = tmp_path / "vectors.npy"
    state = tmp_path / "vectors.npy.state.json"
    args = (str(source), "--out", str(out), "--chunk", "100", "--window", "1")
    proc = subprocess.Popen(_cli(*args), env=_env(live_stack, alice.key), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def first_job() -> str | None:
        try:
            return json.loads(state.read_text())["parts"][0]["job"]
        except (FileNotFoundError, ValueError):
            return None

    job_id = poll_until(first_job, timeout=30, interval=0.005, message="the client to submit its first job")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert _jobs(alice) == 1

    refused = _run(live_stack, alice.key, *args)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr

    resumed = _run(live_stack, alice.key, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    parts = json.loads(state.read_text())["parts"]
    assert parts[0]["job"] == job_id and [p["written"] for p in parts] == [True, True]
    assert _jobs(alice) == 2  # the killed run's job, and the second part's
    np.testing.assert_array_equal(np.load(out), _reference(live_stack, alice.key, texts))


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_an_interrupted_jsonl_run_cuts_its_torn_tail_and_writes_the_rest(live_stack, alice, tmp_path):
    """GIVEN a library run interrupted (Ctrl-C) after its first part, with half a line more in the
    partial file (a write torn by the kill) WHEN it resumes THEN the torn tail is cut, the other
    parts' jobs are the ones it submitted (none twice), and the JSONL is complete, in order."""
    texts = _texts(150, "ctrl-c")
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts))
    out = tmp_path / "out.jsonl"

    def stop(part) -> None:
        raise KeyboardInterrupt

    with EmbedClient(live_stack.url, alice.key) as client:
        first = FileEmbedder(client, source, out, chunk=50, poll=0.1, progress=False, on_part=stop)
        with pytest.raises(KeyboardInterrupt):
            first.run()
        partial = tmp_path / "out.jsonl.partial"
        assert len(_jsonl_rows(partial)) == 50
        with partial.open("ab") as f:
            f.write(b'{"index": 50, "text": "torn')
        assert first.submitted == 2  # the first part and the one queued behind it (window 2)

        second = FileEmbedder(client, source, out, chunk=50, poll=0.1, progress=False)
        outcome = second.run(resume=True)
    assert second.submitted == 1 and outcome.submitted == 1 and len(outcome.jobs) == 3
    assert _jobs(alice) == 3
    rows = _jsonl_rows(out)
    assert [r["index"] for r in rows] == list(range(150)) and [r["text"] for r in rows] == texts
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], dtype=np.float32),
                                  _reference(live_stack, alice.key, texts))


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_tier_that_takes_fewer_texts_per_job_gets_smaller_parts(live_stack, alice, tmp_path):
    """GIVEN a tier whose max_job_texts is 30 WHEN 100 texts are sent in parts of 100 THEN each 413
    halves the parts not yet submitted (100 -> 50 -> 25) and the output is complete."""
    tier_limit(alice, max_job_texts=30)
    texts = _texts(100, "small-tier")
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts))
    out = tmp_path / "vectors.npy"
    with EmbedClient(live_stack.url, alice.key) as client:
        outcome = FileEmbedder(client, source, out, chunk=100, poll=0.1, progress=False).run()
    parts = json.loads((tmp_path / "vectors.npy.state.json").read_text())["parts"]
    assert [(p["start"], p["end"]) for p in parts] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert outcome.submitted == 4 and _jobs(alice) == 4
    np.testing.assert_array_equal(np.load(out), _reference(live_stack, alice.key, texts))


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_bad_key_is_a_clear_error(live_stack, alice, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("one\ntwo\n")
    done = _run(live_stack, "ep_aaaaaaaaaaaa_nope", str(source), "--out", str(tmp_path / "v.npy"))
    assert done.returncode == 1
    assert "refused the API key (401)" in done.stderr and "EMBED_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_input_and_output_errors_name_the_problem(tmp_path):
    blank = tmp_path / "texts.txt"
    blank.write_text("one\n\nthree\n")
    done = subprocess.run([sys.executable, "-m", "embedplatform_client", "embed", str(blank), "--out",
                           str(tmp_path / "v.npy"), "--api-key", "k"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and "texts.txt:2: empty text" in done.stderr
    done = subprocess.run([sys.executable, "-m", "embedplatform_client", "embed", str(blank), "--out",
                           str(tmp_path / "v.csv"), "--api-key", "k"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and ".npy" in done.stderr and ".jsonl" in done.stderr


# --- the retry policy, against a scripted server ------------------------------------------------

class _Script(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict, dict]] = []
    seen: list[str] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).seen.append(f"{self.command} {self.path}")
        status, headers, body = type(self).answers.pop(0)
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(raw))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Script.answers, _Script.seen = [], []
    yield f"http://127.0.0.1:{server.server_port}", _Script
    server.shutdown()
    server.server_close()


def _error(code: str, message: str) -> dict:
    return {"error": {"message": message, "type": "rate_limit_error", "code": code}}


def test_503_and_a_short_429_are_waited_out(scripted):
    url, script = scripted
    job = {"id": "j1", "status": "queued", "total": 1, "done": 0}
    script.answers = [
        (503, {"Retry-After": "2"}, _error("overloaded", "busy")),
        (503, {}, _error("dependency_unavailable", "db down")),
        (429, {"Retry-After": "3"}, _error("rate_limit_exceeded", "60 requests per minute")),
        (202, {}, job),
    ]
    slept: list[float] = []
    with EmbedClient(url, "k", sleep=slept.append) as client:
        assert client.job_create(["x"]) == job
    assert script.seen == ["POST /v1/jobs"] * 4
    assert slept[0] == 2 and 0 < slept[1] <= 1 and slept[2] == 3  # Retry-After, else backoff


def test_a_spent_quota_and_a_bad_key_are_raised_at_once(scripted):
    url, script = scripted
    script.answers = [
        (429, {"Retry-After": "18000", "x-should-retry": "false"}, _error("quota_exceeded", "Daily quota spent.")),
        (401, {}, _error("invalid_api_key", "Invalid API key.")),
    ]
    slept: list[float] = []
    with EmbedClient(url, "k", sleep=slept.append) as client:
        with pytest.raises(QuotaError, match=r"Daily quota spent\. Retry after 5 h 0 min\."):
            client.job_create(["x"])
        with pytest.raises(AuthError, match="EMBED_API_KEY"):
            client.job_get("j1")
    assert slept == []
