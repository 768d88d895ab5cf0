"""The HTTP API through FastAPI's TestClient, with fakes: a FakeBackend for the model and
CountingEmbeddings for the vectors (tests/unit/conftest.py). The real server, the official openai
client and real models are in tests/integration/test_api_server.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeBackend
from fastapi.testclient import TestClient

from ragqa.api.app import build_api
from ragqa.api.access import Door
from ragqa.api.keys import KeyRing, digest
from ragqa.pipeline.jobs import IngestJobs

DOC = "熊猫是中国特有的动物，主要生活在四川的山区。熊猫的主要食物是竹子，每天要吃十几个小时。"


@pytest.fixture
def api(make_pipeline, tmp_path: Path):
    """-> make(keys=None, **settings) -> (TestClient, pipeline); a KB 'pandas' holds one document."""
    made: list[TestClient] = []

    def make(keys: KeyRing | None = None, backend: FakeBackend | None = None, **settings: Any):
        pipeline = make_pipeline(backend=backend or FakeBackend(["熊猫 主要 吃 竹子。"]), **settings)
        doc = tmp_path / "panda.txt"
        doc.write_text(DOC, "utf-8")
        pipeline.ingest("pandas", [doc])
        client = TestClient(build_api(pipeline, Door(keys), IngestJobs(pipeline)), raise_server_exceptions=False)
        made.append(client)
        return client, pipeline

    yield make
    for c in made:
        c.close()


def chat(client: TestClient, headers: dict[str, str] | None = None, **body: Any):
    body = {"model": "pandas", "messages": [{"role": "user", "content": "熊猫吃什么？"}], **body}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def error_of(reply) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


def test_models_lists_the_knowledge_bases(api) -> None:
    client, _ = api()
    reply = client.get("/v1/models")
    assert reply.status_code == 200
    assert [(m["id"], m["object"]) for m in reply.json()["data"]] == [("pandas", "model")]


def test_completion_answers_with_sources_and_usage(api) -> None:
    client, _ = api()
    reply = chat(client)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion" and body["model"] == "pandas"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "熊猫 主要 吃 竹子。[1]"}  # cited
    assert body["choices"][0]["finish_reason"] == "stop"
    [source] = body["sources"]
    assert source["source"] == str(Path(source["source"]))  # a file indexed from elsewhere: its path
    assert source["text"] == DOC and source["start"] == 0 and 0 < source["score"] <= 1
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
    # the cited sentence, exactly at its offsets in the document, named as sources names it
    assert body["answerable"] is True and body["unsupported"] == []
    [cite] = body["citations"]
    assert cite["n"] == 1 and cite["sentence"] == 0 and cite["source"] == source["source"]
    assert DOC[cite["start"]:cite["end"]] == cite["quote"] and "竹子" in cite["quote"]


def test_streaming_sends_openai_chunks_and_sources_last(api) -> None:
    client, _ = api()
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "pandas", "messages": [{"role": "user", "content": "熊猫吃什么？"}], "stream": True,
        "stream_options": {"include_usage": True}}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "熊猫 主要 吃 竹子。[1]"  # the stream carries the markers too
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert last["sources"][0]["text"] == DOC
    assert last["citations"][0]["quote"] in DOC and last["answerable"] is True
    assert not any("sources" in c for c in chunks[:-1])


def test_earlier_turns_reach_retrieval_and_the_prompt(api) -> None:
    backend = FakeBackend(["它 住在 四川。"])
    client, _ = api(backend=backend)
    reply = chat(client, messages=[{"role": "system", "content": "你是动物学家。"},
                                   {"role": "user", "content": "熊猫吃什么？"},
                                   {"role": "assistant", "content": "竹子。"},
                                   {"role": "user", "content": "它住在哪里？"}])
    assert reply.status_code == 200, reply.text
    prompt = backend.calls[0]["prompt"]
    assert "熊猫吃什么？" in prompt and "竹子。" in prompt and "它住在哪里？" in prompt
    assert "你是动物学家。" in prompt  # the system message is the system prompt


def test_generation_fields_reach_the_model(api) -> None:
    backend = FakeBackend()
    client, _ = api(backend=backend)
    assert chat(client, temperature=0, max_tokens=7, top_p=0.5, seed=3).status_code == 200
    params = backend.calls[0]["params"]
    assert (params["temperature"], params["max_tokens"], params["top_p"], params["seed"]) == (0, 7, 0.5, 3)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"k": 0}, 400, "k"),
    ({"temperature": -1}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "image_url"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "empty"),
    ({"model": "nope"}, 404, "nope"),
    ({"fusion": "bogus"}, 400, "fusion"),
    ({"n": 2}, 400, "n"),
])
def test_bad_requests_are_openai_errors(api, body: dict[str, Any], status: int, fragment: str) -> None:
    client, _ = api()
    reply = chat(client, **body)
    assert reply.status_code == status, reply.text
    assert fragment in error_of(reply)["message"]


def test_what_one_request_may_cost_is_checked_before_the_work(api) -> None:
    backend = FakeBackend()
    client, pipeline = api(backend=backend, max_question_chars=50, max_messages=4)
    calls = pipeline.embeddings.calls if hasattr(pipeline.embeddings, "calls") else None
    reply = chat(client, messages=[{"role": "user", "content": "熊" * 51}])
    assert reply.status_code == 400 and "at most 50 (max_question_chars)" in error_of(reply)["message"]
    reply = chat(client, messages=[{"role": "user", "content": "熊猫吃什么？"}] * 5)
    assert reply.status_code == 400 and error_of(reply)["code"] == "too_many_messages"
    assert "at most 4 (max_messages)" in error_of(reply)["message"]
    assert not backend.calls and (calls is None or pipeline.embeddings.calls == calls)
    # a long conversation within the count keeps only the latest turns that fit (4 x 50 characters)
    old = [{"role": "user", "content": "旧问题" * 40}, {"role": "assistant", "content": "旧答案" * 40}]
    reply = chat(client, messages=[*old, {"role": "user", "content": "熊猫吃什么？"}])
    assert reply.status_code == 200 and "旧问题" not in backend.calls[-1]["prompt"]


@pytest.mark.parametrize(("body", "code"), [
    (b"[" * 50_000 + b"]" * 50_000, "too_deep"),
    (b'{"model": "pandas", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_unicode"),
])
def test_deep_or_invalid_unicode_bodies_are_400_not_500(api, body: bytes, code: str) -> None:
    client, _ = api()
    reply = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and error_of(reply)["code"] == code


def test_malformed_json_and_unknown_endpoints(api) -> None:
    client, _ = api()
    reply = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and "JSON" in error_of(reply)["message"]
    reply = client.get("/v1/nothing-here")
    assert reply.status_code == 404 and error_of(reply)["code"] == "unknown_url"


def keyring(tmp_path: Path) -> KeyRing:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'''
[[key]]
name = "reader"
token = "read-only-token"
read = ["pandas"]

[[key]]
sha256 = "{digest("writer-token")}"
write = ["*"]

[[key]]
token = "other-kb-token"
read = ["other"]
''', "utf-8")
    return KeyRing.load(keys)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_keys_gate_every_request(api, tmp_path: Path) -> None:
    client, _ = api(keys=keyring(tmp_path))
    assert client.get("/v1/models").status_code == 401
    assert error_of(client.get("/v1/models", headers=bearer("wrong-token!")))["code"] == "invalid_api_key"
    assert [m["id"] for m in client.get("/v1/models", headers=bearer("read-only-token")).json()["data"]] == ["pandas"]
    assert client.get("/v1/models", headers=bearer("other-kb-token")).json()["data"] == []  # only what it may read
    assert chat(client, bearer("read-only-token")).status_code == 200
    assert chat(client, bearer("other-kb-token")).status_code == 404  # never told it exists
    upload = client.post("/v1/kbs/pandas/documents", files={"file": ("a.txt", b"x" * 10)},
                         headers=bearer("read-only-token"))
    assert upload.status_code == 403 and error_of(upload)["type"] == "permission_error"
    assert client.delete("/v1/kbs/pandas", headers=bearer("read-only-token")).status_code == 403
    assert client.delete("/v1/kbs/pandas", headers=bearer("other-kb-token")).status_code == 404
    assert chat(client, bearer("writer-token")).status_code == 200  # write implies read; sha256 works


@pytest.mark.parametrize(("text", "fragment"), [
    ("[[key]]\nread = ['a']\n", "exactly one of token and sha256"),
    ("[[key]]\ntoken = 'short'\nread = ['a']\n", "at least 8"),
    ("[[key]]\ntoken = 'long-enough'\n", "may read nothing"),
    ("[[key]]\ntoken = 'long-enough'\nread = ['a']\ncolour = 1\n", "colour"),
    ("[[key]]\nsha256 = 'abc'\nread = ['a']\n", "64 hex"),
    ("token = 'x'", "[[key]]"),
    ("[[key]\n", "not valid TOML"),
])
def test_a_bad_keys_file_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    from ragqa.errors import ConfigError

    path = tmp_path / "keys.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match="api-keys") as err:
        KeyRing.load(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.time() + 30
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("the job did not finish")


def test_upload_is_a_background_job_and_the_document_is_then_answered(api, data_dir: Path) -> None:
    client, _ = api()
    reply = client.post("/v1/kbs/new-kb/documents", files=[
        ("file", ("bamboo.md", "竹子是熊猫的食物。竹林在四川很常见。".encode())),
        ("file", ("bad.bin", b"\x00\x01\x02" * 100)),
        ("file", ("empty.txt", b"")),
        ("purpose", (None, "assistants")),  # another field, ignored
    ])
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] in ("queued", "running", "done")
    job = wait_job(client, reply.json()["id"])
    assert job["status"] == "done", json.dumps(job, ensure_ascii=False)
    assert job["progress"] == {"files_done": 3, "files_total": 3}
    files = {f["name"]: f for f in job["files"]}
    assert files["bamboo.md"]["status"] == "added" and files["bamboo.md"]["chunks"] == 1
    assert files["bad.bin"]["status"] == "failed" and ".bin" in files["bad.bin"]["error"]
    assert files["empty.txt"]["status"] == "failed" and "empty" in files["empty.txt"]["error"]
    assert all(str(data_dir) not in f["error"] for f in job["files"] if f["error"])  # no server folders told
    # every accepted upload is accounted for: in the KB, or failed with its reason (and no copy kept)
    docs = {d["source"]: d for d in client.get("/v1/kbs/new-kb/documents").json()["data"]}
    assert [(n, d["status"]) for n, d in docs.items()] == [("bamboo.md", "ok"), ("bad.bin", "failed"),
                                                           ("empty.txt", "failed")]
    assert "empty" in docs["empty.txt"]["error"]
    assert (data_dir / "uploads" / "new-kb" / "bamboo.md").is_file()
    assert sorted(p.name for p in (data_dir / "uploads").rglob("*") if p.is_file()) == ["bamboo.md"]
    body = chat(client, model="new-kb").json()
    assert body["sources"][0]["source"] == "bamboo.md"
    again = wait_job(client, client.post("/v1/kbs/new-kb/documents",
                                         files={"file": ("bamboo.md", "竹子是熊猫的食物。竹林在四川很常见。".encode())}
                                         ).json()["id"])
    assert again["files"][0]["status"] == "unchanged"


def test_an_oversized_upload_is_413_and_nothing_is_kept(api, data_dir: Path) -> None:
    client, _ = api(max_file_mb=0.001)
    reply = client.post("/v1/kbs/pandas/documents", files={"file": ("big.txt", b"a" * 5000)})
    assert reply.status_code == 413 and "big.txt" in error_of(reply)["message"]
    uploads = data_dir / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()]  # no staged part, no copy
    assert client.post("/v1/kbs/pandas/documents", content=b"x",
                       headers={"Content-Type": "text/plain"}).status_code == 400
    assert client.post("/v1/kbs/bad..name/documents", files={"file": ("a.txt", b"x")}).status_code == 400


def test_delete_a_document_and_drop_a_kb(api, data_dir: Path) -> None:
    client, pipeline = api()
    job = wait_job(client, client.post("/v1/kbs/pandas/documents",
                                       files={"file": ("more.txt", "竹子很好吃。".encode())}).json()["id"])
    assert job["status"] == "done"
    assert client.delete("/v1/kbs/pandas/documents").status_code == 400
    assert client.delete("/v1/kbs/pandas/documents", params={"source": "nope.txt"}).status_code == 404
    reply = client.delete("/v1/kbs/pandas/documents", params={"source": "more.txt"})
    assert reply.status_code == 200 and reply.json()["deleted"] is True
    assert not (data_dir / "uploads" / "pandas" / "more.txt").exists()
    assert [d["source"] for d in client.get("/v1/kbs/pandas/documents").json()["data"]] != ["more.txt"]
    assert client.delete("/v1/kbs/pandas").status_code == 200
    assert client.get("/v1/models").json()["data"] == []
    assert chat(client).status_code == 404


class SlowBackend(FakeBackend):
    """Each generation waits on a shared barrier, so the test decides when answers finish."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__(["慢 的 回答。"])
        self.release = release
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: Any = None, **params: Any):
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.release.wait(10)
            yield from super().stream(prompt, stop, stats=stats, **params)
        finally:
            with self._lock:
                self.running -= 1


