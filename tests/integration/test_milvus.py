"""Knowledge bases on Milvus: a real Milvus server process (milvus-lite's gRPC server) on
127.0.0.1, the real pipeline and CLI, the real starter embeddings (multilingual-e5-small).

milvus-lite is pure Python and slow (a search takes 0.5-4 s at 10k chunks), so the documents are
a handful of short files. Standalone, Distributed and Zilliz Cloud speak the same gRPC API; they
are not started here (no docker, no network)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netfixtures import free_port, stop

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'ragqa[milvus]')")


def _milvus_lite_command() -> list[str] | None:
    beside = Path(sys.executable).with_name("milvus-lite")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("milvus-lite")
    return [found] if found else None


MILVUS_LITE = _milvus_lite_command()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(MILVUS_LITE is None, reason="milvus-lite is not installed: no Milvus server to test against "
                       "(pip install milvus-lite)"),
]

DOCS = {
    "panda.txt": "熊猫是中国特有的动物，主要生活在四川的山区。熊猫的主要食物是竹子，每天要吃十几个小时。",
    "contract.txt": "本合同有效期为三年。任何一方提前解除合同，应当向对方支付违约金人民币五万元。",
    "ferry.md": "The Brask ferry leaves Quillby pier every morning at seven. Tickets cost four coins.",
}
PANDA_QUESTION = "熊猫的主要食物是什么？"




def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_") and k != "MILVUS_TOKEN"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`milvus-lite server` on a free port for this module; killed at the end."""
    from pymilvus import MilvusClient, MilvusException

    assert MILVUS_LITE is not None
    data = tmp_path_factory.mktemp("milvus-data")
    port = free_port()
    log_path = data.parent / f"milvus-lite-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*MILVUS_LITE, "server", "--data-dir", str(data), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"milvus-lite exited ({proc.returncode}): {log_path.read_text()}")
            try:
                MilvusClient(uri=uri, timeout=2).close()
                break
            except MilvusException:
                if time.time() > deadline:
                    raise AssertionError(f"milvus-lite did not answer on {uri} within 60 s") from None
                time.sleep(0.3)
        yield uri
    finally:
        stop(proc)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, "utf-8")
    return folder


