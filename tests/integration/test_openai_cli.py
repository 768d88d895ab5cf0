"""The openai backend against a real OpenAI-compatible server on 127.0.0.1: llama-cpp-python's own
(``python -m llama_cpp.server``) serving the starter SmolLM2 GGUF."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from netfixtures import die_with_parent, free_port, stop

from ragqa.config import Settings
from ragqa.models import resolve_llm_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HERON = ROOT / "corpora" / "en" / "heron_festival.md"
QUESTION = "When is the Zorblat festival held, and what does it celebrate?"
THREADS = "2"  # the server and the local llama.cpp run alike, so greedy answers can be compared
START_TIMEOUT_S = 180




def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _llama_server(log_dir: Path) -> Iterator[str]:
    """llama-cpp-python's server on a free port, once it answers; always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_llm_path("smollm2")),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
             "--n_threads", THREADS],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text("utf-8", errors="replace")[-3000:]
                pytest.fail(f"llama_cpp.server did not come up on {url} (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _llama_server(tmp_path_factory.mktemp("llama-server")) as url:
        yield url


@pytest.fixture
def fresh_server_url(tmp_path: Path) -> Iterator[str]:
    """A server that has answered nothing yet: llama.cpp reuses the KV cache of its previous
    prompt, and a greedy answer computed on a reused cache can differ by a token from one
    computed fresh, as the local backend (a new process) computes it."""
    with _llama_server(tmp_path) as url:
        yield url


def test_ask_through_the_server_answers_from_the_document(run_ragqa, server_url: str) -> None:
    proc = run_ragqa("ask", str(HERON), QUESTION, "--backend", "openai", "--base-url", server_url,
                     "--api-model", "smollm2", "--chat-format", "chatml", "--max-new-tokens", "60")
    answer, _, sources = proc.stdout.partition("\nSources:\n")
    assert "march" in answer.lower() or "heron" in answer.lower(), answer
    assert f"[1] {HERON}" in sources and "Quillby" in sources
    assert "estimated" not in proc.stderr  # the server's tokenizer counted the tokens
    assert "Traceback" not in proc.stderr


def test_same_answer_as_local_llama_cpp(ask_json, fresh_server_url: str) -> None:
    """Same GGUF, same prompt, greedy: a fresh server gives what ragqa's own llama.cpp backend
    gives. No --backend or --api-model: base_url picks openai, and the server's only model is used."""
    common = (str(HERON), QUESTION, "--chat-format", "chatml", "--max-new-tokens", "60", "--threads", THREADS)
    remote = ask_json(*common, "--base-url", fresh_server_url)
    local = ask_json(*common)
    assert remote["answer"] and remote["answer"] == local["answer"]
    assert remote["timings"]["prompt_tokens"] == local["timings"]["prompt_tokens"]
    assert remote["timings"]["completion_tokens"] > 0
    assert remote["sources"] == local["sources"]


def test_streaming_through_the_python_api(server_url: str) -> None:
    from ragqa.llms import load_backend

    backend = load_backend(Settings(base_url=server_url, api_model="smollm2"))
    assert backend.name == "openai"
    fmt = backend.chat_format("chatml")
    prompt = fmt.prompt("What is the capital of France? Answer in one sentence.")
    pieces = list(backend.stream(prompt, stop=list(fmt.stop), max_tokens=30, temperature=0.0, top_k=40, top_p=0.9,
                                 repeat_penalty=1.1))
    assert len(pieces) >= 3, pieces
    assert "Paris" in "".join(pieces) and "<|im_end|>" not in "".join(pieces)
    assert backend.stats.completion_tokens >= 3 and backend.stats.prompt_tokens == backend.count_tokens(prompt)


def test_auto_chat_format_over_the_api_is_alpaca2_with_a_note(run_ragqa, server_url: str) -> None:
    proc = run_ragqa("ask", str(HERON), QUESTION, "--base-url", server_url, "--dry-run")
    assert proc.stdout.startswith("[INST] <<SYS>>\n")
    assert "cannot read the model's chat template" in proc.stderr


def test_json_never_carries_the_api_key(run_ragqa, server_url: str, monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_API_KEY", "sk-test-not-shown")  # the server has no key: any is accepted
    proc = run_ragqa("ask", str(HERON), QUESTION, "--base-url", server_url, "--chat-format", "chatml",
                     "--max-new-tokens", "8", "--json")
    assert json.loads(proc.stdout)["answer"]
    assert "sk-test-not-shown" not in proc.stdout + proc.stderr
