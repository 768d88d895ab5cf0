"""A stand-in OpenAI-compatible completions server with a fixed latency, for concurrency tests.

It is a fake on purpose: it answers every request in ``latency`` seconds (streamed as ``tokens``
pieces), however many arrive together, and counts the requests in flight, so a test can see how
many questions ragqa really sent at once and whether a cancelled one stopped. The real batching
server (llama.cpp's llama-server) is in tests/integration and bench/bench_serve.py.

    with StandIn(latency=1.0) as server:
        ... Settings(backend="openai", base_url=server.url) ...
        server.peak, server.completed, server.aborted
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from netfixtures import JsonHandler, LocalServer

MODEL = "standin"


class StandIn(LocalServer):
    def __init__(self, latency: float = 1.0, tokens: int = 10, answer: str = "stand-in answer",
                 prefill: float = 0.0) -> None:
        self.latency, self.tokens, self.answer = latency, tokens, answer
        self.prefill = prefill  # seconds of silence after the headers, before the first token (a long prompt)
        self.in_flight = 0
        self.peak = 0
        self.completed = 0
        self.aborted = 0
        self.requests: list[dict[str, Any]] = []
        self.fail_next: int | None = None  # an HTTP status for the next completion request, then normal
        self._lock = threading.Lock()
        self._listen(self._handler())

    def wait_idle(self, timeout: float = 10) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.in_flight == 0:
                return True
            time.sleep(0.02)
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/completions":
                    self._json(404, {"error": {"message": "not found"}})  # no tokenizer: ragqa estimates
                    return
                with standin._lock:
                    standin.requests.append(body)
                    fail, standin.fail_next = standin.fail_next, None
                if fail:
                    self._json(fail, {"error": {"message": f"stand-in failure {fail}", "type": "server_error"}})
                    return
                with standin._lock:
                    standin.in_flight += 1
                    standin.peak = max(standin.peak, standin.in_flight)
                try:
                    if body.get("stream"):
                        self._stream()
                    else:
                        time.sleep(standin.latency)
                        self._json(200, {"id": "cmpl-x", "object": "text_completion", "model": MODEL,
                                         "choices": [{"index": 0, "text": standin.answer, "finish_reason": "stop"}]})
                    with standin._lock:
                        standin.completed += 1
                except (BrokenPipeError, ConnectionResetError):
                    with standin._lock:
                        standin.aborted += 1
                finally:
                    with standin._lock:
                        standin.in_flight -= 1

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                time.sleep(standin.prefill)
                words = standin.answer.split(" ")
                pieces = [(w if i == 0 else " " + w) for i, w in enumerate(words)]
                pieces += [""] * max(0, standin.tokens - len(pieces))
                for piece in pieces:
                    time.sleep(standin.latency / max(1, len(pieces)))
                    self._chunk({"id": "cmpl-x", "object": "text_completion", "model": MODEL,
                                 "choices": [{"index": 0, "text": piece, "finish_reason": None}]})
                self._chunk({"id": "cmpl-x", "object": "text_completion", "model": MODEL,
                             "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
                self._write(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _chunk(self, body: dict[str, Any]) -> None:
                self._write(f"data: {json.dumps(body)}\n\n".encode())

            def _write(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler
