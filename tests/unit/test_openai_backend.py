"""OpenAIBackend against a small stand-in server (stdlib http.server on 127.0.0.1) that answers the
way llama-cpp-python's server does: /v1/models, streamed /v1/completions, /extras/tokenize/count.
The real client (openai) talks real HTTP; errors must be one line naming the URL."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from langchain_core.embeddings import DeterministicFakeEmbedding

from ragqa.config import Settings, load_settings
from ragqa.errors import ConfigError, ModelError
from ragqa.llms import OpenAIBackend, load_backend
from ragqa.words import estimate_tokens

pytest.importorskip("openai")


@dataclass
class StubState:
    models: list[str] = field(default_factory=lambda: ["tiny"])
    pieces: list[str] = field(default_factory=lambda: ["The", " festival", " is", " in", " March."])
    api_key: str | None = None  # required key, if any
    tokenizer: bool = True
    requests: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)  # (what, body, auth)


def make_handler(state: StubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
                self._json(401, {"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
                return False
            return True

        def do_GET(self) -> None:
            state.requests.append(("GET " + self.path, {}, self.headers.get("Authorization")))
            if not self._authorized():
                return
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me"}
                                                            for m in state.models]})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            state.requests.append(("POST " + self.path, body, self.headers.get("Authorization")))
            if not self._authorized():
                return
            if self.path == "/extras/tokenize/count" and state.tokenizer:
                self._json(200, {"count": len(body["input"].split())})
            elif self.path == "/v1/completions":
                if body.get("model") not in state.models:
                    self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, piece in enumerate(state.pieces):
                    last = i == len(state.pieces) - 1
                    chunk = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                             "choices": [{"text": piece, "index": 0, "logprobs": None,
                                          "finish_reason": "stop" if last else None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            else:
                self._json(404, {"detail": "Not Found"})

    return Handler


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading at a stop string closes the stream mid-write


@pytest.fixture
def stub() -> Iterator[tuple[str, StubState]]:
    """(base_url, state) of a running stand-in server."""
    state = StubState()
    server = QuietServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()


def backend_for(url: str, **overrides: Any) -> OpenAIBackend:
    return load_backend(Settings(base_url=url, **overrides))  # type: ignore[return-value]


def completion_requests(state: StubState) -> list[dict[str, Any]]:
    return [body for what, body, _ in state.requests if what == "POST /v1/completions"]


def test_streams_the_pieces_and_sends_the_generation_settings(stub) -> None:
    url, state = stub
    backend = backend_for(url, api_model="tiny", seed=7)
    assert backend.name == "openai" and backend.model == "tiny"
    pieces = list(backend.stream("the prompt", stop=["<|im_end|>"], max_tokens=33, temperature=0.0, top_k=40,
                                 top_p=0.9, repeat_penalty=1.1))
    assert pieces == state.pieces
    [body] = completion_requests(state)
    assert body == {"model": "tiny", "prompt": "the prompt", "stream": True, "max_tokens": 33, "temperature": 0.0,
                    "top_p": 0.9, "stop": ["<|im_end|>"], "seed": 7, "top_k": 40, "repeat_penalty": 1.1}
    assert backend.stats.prompt_tokens == 2 and backend.stats.completion_tokens == 5


def test_stop_strings_are_also_cut_here(stub) -> None:
    """A server that ignores stop (or more than the API's 4 stops) still gets its text cut."""
    url, state = stub
    state.pieces = ["Answer.", "</s>", "[INST] junk"]
    backend = backend_for(url)
    assert "".join(backend.stream("p", stop=["a1", "a2", "a3", "a4", "</s>"], max_tokens=5)) == "Answer."
    assert completion_requests(state)[0]["stop"] == ["a1", "a2", "a3", "a4"]


def test_api_model_defaults_to_the_only_model_served(stub) -> None:
    url, state = stub
    assert backend_for(url).model == "tiny"
    state.models = ["a", "b"]
    with pytest.raises(ConfigError, match=r"offers 2 models \(a, b\); set api_model"):
        backend_for(url)


def test_an_unlisted_api_model_is_sent_with_a_note(stub) -> None:
    url, state = stub
    state.models = ["/models/smollm2.gguf"]
    backend = backend_for(url, api_model="smollm2")
    assert backend.model == "smollm2"
    assert any("lists /models/smollm2.gguf, not 'smollm2'" in n for n in backend.notes)


def test_tokens_are_counted_by_the_server(stub) -> None:
    url, state = stub
    backend = backend_for(url)
    assert backend.count_tokens("one two three") == 3
    assert backend.count_tokens("one two three") == 3  # cached: asked once
    counted = [b for what, b, _ in state.requests if what == "POST /extras/tokenize/count"]
    assert counted[-1] == {"input": "one two three", "model": "tiny"}
    assert len([b for b in counted if b["input"] == "one two three"]) == 1
    assert backend.notes == []


def test_without_a_tokenizer_endpoint_counts_are_estimated_with_a_note(stub) -> None:
    url, state = stub
    state.tokenizer = False
    backend = backend_for(url)
    assert backend.count_tokens("熊猫 eats bamboo") == estimate_tokens("熊猫 eats bamboo") == 6
    assert any("estimated" in n for n in backend.notes)


def test_auto_chat_format_is_alpaca2_with_a_note(stub) -> None:
    url, _ = stub
    backend = backend_for(url)
    assert backend.chat_format("chatml").name == "chatml" and backend.notes == []
    assert backend.chat_format("auto").name == "alpaca-2"
    assert any("cannot read the model's chat template" in n for n in backend.notes)


def test_context_is_n_ctx(stub) -> None:
    url, _ = stub
    backend = backend_for(url, n_ctx=2048, max_new_tokens=100)
    assert backend.context_size() == 2048
    with pytest.raises(ModelError, match="does not fit n_ctx 2048"):
        list(backend.stream("w " * 2000, max_tokens=100))


# --------------------------------------------------------------------------- errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError) as err:
        backend_for(url)
    message = str(err.value)
    assert message.startswith(f"cannot reach the OpenAI-compatible server at {url}")
    assert "refused" in message.lower() and "\n" not in message


def test_a_refused_key_says_where_to_set_it_and_never_shows_it(stub) -> None:
    url, state = stub
    state.api_key = "sk-right"
    with pytest.raises(ModelError) as err:
        backend_for(url, api_key="sk-wrong-secret")
    message = str(err.value)
    assert url in message and "401" in message and "RAGQA_API_KEY" in message
    assert "sk-wrong-secret" not in message
    backend = backend_for(url, api_key="sk-right")  # the right key is sent as a bearer token
    assert list(backend.stream("p", max_tokens=3))
    assert {auth for _, _, auth in state.requests[-3:]} == {"Bearer sk-right"}  # models, tokenizer, completion


def test_an_unknown_model_is_one_line_naming_model_and_url(stub) -> None:
    url, _ = stub
    backend = backend_for(url, api_model="nope")
    with pytest.raises(ModelError) as err:
        list(backend.stream("p", max_tokens=3))
    message = str(err.value)
    assert url in message and "'nope'" in message and "404" in message and "\n" not in message


def test_the_key_comes_from_the_environment(stub, monkeypatch) -> None:
    url, state = stub
    state.api_key = "sk-env"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert backend_for(url).model == "tiny"


def test_a_questions_tokens_are_counted_before_it_waits_for_a_slot(stub, tmp_path) -> None:
    """A server answers /tokenize on the threads its streams hold: counted inside the generation
    slot, a count would wait behind other answers while the slot idles. prepare() counts; generate()
    finds the counts cached and sends only the completion."""
    from ragqa.pipeline import Pipeline

    url, state = stub
    doc = tmp_path / "festival.md"
    doc.write_text("The heron festival is held in March. " * 20, encoding="utf-8")
    p = Pipeline(load_settings(None, backend="openai", base_url=url, chat_format="chatml",
                               data_dir=tmp_path / "d", cache_dir=tmp_path / "c"))
    p._embeddings = DeterministicFakeEmbedding(size=8)
    p.ingest("kb", [doc])
    state.requests.clear()
    prepared = p.prepare("When is the festival?", kb="kb")
    counted = [what for what, _, _ in state.requests if "tokenize" in what]
    assert counted  # the prompt's tokens, counted here
    state.requests.clear()
    answer = [x for x in p.generate(prepared) if not isinstance(x, str)][0]
    assert answer.answer == "The festival is in March.[1]"
    assert [what for what, _, _ in state.requests] == ["POST /v1/completions"]


def test_a_server_that_sends_no_first_token_in_time_is_a_timeout_not_a_wait(tmp_path) -> None:
    """A stand-in that answers the headers, then stays silent (a hung server, or one reading a
    huge prompt): past first_token_timeout the question fails in one line and the request is closed."""
    from standin_openai import StandIn

    from ragqa.errors import ModelTimeout

    with StandIn(latency=0.1, prefill=30.0) as server:
        settings = Settings(backend="openai", base_url=server.url, chat_format="chatml", first_token_timeout=0.5,
                            cache_dir=tmp_path, data_dir=tmp_path / "d")
        backend = OpenAIBackend(settings)
        with pytest.raises(ModelTimeout, match=r"no first token within 0.5 s \(first_token_timeout\)"):
            list(backend.stream("hello", max_tokens=5))
        assert server.completed == 0 and server.in_flight == 1  # it gave up while the server was still silent
