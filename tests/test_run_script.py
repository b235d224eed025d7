"""scripts/run.py (what `make run` and `make web` run): refusing a port another server holds."""

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_port_taken_tells_a_listening_port_from_a_free_one():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    with _listening() as sock:
        port = sock.getsockname()[1]
        assert run.port_taken("127.0.0.1", port) is True
    assert run.port_taken("127.0.0.1", port) is False  # closed: free again


def test_the_web_refuses_a_port_in_use_and_names_the_setting(tmp_path):
    # granian binds with SO_REUSEPORT: without this check it would share the port with whatever
    # holds it (a stale server of another run answering part of the requests).
    with _listening() as sock:
        port = sock.getsockname()[1]
        done = subprocess.run([sys.executable, "scripts/run.py", "web", "--no-migrate"], cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "PORT": str(port), "VAR_DIR": str(tmp_path)},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr and "set PORT=" in done.stderr


def test_a_port_that_is_not_a_number_is_named(tmp_path):
    done = subprocess.run([sys.executable, "scripts/run.py", "web", "--no-migrate"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PORT": "80OO", "VAR_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "PORT='80OO' is not a port number" in done.stderr
