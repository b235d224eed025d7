"""A real download: `models_pull` fetches a hub model through huggingface_hub from a stand-in
hub on 127.0.0.1 (HF_ENDPOINT), into VAR_DIR/models, and the registry then serves that copy;
a second pull finds the copy and asks the hub for nothing.

The stand-in answers only what `snapshot_download` asks of a model repo: the revision's
commit (GET /api/models/<repo>/revision/<rev>), the file listing (GET
/api/models/<repo>/tree/<commit>) and each file (HEAD then GET /<repo>/resolve/<commit>/<file>,
with the X-Repo-Commit and ETag headers the client insists on). Every request is recorded."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from django.core.management import call_command

from embeddings import registry

from .test_hub_models import COMMIT, REPO, tiny_dir  # noqa: F401  (tiny_dir: the module fixture, reused)


class _Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files = files
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def file_requests(self) -> list[tuple[str, str]]:
        with self.lock:
            return [r for r in self.requests if "/resolve/" in r[1]]


def _git_oid(content: bytes) -> str:
    """The hub's ETag (and tree oid) of a file stored in git rather than LFS: its git blob id."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    server: _Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str], with_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", COMMIT)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _json(self, payload: object, with_body: bool) -> None:
        self._answer(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, with_body)

    def _serve(self, with_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.requests.append((self.command, path))
        files = self.server.files
        if path in (f"/api/models/{REPO}/revision/main", f"/api/models/{REPO}"):
            siblings = [{"rfilename": name} for name in sorted(files)]
            return self._json({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False, "siblings": siblings},
                              with_body)
        if path == f"/api/models/{REPO}/tree/{COMMIT}":
            return self._json([{"type": "file", "path": name, "size": len(content), "oid": _git_oid(content)}
                               for name, content in sorted(files.items())], with_body)
        prefix = f"/{REPO}/resolve/{COMMIT}/"
        if path.startswith(prefix) and path.removeprefix(prefix) in files:
            content = files[path.removeprefix(prefix)]
            headers = {"Content-Type": "application/octet-stream", "ETag": f'"{_git_oid(content)}"'}
            return self._answer(200, content, headers, with_body)
        self._answer(404, b'{"error": "Entry not found"}', {"Content-Type": "application/json",
                                                             "X-Error-Code": "EntryNotFound"}, with_body)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)


@pytest.fixture
def hub(tiny_dir) -> Iterator[_Hub]:  # noqa: F811
    files = {str(p.relative_to(tiny_dir)): p.read_bytes() for p in sorted(tiny_dir.rglob("*")) if p.is_file()}
    server = _Hub(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def online(settings, tmp_path, monkeypatch, hub) -> Iterator[Path]:
    """A hub reachable at HF_ENDPOINT, nothing read from or written to the machine's own HF cache."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    # huggingface_hub reads these at import: the env alone does not reach a process that imported it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    settings.VAR_DIR = tmp_path / "var"
    settings.EMBED_MODELS = json.dumps({"tiny": {"path": REPO}})
    registry._load.cache_clear()
    yield settings.VAR_DIR
    registry._load.cache_clear()


def test_models_pull_downloads_from_the_hub_once_and_the_registry_serves_the_copy(online, hub, tiny_dir):  # noqa: F811
    assert "tiny" not in registry.model_specs()  # no copy yet

    found = registry.models_pull(["tiny"])

    snapshot = online / "models" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    assert found == {"tiny": str(snapshot)}
    assert (snapshot.parent.parent / "refs" / "main").read_text() == COMMIT
    for name, content in hub.files.items():
        assert (snapshot / name).read_bytes() == content
    asked = set(hub.requests)
    assert ("GET", f"/api/models/{REPO}/revision/main") in asked and ("GET", f"/api/models/{REPO}/tree/{COMMIT}") in asked
    for method in ("HEAD", "GET"):  # each file's metadata, then its bytes
        assert {path.rsplit(f"/{COMMIT}/", 1)[1] for m, path in hub.file_requests() if m == method} == set(hub.files)
    assert not (online.parent / "hf-home" / "hub").exists()  # the download went to VAR_DIR/models only

    spec = registry.model_specs()["tiny"]
    assert (spec.path, spec.dims, spec.max_tokens) == (str(snapshot), 40, 32)
    assert spec.version.startswith("d-")

    before = len(hub.requests)
    assert registry.models_pull(["tiny"]) == {"tiny": str(snapshot)}
    out, err = StringIO(), StringIO()
    call_command("models_pull", "tiny", stdout=out, stderr=err)
    assert f"tiny: present at {snapshot} (dims 40, max_tokens 32, version {spec.version})" in out.getvalue()
    assert f"tiny: {REPO} is present at {snapshot}" in err.getvalue()
    assert "downloading" not in err.getvalue()
    assert len(hub.requests) == before  # the copy is found: the hub is not asked again