def test_questions_generate_up_to_max_concurrency_and_429_past_the_queue(api) -> None:
    release = threading.Event()
    backend = SlowBackend(release)
    client, pipeline = api(backend=backend, max_concurrency=2, max_queue=1)
    replies: list[Any] = []
    threads = [threading.Thread(target=lambda: replies.append(chat(client))) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while pipeline.gate.stats()["admitted"] < 3 and time.time() < deadline:
        time.sleep(0.01)
    busy = chat(client)  # 2 generating, 1 waiting: no room
    assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
    assert error_of(busy)["code"] == "rate_limit_exceeded"
    while backend.running < 2 and time.time() < deadline:  # two generating, the third in line
        time.sleep(0.01)
    assert pipeline.gate.stats()["running"] == 2
    release.set()
    for t in threads:
        t.join(20)
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert backend.peak == 2  # two at once, never more
    assert pipeline.gate.stats()["admitted"] == pipeline.gate.stats()["running"] == 0


def test_eight_questions_at_once_reach_an_openai_server_at_once(make_settings, tmp_path: Path) -> None:
    """The unit of truth for "never serialise what the model server can batch": the real openai
    backend against a stand-in server (tests/standin_openai.py) that takes 1 s per answer, however
    many come together, and counts them in flight."""
    from conftest import CountingEmbeddings
    from standin_openai import StandIn

    from ragqa.pipeline import Pipeline

    with StandIn(latency=1.0) as server:
        pipeline = Pipeline(make_settings(backend="openai", base_url=server.url, chat_format="chatml"))
        pipeline._embeddings = CountingEmbeddings()
        doc = tmp_path / "panda.txt"
        doc.write_text(DOC, "utf-8")
        pipeline.ingest("pandas", [doc])
        assert pipeline.gate.slots == 8  # the openai backend's default
        with TestClient(build_api(pipeline, None, IngestJobs(pipeline))) as client:
            replies: list[Any] = []
            threads = [threading.Thread(target=lambda: replies.append(chat(client))) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
    assert all(r.json()["choices"][0]["message"]["content"] == "stand-in answer" for r in replies)
    assert server.peak == 8  # all eight were generating together (bench/bench_serve.py measures the speed)


def test_the_page_asks_through_the_same_gate(make_settings, tmp_path: Path) -> None:
    """Four page questions at once reach the server at once (the page used to run one at a time)."""
    from conftest import CountingEmbeddings
    from standin_openai import StandIn

    from ragqa.pipeline import Pipeline
    from ragqa.web import Handlers

    with StandIn(latency=0.8) as server:
        pipeline = Pipeline(make_settings(backend="openai", base_url=server.url, chat_format="chatml"))
        pipeline._embeddings = CountingEmbeddings()
        doc = tmp_path / "panda.txt"
        doc.write_text(DOC, "utf-8")
        pipeline.ingest("pandas", [doc])
        handlers = Handlers(pipeline)
        answers: list[str] = []

        def ask() -> None:
            *_, (chat_log, *_rest) = handlers.ask("pandas", "熊猫吃什么？", [])
            answers.append(chat_log[-1]["content"])

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(answers) == 4 and all("stand-in answer" in a for a in answers)
    assert server.peak == 4
