"""The HTTP API of a real `ragqa serve` process, through the official `openai` client and httpx.

- the starter models end to end: upload, ingest job, models, completion and stream with sources,
  errors, keys, delete, drop;
- concurrency against tests/standin_openai.py (a stand-in server with a fixed latency that counts
  the requests in flight: the unit of truth for "8 questions at once reach it at once"), the
  queue's 429 and a disconnect that frees its slot and stops its generation;
- a real continuous-batching server: llama.cpp's llama-server (`make llama-server`) with --parallel 4.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from netfixtures import die_with_parent, free_port, start_ragqa_serve, stop, wait_http
from standin_openai import StandIn

from ragqa.models import resolve_llm_path

ROOT = Path(__file__).resolve().parents[2]
HERON = ROOT / "corpora" / "en" / "heron_festival.md"
QUESTION = "When is the Zorblat festival held?"


def upload(url: str, kb: str, *files: tuple[str, bytes], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/kbs/{kb}/documents", files=[("file", f) for f in files], headers=headers, timeout=60)


def wait_job(url: str, job_id: str, key: str | None = None, timeout: float = 300) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = httpx.get(f"{url}/jobs/{job_id}", headers=headers, timeout=10).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def client(url: str, key: str = "no-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ragqa serve --no-page` with the starter models and a KB 'festival' holding heron_festival.md."""
    proc, url = start_ragqa_serve(tmp_path_factory.mktemp("api-starter"), "--no-page", "--max-new-tokens", "60")
    try:
        reply = upload(url, "festival", ("heron_festival.md", HERON.read_bytes()))
        assert reply.status_code == 202, reply.text
        assert wait_job(url, reply.json()["id"])["status"] == "done"
        yield url
    finally:
        stop(proc)


def test_models_completion_and_stream_carry_the_sources(starter: str) -> None:
    api = client(starter)
    assert [m.id for m in api.models.list()] == ["festival"]
    reply = api.chat.completions.create(model="festival", messages=[{"role": "user", "content": QUESTION}])
    assert "march" in reply.choices[0].message.content.lower()
    sources = reply.model_extra["sources"]
    assert sources[0]["source"] == "heron_festival.md" and "second weekend of March" in sources[0]["text"]
    assert reply.usage.prompt_tokens > 50 and reply.usage.completion_tokens > 0

    stream = api.chat.completions.create(model="festival", messages=[{"role": "user", "content": QUESTION}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == reply.choices[0].message.content  # greedy: the same answer, streamed
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].model_extra["sources"] == sources


def test_errors_are_openai_errors(starter: str) -> None:
    api = client(starter)
    with pytest.raises(openai.NotFoundError, match="no knowledge base 'nope'"):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError, match="k"):
        api.chat.completions.create(model="festival", messages=[{"role": "user", "content": QUESTION}],
                                    extra_body={"k": 0})
    with pytest.raises(openai.BadRequestError, match="messages"):
        api.chat.completions.create(model="festival", messages=[])
    reply = httpx.post(f"{starter}/chat/completions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    reply = httpx.get(f"{starter}/no/such/endpoint")
    assert reply.status_code == 404 and "error" in reply.json()


def test_upload_delete_and_drop(starter: str) -> None:
    reply = upload(starter, "scratch", ("note.md", "The Brask ferry leaves at seven.".encode()),
                   ("junk.exe", b"MZ\x00\x00" * 64))
    job = wait_job(starter, reply.json()["id"])
    assert {f["name"]: f["status"] for f in job["files"]} == {"note.md": "added", "junk.exe": "failed"}
    listed = httpx.get(f"{starter}/kbs/scratch/documents").json()["data"]
    # every accepted file is accounted for: the failed one is listed with its reason until dismissed
    assert [(d["source"], d["status"]) for d in listed] == [("note.md", "ok"), ("junk.exe", "failed")]
    assert httpx.delete(f"{starter}/kbs/scratch/documents", params={"source": "note.md"}).json()["deleted"]
    assert httpx.delete(f"{starter}/kbs/scratch/documents", params={"source": "junk.exe"}).json()["deleted"]
    assert httpx.get(f"{starter}/kbs/scratch/documents").json()["data"] == []
    assert httpx.delete(f"{starter}/kbs/scratch").status_code == 200
    assert "scratch" not in [k["name"] for k in httpx.get(f"{starter}/kbs").json()["data"]]


def test_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[[key]]\ntoken = "alice-secret-1"\nwrite = ["*"]\n\n'
                    '[[key]]\ntoken = "bob-reads-only"\nread = ["team"]\n', "utf-8")
    proc, url = start_ragqa_serve(tmp_path / "srv", "--no-page", "--api-keys", str(keys), "--max-new-tokens", "40")
    try:
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        with pytest.raises(openai.AuthenticationError):
            client(url, "not-a-key").models.list()
        reply = upload(url, "team", ("heron.md", HERON.read_bytes()), key="alice-secret-1")
        assert wait_job(url, reply.json()["id"], key="alice-secret-1")["status"] == "done"
        assert upload(url, "team", ("x.md", b"x"), key="bob-reads-only").status_code == 403
        assert upload(url, "private", ("x.md", b"x"), key="bob-reads-only").status_code == 403
        bob = client(url, "bob-reads-only")
        assert [m.id for m in bob.models.list()] == ["team"]
        answer = bob.chat.completions.create(model="team", messages=[{"role": "user", "content": QUESTION}])
        assert answer.model_extra["sources"][0]["source"] == "heron.md"
        log = proc.log_path.read_text()  # type: ignore[attr-defined]
        assert "alice-secret-1" not in log and "bob-reads-only" not in log
    finally:
        stop(proc)


