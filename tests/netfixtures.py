"""Helpers for tests (and benchmarks) that start real servers on 127.0.0.1: one copy each."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Linux: a server started with ``preexec_fn=die_with_parent`` gets SIGTERM if pytest itself
    is killed, so no server outlives a run."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120, *, any_status: bool = False) -> None:
    """Wait until ``url`` answers 200 (``any_status``: answers at all, e.g. 401 from a server with
    keys); fail with the server's log if it exits or never answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def start_ragqa_serve(folder: Path, *args: str, env: dict[str, str] | None = None,
                      timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`ragqa serve --no-page` on a free port with its own data and cache under ``folder``;
    -> (process, the API root http://127.0.0.1:PORT/v1). Stop it with ``stop``."""
    import os
    import sys

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    base.update({"RAGQA_CACHE_DIR": str(folder / "cache"), "RAGQA_DATA_DIR": str(folder / "data"),
                 "RAGQA_TEMPERATURE": "0", "HF_HUB_OFFLINE": "1"})
    base.update(env or {})
    log = folder / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ragqa", "serve", "--port", str(port), *args], env=base,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(url + "/models", proc, log, timeout, any_status=True)
    except BaseException:
        stop(proc)
        raise
    proc.log_path = log  # type: ignore[attr-defined]
    return proc, url


class LocalServer:
    """An HTTP server on 127.0.0.1 in a daemon thread, for the stand-in servers (``with`` starts and
    stops it); a subclass calls ``_listen(handler_class)`` and gets ``url`` (its /v1 root)."""

    def _listen(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, quiet, with ``_json(status, body, headers)``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