class CountingEmbeddings:
    """The real embeddings, counting the texts embedded (what indexing skipped is visible)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.documents_embedded = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragqa.store.base import PROBE_TEXTS

        if list(texts) != list(PROBE_TEXTS):  # a new KB's fingerprint is not the user's chunks
            self.documents_embedded += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


_EMBEDDINGS: dict[str, Any] = {}


@pytest.fixture
def pipeline(milvus_uri: str, tmp_path: Path):
    """-> make(**settings): a Pipeline on the Milvus server, sharing one loaded embedding model."""
    from ragqa.config import Settings
    from ragqa.pipeline import Pipeline

    def make(**overrides: Any) -> Pipeline:
        overrides = {"store": milvus_uri, "cache_dir": tmp_path / "cache", "data_dir": tmp_path / "data", **overrides}
        p = Pipeline(Settings(**overrides))
        key = p.embedding_spec.cache_id
        if key not in _EMBEDDINGS:
            _EMBEDDINGS[key] = p.embeddings
        p._embeddings = CountingEmbeddings(_EMBEDDINGS[key])
        return p

    return make


def names(docs: list[Any]) -> list[str]:
    return [Path(d.metadata["source"]).name for d in docs]


def bm25_files(kb: Any, query: str) -> list[str]:
    return names(kb.get_chunks([i for i, _ in kb.bm25_search(query, 5)]))


def ragqa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ragqa", *args], capture_output=True, text=True, env=_clean_env(),
                          timeout=timeout, check=False)


# -- asking -----------------------------------------------------------------------------------------


def test_every_retriever_finds_the_one_file_that_answers(pipeline, docs: Path) -> None:
    p = pipeline()
    kb = p.open_kb("qa", create=True)
    report = p.index_paths(kb, [docs])
    assert (report.added, report.failed, kb.count()) == (3, [], 3)
    for retriever in ("vector", "bm25", "hybrid"):
        answer = p.ask([], PANDA_QUESTION, kb="qa", dry_run=True, retriever=retriever, k=1)
        assert [Path(s.source).name for s in answer.sources] == ["panda.txt"], retriever
        assert "竹子" in answer.prompts[0]
    # Milvus's own jieba analyzer: a word inside a long Chinese run is found, punctuation matches nothing
    assert bm25_files(kb, "违约金") == ["contract.txt"]
    assert bm25_files(kb, "ferry tickets") == ["ferry.md"]
    assert bm25_files(kb, "？。，") == []
    assert bm25_files(kb, "长颈鹿") == []  # no shared word: nothing, as with the local engine
    [doc] = kb.get_chunks([kb.bm25_search("违约金", 1)[0][0]])
    assert doc.metadata["source"] == str(docs.resolve() / "contract.txt") and doc.id == str(doc.metadata["chunk_id"])


def test_a_view_searches_only_its_files(pipeline, docs: Path) -> None:
    p = pipeline()
    kb = p.open_kb("view", create=True)
    p.index_paths(kb, [docs])
    ferry = next(r.id for r in kb.files() if r.path.endswith("ferry.md"))
    vector = kb.search_ids(p.embeddings.embed_query(PANDA_QUESTION), 3, [ferry])
    assert [kb.get_chunks([i])[0].metadata["source"].endswith("ferry.md") for i, _ in vector] == [True]
    assert kb.bm25_search("熊猫", 3, [ferry]) == []
    assert names(kb.iter_chunks([ferry])) == ["ferry.md"]


# -- incremental indexing ---------------------------------------------------------------------------


def test_reindexing_skips_unchanged_replaces_changed_and_sync_removes(pipeline, docs: Path) -> None:
    p = pipeline()
    p.index_paths(p.open_kb("inc", create=True), [docs])

    again = pipeline()
    kb = again.open_kb("inc")
    report = again.index_paths(kb, [docs])
    assert (report.unchanged, report.added, report.updated) == (3, 0, 0)
    assert again.embeddings.documents_embedded == 0

    (docs / "ferry.md").write_text("The Zorblat bridge opened in spring; it has nine arches.", "utf-8")
    changed = pipeline()
    kb = changed.open_kb("inc")
    report = changed.index_paths(kb, [docs])
    assert (report.updated, report.unchanged, changed.embeddings.documents_embedded) == (1, 2, 1)
    assert bm25_files(kb, "Brask ferry") == []  # the old chunk is gone from BM25 ...
    assert bm25_files(kb, "Zorblat") == ["ferry.md"]
    hits = kb.search_ids(changed.embeddings.embed_query(DOCS["ferry.md"]), 10)
    assert len(hits) == kb.count() == 3  # ... and from the vectors
    answer = changed.ask([], "Zorblat bridge arches", kb="inc", dry_run=True, retriever="hybrid", k=1)
    assert "nine arches" in answer.sources[0].text

    (docs / "contract.txt").unlink()
    assert changed.index_paths(kb, [docs]).removed == 0  # without sync nothing is removed
    report = changed.index_paths(kb, [docs], sync=True)
    assert report.removed == 1
    assert sorted(Path(r.path).name for r in kb.files()) == ["ferry.md", "panda.txt"]
    assert bm25_files(kb, "违约金") == [] and kb.count() == 2


def test_same_bytes_elsewhere_are_copied_not_embedded(pipeline, docs: Path, tmp_path: Path) -> None:
    p = pipeline()
    kb = p.open_kb("copy", create=True)
    p.index_paths(kb, [docs])
    twin = tmp_path / "elsewhere" / "panda-copy.txt"
    twin.parent.mkdir()
    twin.write_bytes((docs / "panda.txt").read_bytes())
    p2 = pipeline()
    report = p2.index_paths(kb, [twin])
    assert (report.added, p2.embeddings.documents_embedded) == (1, 0)
    assert sorted(bm25_files(kb, "竹子")) == ["panda-copy.txt", "panda.txt"]


def test_an_interrupted_replace_leaves_the_old_chunks_and_is_cleaned_up(pipeline, docs: Path, monkeypatch) -> None:
    from ragqa.store.milvus import MilvusKB

    p = pipeline()
    p.index_paths(p.open_kb("crash", create=True), [docs])
    (docs / "ferry.md").write_text("The Zorblat bridge opened in spring.", "utf-8")

    def crash(self, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # killed after the new chunks were inserted, before the file row moved

    monkeypatch.setattr(MilvusKB, "_commit", crash)
    kb = pipeline().open_kb("crash")
    with pytest.raises(KeyboardInterrupt):
        pipeline().index_paths(kb, [docs])
    monkeypatch.undo()

    kb = pipeline().open_kb("crash")
    assert bm25_files(kb, "Brask ferry") == ["ferry.md"]  # the file still has its old chunk
    assert bm25_files(kb, "Zorblat") == []  # the new one is not live
    p2 = pipeline()
    report = p2.index_paths(kb, [docs])  # the next writer cleans up and re-indexes the file
    assert (report.updated, report.unchanged) == (1, 2)
    assert bm25_files(kb, "Zorblat") == ["ferry.md"] and bm25_files(kb, "Brask ferry") == []
    assert kb.count() == 3


# -- one writer at a time --------------------------------------------------------------------------


def test_a_second_process_waits_for_the_writer(pipeline, milvus_uri: str, docs: Path, tmp_path: Path) -> None:
    import threading

    kb = pipeline().open_kb("lock", create=True)
    lines: list[str] = []
    with kb.writing():
        proc = subprocess.Popen([sys.executable, "-m", "ragqa", "index", str(docs), "--kb", "lock", "--store", milvus_uri,
                                 "--cache-dir", str(tmp_path / "cache")], stderr=subprocess.PIPE, text=True,
                                env=_clean_env())
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.time() + 120
        while not any("waiting for another ragqa process" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.time() < deadline, "the second writer never waited"
            time.sleep(0.2)
        assert kb.count() == 0  # it has written nothing while this process holds the lock
    assert proc.wait(timeout=120) == 0
    reader.join(timeout=10)
    assert any("lock: added 3" in line for line in lines), "".join(lines)
    assert kb.count() == 3


def test_a_crashed_writers_lock_expires(pipeline, docs: Path) -> None:
    from ragqa.store.milvus import LOCK_ROW, LOCK_TTL_S

    kb = pipeline().open_kb("stale", create=True)
    kb._call("upsert", kb.kb_name, [kb._row(LOCK_ROW, "lock", "gone-host:1:abc", updated=time.time() - LOCK_TTL_S - 1)])
    waited: list[str] = []
    t = time.perf_counter()
    with kb.writing(on_wait=waited.append):
        pass
    assert waited == [] and time.perf_counter() - t < 5


# -- the manifest -----------------------------------------------------------------------------------


def test_opening_with_other_embeddings_or_chunks_is_refused(pipeline, docs: Path) -> None:
    from ragqa.errors import ConfigError

    p = pipeline()
    p.index_paths(p.open_kb("notes", create=True), [docs])
    with pytest.raises(ConfigError, match=r"'notes' was built with embeddings .*multilingual-e5-small.*ragqa kb drop notes"):
        pipeline(embedding_model="all-MiniLM-L6-v2").open_kb("notes")
    with pytest.raises(ConfigError, match="chunks 600/100"):
        pipeline(chunk_size=300, chunk_overlap=50).open_kb("notes")
    assert pipeline().open_kb("notes").manifest.dimension == 384


def test_chinese_names_are_kept(pipeline, milvus_uri: str, docs: Path) -> None:
    from ragqa.config import Settings
    from ragqa.store import kb_exists, list_kbs

    p = pipeline()
    p.index_paths(p.open_kb("合同-2024", create=True), [docs / "contract.txt"])
    settings = Settings(store=milvus_uri)
    assert kb_exists(settings, "合同-2024") and not kb_exists(settings, "合同-2025")
    [stats] = [s for s in list_kbs(settings) if s.name == "合同-2024"]
    assert (stats.files, stats.chunks, stats.location) == (1, 1, milvus_uri)


def test_doc_scopes_the_search_inside_milvus(pipeline, milvus_uri: str, tmp_path: Path) -> None:
    """--doc over a Milvus KB: the scope is Milvus's own filter expression on file_id (a spy on
    the client sees it), and only the matching years come back, for every retriever."""
    folder = tmp_path / "contracts"
    for year, city in (("2022", "里昂"), ("2023", "都灵"), ("2024", "波尔图")):
        (folder / year).mkdir(parents=True)
        (folder / year / f"合同-{year}.md").write_text(f"{year} 年的供货合同：货物在{city}的仓库交付。", "utf-8")
    p = pipeline(k=3)
    p.index_paths(p.open_kb("years", create=True), [folder])
    kb = p.kb("years")
    filters: list[str] = []
    search = kb.client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        filters.append(kwargs.get("filter", ""))
        return search(*args, **kwargs)

    kb.client.search = spy
    for retriever in ("vector", "bm25", "hybrid"):
        answer = p.ask([], "货物在哪里交付？", kb="years", retriever=retriever, documents=["*2024*"], dry_run=True)
        assert [Path(s.source).name for s in answer.sources] == ["合同-2024.md"], retriever
    [year_2024] = [r.id for r in kb.files() if r.path.endswith("合同-2024.md")]
    assert filters and all(f == f"file_id in [{year_2024}]" for f in filters), filters
    two = p.ask([], "货物在哪里交付？", kb="years", documents=["2022", "2023"], dry_run=True)
    assert sorted(Path(s.source).name for s in two.sources) == ["合同-2022.md", "合同-2023.md"]
    proc = ragqa("ask", "--kb", "years", "--store", milvus_uri, "--cache-dir", str(tmp_path / "cache"),
                 "--doc", "*2019*", "货物在哪里交付？")
    assert proc.returncode == 2 and "no document of knowledge base 'years' matches '*2019*'" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- the CLI ----------------------------------------------------------------------------------------


def test_cli_index_kb_list_show_remove_drop(milvus_uri: str, docs: Path, tmp_path: Path) -> None:
    store = ["--store", milvus_uri, "--cache-dir", str(tmp_path / "cache")]
    proc = ragqa("index", str(docs), "--kb", "cli", *store)
    assert proc.returncode == 0, proc.stderr
    assert "cli: added 3" in proc.stderr

    listed = json.loads(ragqa("kb", "list", "--json", "--store", milvus_uri).stdout)
    [entry] = [k for k in listed if k["name"] == "cli"]
    assert (entry["engine"], entry["files"], entry["chunks"]) == ("milvus", 3, 3)

    shown = json.loads(ragqa("kb", "show", "cli", "--json", "--store", milvus_uri).stdout)
    assert sorted(Path(d["path"]).name for d in shown["documents"]) == sorted(DOCS)
    assert shown["dimension"] == 384 and shown["location"] == milvus_uri

    asked = ragqa("ask", "--kb", "cli", PANDA_QUESTION, "--dry-run", "--json", "-k", "1", *store)
    assert asked.returncode == 0, asked.stderr
    assert [Path(s["source"]).name for s in json.loads(asked.stdout)["sources"]] == ["panda.txt"]

    removed = ragqa("kb", "remove", "cli", str(docs / "ferry.md"), "--store", milvus_uri)
    assert removed.returncode == 0 and "cli: removed 1 file" in removed.stderr
    shown = json.loads(ragqa("kb", "show", "cli", "--json", "--store", milvus_uri).stdout)
    assert sorted(Path(d["path"]).name for d in shown["documents"]) == ["contract.txt", "panda.txt"]

    dropped = ragqa("kb", "drop", "cli", "--yes", "--store", milvus_uri)
    assert dropped.returncode == 0 and "dropped cli" in dropped.stderr
    assert "cli" not in [k["name"] for k in json.loads(ragqa("kb", "list", "--json", "--store", milvus_uri).stdout)]
    gone = ragqa("kb", "show", "cli", "--store", milvus_uri)
    assert gone.returncode == 2 and "no knowledge base named 'cli'" in gone.stderr


def test_an_unreachable_server_is_one_line_quickly(docs: Path, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    t = time.perf_counter()
    proc = ragqa("index", str(docs), "--kb", "t", "--store", uri, "--cache-dir", str(tmp_path / "cache"), timeout=60)
    seconds = time.perf_counter() - t
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("ragqa: error:") and "cannot reach Milvus" in lines[0], proc.stderr
    assert uri in lines[0] and "Traceback" not in proc.stderr
    assert seconds < 15


def test_the_token_is_never_printed(docs: Path, tmp_path: Path) -> None:
    env_token = "s3cret-token-xyz"
    uri = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "ragqa", "kb", "list", "--store", uri], capture_output=True, text=True,
                          env={**_clean_env(), "MILVUS_TOKEN": env_token}, timeout=60, check=False)
    assert proc.returncode != 0 and "cannot reach Milvus" in proc.stderr
    assert env_token not in proc.stderr + proc.stdout


def test_two_serve_replicas_share_knowledge_bases_on_milvus(milvus_uri: str, tmp_path: Path) -> None:
    """Two `ragqa serve` processes (as behind a load balancer) on one Milvus: a document uploaded
    through one is answered, and deleted, through the other."""
    import httpx
    import openai
    from netfixtures import start_ragqa_serve

    question = "How much does a Brask ferry ticket cost?"
    env = {"MILVUS_TOKEN": ""}
    a, url_a = start_ragqa_serve(tmp_path / "a", "--no-page", "--store", milvus_uri, "--max-new-tokens", "40", env=env)
    try:
        b, url_b = start_ragqa_serve(tmp_path / "b", "--no-page", "--store", milvus_uri, "--max-new-tokens", "40",
                                     env=env)
        try:
            job = httpx.post(f"{url_a}/kbs/replicas/documents", timeout=60,
                             files=[("file", ("ferry.md", DOCS["ferry.md"].encode()))]).json()
            deadline = time.time() + 300
            while (status := httpx.get(f"{url_a}/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
                assert time.time() < deadline, status
                time.sleep(0.3)
            assert status["status"] == "done" and status["files"][0]["status"] == "added", status
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(16) as pool:  # many requests on Milvus at once (they once crashed gRPC)
                statuses = list(pool.map(lambda _: httpx.get(f"{url_b}/models", timeout=120).status_code, range(32)))
            assert statuses == [200] * 32 and b.poll() is None
            other = openai.OpenAI(base_url=url_b, api_key="x", max_retries=0, timeout=300)
            assert "replicas" in [m.id for m in other.models.list()]
            reply = other.chat.completions.create(model="replicas", messages=[{"role": "user", "content": question}])
            assert reply.model_extra["sources"][0]["source"] == "ferry.md"
            assert "four coins" in reply.model_extra["sources"][0]["text"]
            gone = httpx.delete(f"{url_b}/kbs/replicas/documents", params={"source": "ferry.md"}, timeout=60)
            assert gone.status_code == 200, gone.text
            assert httpx.get(f"{url_a}/kbs/replicas/documents", timeout=60).json()["data"] == []
            assert httpx.delete(f"{url_a}/kbs/replicas", timeout=60).status_code == 200
        finally:
            stop(b)
    finally:
        stop(a)


# -- one Chinese across scripts ---------------------------------------------------------------------

SCRIPTS = {
    "tower.txt": "观景台由工程师蒋立华设计，建于一九九八年。",
    "temple.txt": "龍山寺位於萬華區，始建於乾隆三年，是臺北最古老的寺廟之一。",
    "panda.txt": DOCS["panda.txt"],
}


@pytest.fixture
def two_scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text, "utf-8")
    return folder


def test_bm25_alone_finds_the_other_script_and_shows_the_text_as_written(pipeline, two_scripts: Path) -> None:
    p = pipeline()
    kb = p.open_kb("scripts", create=True)
    p.index_paths(kb, [two_scripts])
    assert bm25_files(kb, "觀景臺是誰設計的？")[0] == "tower.txt"  # Traditional question, Simplified text
    assert bm25_files(kb, "龙山寺始建于哪一年？")[0] == "temple.txt"  # and back
    answer = p.ask([], "龍山寺始建於哪一年？", kb="scripts", dry_run=True, retriever="bm25", k=1)
    assert [Path(s.source).name for s in answer.sources] == ["temple.txt"]
    [doc] = kb.get_chunks([kb.bm25_search("龙山寺", 1)[0][0]])
    assert doc.page_content == SCRIPTS["temple.txt"]  # the words field is folded, the text shown is not


def test_a_kb_without_the_fold_keeps_working_and_says_how_to_rebuild(pipeline, two_scripts: Path, caplog) -> None:
    old = pipeline(keyword_fold="none")  # as a KB from before the fold: no words field
    kb = old.open_kb("unfolded", create=True)
    old.index_paths(kb, [two_scripts])
    assert "words" not in {f["name"] for f in kb.client.describe_collection(kb.chunks_name)["fields"]}
    kb.close()
    p = pipeline()
    with caplog.at_level("WARNING", logger="ragqa.store.milvus"):
        kb = p.open_kb("unfolded")
    [line] = [r.getMessage() for r in caplog.records if "keyword fold" in r.getMessage()]
    assert "keeps its keyword fold none" in line and "ragqa kb drop unfolded" in line
    assert bm25_files(kb, "观景台由谁设计")[0] == "tower.txt"  # same script: as before
    assert "tower.txt" not in bm25_files(kb, "觀景臺")  # across scripts: not until rebuilt