def test_beyond_localhost_without_keys_is_refused_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RAGQA_DATA_DIR": str(tmp_path / "d"), "RAGQA_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "ragqa", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("ragqa: error:") and "--api-keys" in line


# -- concurrency, against the stand-in server ------------------------------------------------


@pytest.fixture
def standin_kb(tmp_path: Path):
    """-> start(latency, *serve args) -> (StandIn, ragqa URL); ragqa on the openai backend."""
    started: list[Any] = []

    def start(latency: float, *args: str, answer: str = "stand-in answer", prefill: float = 0.0) -> tuple[StandIn, str]:
        server = StandIn(latency=latency, tokens=20, answer=answer, prefill=prefill).__enter__()
        proc, url = start_ragqa_serve(tmp_path / f"srv{len(started)}", "--no-page", "--backend", "openai",
                                      "--base-url", server.url, "--chat-format", "chatml", *args)
        started.append((server, proc))
        reply = upload(url, "festival", ("heron_festival.md", HERON.read_bytes()))
        assert wait_job(url, reply.json()["id"])["status"] == "done"
        return server, url

    yield start
    for server, proc in started:
        stop(proc)
        server.__exit__()


def ask(url: str, out: list[Any], **extra: Any) -> None:
    try:
        stream = client(url).chat.completions.create(
            model="festival", messages=[{"role": "user", "content": QUESTION}], stream=True, **extra)
        out.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    except openai.APIError as exc:
        out.append(exc)


def test_eight_streamed_questions_reach_the_model_server_at_once(standin_kb) -> None:
    server, url = standin_kb(2.0)
    answers: list[Any] = []
    threads = [threading.Thread(target=ask, args=(url, answers)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == ["stand-in answer"] * 8
    assert server.peak == 8


def test_past_the_queue_is_429_and_a_disconnect_frees_its_slot(standin_kb) -> None:
    server, url = standin_kb(3.0, "--max-concurrency", "1", "--max-queue", "1")
    # a client that leaves mid-answer: its generation stops at the model server, and its slot is free
    with httpx.stream("POST", f"{url}/chat/completions", timeout=60, json={
            "model": "festival", "messages": [{"role": "user", "content": QUESTION}], "stream": True}) as reply:
        for line in reply.iter_lines():
            if '"content": "stand-in"' in line:
                break
    deadline = time.time() + 10
    while (server.aborted < 1 or server.in_flight) and time.time() < deadline:
        time.sleep(0.05)
    assert server.aborted == 1 and server.in_flight == 0

    answers: list[Any] = []
    threads = [threading.Thread(target=ask, args=(url, answers)) for _ in range(2)]  # 1 generating, 1 waiting
    for t in threads:
        t.start()
    while len(server.requests) < 2 and time.time() < deadline + 10:  # the first has reached the server
        time.sleep(0.02)
    time.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as busy:
        client(url).chat.completions.create(model="festival", messages=[{"role": "user", "content": QUESTION}])
    assert int(busy.value.response.headers["retry-after"]) >= 1
    for t in threads:
        t.join(60)
    assert answers == ["stand-in answer"] * 2
    assert server.peak == 1  # never more than max_concurrency at the server


def test_a_non_streamed_question_whose_client_leaves_stops_too(standin_kb) -> None:
    # every piece carries text: the generation stops at the next token after the client leaves
    server, url = standin_kb(4.0, "--max-concurrency", "1", answer=" ".join(["word"] * 20))
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s of a 4 s answer
        httpx.post(f"{url}/chat/completions", timeout=httpx.Timeout(60, read=1.0), json={
            "model": "festival", "messages": [{"role": "user", "content": QUESTION}]})
    deadline = time.time() + 10
    while (server.aborted < 1 or server.in_flight) and time.time() < deadline:
        time.sleep(0.05)
    assert server.aborted == 1 and server.completed == 0  # its generation stopped at the model server
    answers: list[Any] = []
    ask(url, answers)
    assert answers == [" ".join(["word"] * 20)]  # and its one slot is free


def test_a_client_that_leaves_during_a_long_prefill_frees_its_slot_at_once(standin_kb) -> None:
    # the model server reads the prompt for 8 s before its first token; the client leaves after 1 s
    server, url = standin_kb(0.5, "--max-concurrency", "1", prefill=8.0)
    t0 = time.time()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", timeout=httpx.Timeout(60, read=1.0), json={
            "model": "festival", "messages": [{"role": "user", "content": QUESTION}]})
    server.prefill = 0.0
    answers: list[Any] = []
    ask(url, answers)
    assert answers == ["stand-in answer"]
    assert time.time() - t0 < 6  # the slot was free long before the first question's prefill ended
    assert len(server.requests) == 2 and server.completed == 1


def test_a_model_server_that_fails_is_an_error_not_a_hang(standin_kb) -> None:
    server, url = standin_kb(0.2)
    server.fail_next = 503
    with pytest.raises(openai.APIStatusError) as failed:
        client(url).chat.completions.create(model="festival", messages=[{"role": "user", "content": QUESTION}])
    assert failed.value.status_code == 502 and "503" in failed.value.message
    server.fail_next = 500
    answers: list[Any] = []
    ask(url, answers)  # streamed: an error event after the 200, which the client raises
    assert isinstance(answers[0], openai.APIError) and "500" in str(answers[0])
    ask(url, answers)
    assert answers[1] == "stand-in answer"  # the slot was freed


# -- a real continuous-batching server ---------------------------------------------------------


def _llama_server() -> str | None:
    found = os.environ.get("RAGQA_LLAMA_SERVER")
    if found and Path(found).is_file():
        return found
    built = sorted(Path.home().glob(".cache/ragqa/bin/llama-server-*"))
    built = [p for p in built if p.is_file() and os.access(p, os.X_OK)]
    return str(built[-1]) if built else shutil.which("llama-server")


LLAMA_SERVER = _llama_server()


@pytest.mark.skipif(LLAMA_SERVER is None, reason="llama.cpp's llama-server is not built (make llama-server)")
def test_questions_through_llama_server_with_four_slots(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "llama-server.log"
    with open(log, "w") as out:
        llama = subprocess.Popen(
            [str(LLAMA_SERVER), "-m", str(resolve_llm_path("smollm2")), "--host", "127.0.0.1", "--port", str(port),
             "--parallel", "4", "-c", "8192", "--threads", "2", "--no-webui"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform == "linux" else None)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", llama, log, timeout=120)
        proc, url = start_ragqa_serve(tmp_path / "srv", "--no-page", "--backend", "openai", "--base-url",
                                      f"http://127.0.0.1:{port}/v1", "--chat-format", "chatml", "--n-ctx", "2048",
                                      "--max-new-tokens", "40")
        try:
            reply = upload(url, "festival", ("heron_festival.md", HERON.read_bytes()))
            assert wait_job(url, reply.json()["id"])["status"] == "done"
            answers: list[Any] = []
            threads = [threading.Thread(target=ask, args=(url, answers)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert len(answers) == 4 and all(isinstance(a, str) and "march" in a.lower() for a in answers), answers
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        finally:
            stop(proc)
    finally:
        stop(llama)


@pytest.mark.skipif(LLAMA_SERVER is None, reason="llama.cpp's llama-server is not built (make llama-server)")
def test_a_cancel_during_llama_servers_prefill_returns_at_once(tmp_path: Path) -> None:
    """The relay's cancel on the real server: a 5,000-token prompt takes ~20 s to read here; a
    cancel after 1 s ends the call at once, and llama-server logs the task cancelled."""
    from ragqa.cancel import CancelToken, cancellable
    from ragqa.config import load_settings
    from ragqa.errors import ModelError
    from ragqa.llms.openai_api import OpenAIBackend

    port = free_port()
    log = tmp_path / "llama-server.log"
    with open(log, "w") as out:
        llama = subprocess.Popen(
            [str(LLAMA_SERVER), "-m", str(resolve_llm_path("smollm2")), "--host", "127.0.0.1", "--port", str(port),
             "-c", "8192", "--threads", "2", "--no-webui"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform == "linux" else None)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", llama, log)
        backend = OpenAIBackend(load_settings(None, backend="openai", base_url=f"http://127.0.0.1:{port}/v1",
                                              n_ctx=8192, max_new_tokens=16))
        token = CancelToken()
        timer = threading.Timer(1.0, token.cancel)
        t0 = time.perf_counter()
        timer.start()
        with pytest.raises(ModelError), cancellable(token):
            list(backend.stream("The quick brown fox jumps over the lazy dog. " * 600, max_tokens=16))
        assert time.perf_counter() - t0 < 4
        deadline = time.time() + 30
        while "cancel task" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "cancel task" in log.read_text()
        assert "".join(backend.stream("Hello", max_tokens=2))  # the server goes on answering
    finally:
        stop(llama)
