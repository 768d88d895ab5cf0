"""Questions scoped to some documents of a KB (``--doc``): the patterns, and every front end that
takes them, with fakes (CountingEmbeddings, FakeBackend: tests/unit/conftest.py). The real CLI
over a KB of several years' files, locally and on Milvus, is in tests/integration/test_scope_cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ragqa.cli import app as cli_app
from ragqa.errors import InputError
from ragqa.store.scope import DocumentScopeError, pattern_regex, select_documents

YEARS = {
    "2022": "二〇二二年的合同：货物在三十天内交付。交付地点是上海仓库，交付前需要验货。",
    "2023": "二〇二三年的合同：货物在二十天内交付到广州。",
    "2024": "二〇二四年的合同：货物在十天内交付到北京。",
}


@pytest.mark.parametrize("pattern, path, matches", [
    ("contract-2024.md", "/docs/contracts/contract-2024.md", True),
    ("contracts/contract-2024.md", "/docs/contracts/contract-2024.md", True),
    ("ontract-2024.md", "/docs/contracts/contract-2024.md", False),  # whole parts only
    ("contracts", "/docs/contracts/contract-2024.md", True),  # a folder: everything under it
    ("contracts", "/docs/old-contracts/a.md", False),
    ("docs/contracts", "/srv/docs/contracts/2024/a.md", True),
    ("*2024*", "/docs/contract-2024.pdf", True),
    ("*2024*", "/docs/2024/delivery.md", True),  # a folder's name counts too
    ("*2024*", "/docs/2023/delivery.md", False),
    ("contracts/*.pdf", "/docs/contracts/a.pdf", True),
    ("contracts/*.pdf", "/docs/contracts/old/a.pdf", False),  # * stays within one part
    ("contracts/**/*.pdf", "/docs/contracts/old/x/a.pdf", True),
    ("contracts/**/*.pdf", "/docs/contracts/a.pdf", True),
    ("202[34]*", "/docs/2023-q1.md", True),
    ("202[!34]*", "/docs/2023-q1.md", False),
    ("contract-?.md", "/docs/contract-7.md", True),
    ("REPORT.MD", "/docs/report.md", True),  # letters in either case
    ("/docs/contracts", "/docs/contracts/a.md", True),
    ("/contracts", "/docs/contracts/a.md", False),  # a leading / anchors at the root
    ("合同", "/资料/合同/二〇二四.md", True),
    ("text:abc", "text:abc", True),  # a text added through the LangChain store
])
def test_patterns_pick_documents_by_their_names_folders_and_globs(pattern: str, path: str, matches: bool) -> None:
    assert bool(pattern_regex(pattern).search(path)) is matches


def test_a_pattern_written_as_a_path_is_that_file_or_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rx = pattern_regex("./contracts")
    assert rx.search(f"{tmp_path}/contracts/a.md")
    assert not rx.search(f"/elsewhere/contracts/a.md")  # not just any folder of that name
    assert pattern_regex("~/notes").search(f"{Path.home()}/notes/a.md")


def _documents(*paths: str) -> list[tuple[int, str]]:
    return [(n, path) for n, path in enumerate(paths, 1)]


def test_select_documents_unions_the_patterns() -> None:
    assert select_documents(_documents("/d/2022.md", "/d/2023.md", "/d/2024.md"), ["2022.md", "*2024*"], "c") == [1, 3]


@pytest.mark.parametrize("patterns, fragment", [
    (["nothing-like-this"], "no document of knowledge base 'c' matches 'nothing-like-this' "
                            "(list its documents with: ragqa kb show c)"),
    ([""], "a document pattern is empty"),
    (["   "], "a document pattern is empty"),
    (["2022.md", "/etc/passwd"], "matches '/etc/passwd'"),  # one bad pattern of several is named
])
def test_a_pattern_matching_nothing_is_one_line_naming_it(patterns: list[str], fragment: str) -> None:
    with pytest.raises(DocumentScopeError) as err:
        select_documents(_documents("/d/2022.md", "/d/2023.md"), patterns, "c")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, InputError)  # exit code 2, HTTP 400


# -- through the pipeline ---------------------------------------------------------------------

@pytest.fixture
def years(make_pipeline, tmp_path: Path):
    """-> (pipeline, {year: path}) with a KB 'contracts' holding one file per year."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    paths = {}
    for year, text in YEARS.items():
        paths[year] = folder / f"contract-{year}.md"
        paths[year].write_text(text, "utf-8")
    (folder / "contract-2025.md").write_text("", "utf-8")  # unreadable: no text
    pipeline = make_pipeline(retriever="bm25", k=3)
    pipeline.ingest("contracts", [folder])
    return pipeline, paths


def test_a_scoped_question_sees_only_the_matching_documents(years) -> None:
    pipeline, paths = years
    everything = pipeline.ask([], "合同 交付", kb="contracts")
    assert {s.source for s in everything.sources} == {str(p) for p in paths.values()}
    scoped = pipeline.ask([], "合同 交付", kb="contracts", documents=["*2024*"])
    assert [s.source for s in scoped.sources] == [str(paths["2024"])]
    assert scoped.timings["files"] == 1 and scoped.timings["chunks"] == 1
    two = pipeline.ask([], "合同 交付", kb="contracts", documents=["contract-2022.md", "*2023*"])
    assert {s.source for s in two.sources} == {str(paths["2022"]), str(paths["2023"])}


def test_the_scope_is_applied_inside_the_engines_search(years) -> None:
    """Not the top k of everything, then dropped: with k=1 the 2022 file wins the whole KB, and
    the scoped search still finds the 2024 one (a filter after the search would find nothing)."""
    pipeline, paths = years
    kb = pipeline.kb("contracts")
    seen: list[Any] = []
    search, bm25 = kb.search_batch_ids, kb.bm25_search
    kb.search_batch_ids = lambda q, k, file_ids=None: seen.append(("vector", file_ids)) or search(q, k, file_ids)
    kb.bm25_search = lambda q, k, file_ids=None: seen.append(("bm25", file_ids)) or bm25(q, k, file_ids)
    top = pipeline.ask([], "交付 验货 上海", kb="contracts", k=1)
    assert [s.source for s in top.sources] == [str(paths["2022"])]
    scoped = pipeline.ask([], "交付 验货 上海", kb="contracts", k=1, retriever="hybrid", documents=["*2024*"])
    assert [s.source for s in scoped.sources] == [str(paths["2024"])]
    [year_2024] = [r.id for r in kb.files() if r.path == str(paths["2024"])]
    assert ("vector", [year_2024]) in seen and ("bm25", [year_2024]) in seen


def test_doc_without_a_kb_and_unknown_patterns_are_input_errors(years) -> None:
    pipeline, paths = years
    with pytest.raises(InputError, match="use it with --kb NAME"):
        pipeline.ask([paths["2022"]], "交付", documents=["*2022*"])
    with pytest.raises(InputError, match="matches '2019'"):
        pipeline.ask([], "交付", kb="contracts", documents=["2019"])
    with pytest.raises(InputError, match="matches '\\*2025\\*'"):  # only an unreadable file has that name
        pipeline.ask([], "交付", kb="contracts", documents=["*2025*"])


def test_summarize_kb_takes_only_the_matching_documents(years) -> None:
    pipeline, paths = years
    assert pipeline.kb_paths("contracts", ["*2023*"]) == [str(paths["2023"])]
    assert len(pipeline.kb_paths("contracts")) == 3
    with pytest.raises(InputError, match="matches 'nope'"):
        pipeline.kb_paths("contracts", ["nope"])


@pytest.mark.parametrize("args, fragment", [
    (["ask", "--doc", "*2024*", "notes.md", "q"], "--doc picks documents of a knowledge base: use it with --kb NAME"),
    (["summarize", "notes.md", "--doc", "*2024*", "--out", "o.jsonl"], "use it with --kb NAME"),
])
def test_cli_doc_without_kb_is_one_line_exit_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2 and fragment in result.output
    assert "Traceback" not in result.output


# -- the LangChain store ----------------------------------------------------------------------

def test_langchain_retrievers_take_documents_in_search_kwargs(years) -> None:
    from ragqa.vectorstores import KnowledgeBaseStore, RagqaVectorStore

    pipeline, paths = years
    store = KnowledgeBaseStore(pipeline.embeddings, pipeline.kb("contracts"))
    got = store.as_retriever(search_kwargs={"k": 3, "documents": ["*2023*"]}).invoke("交付")
    assert [d.metadata["source"] for d in got] == [str(paths["2023"])]
    assert len(store.as_retriever(search_kwargs={"k": 3}).invoke("交付")) == 3
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "documents": ["contract-2022.md"]})
    assert [d.metadata["source"] for d in mmr.invoke("交付")] == [str(paths["2022"])]
    hybrid = store.as_hybrid_retriever(k=3, documents=["contracts/*2024*"]).invoke("交付")
    assert [d.metadata["source"] for d in hybrid] == [str(paths["2024"])]
    bm25 = store.as_bm25_retriever(k=3, documents=["*2022*", "*2024*"]).invoke("交付")
    assert {d.metadata["source"] for d in bm25} == {str(paths["2022"]), str(paths["2024"])}
    with pytest.raises(InputError, match="matches 'nope'"):
        store.similarity_search("交付", documents=["nope"])
    memory = RagqaVectorStore.from_texts(["a"], pipeline.embeddings)
    with pytest.raises(InputError, match="in this in-memory store use filter="):
        memory.similarity_search("a", documents=["x"])


# -- the HTTP API -----------------------------------------------------------------------------

def test_api_documents_field_scopes_a_completion(years) -> None:
    from ragqa.api.app import build_api
    from ragqa.pipeline.jobs import IngestJobs

    pipeline, paths = years
    client = TestClient(build_api(pipeline, None, IngestJobs(pipeline)), raise_server_exceptions=False)

    def chat(**body: Any):
        return client.post("/v1/chat/completions", json={
            "model": "contracts", "messages": [{"role": "user", "content": "合同 交付"}], **body})

    reply = chat(documents=["*2024*"])
    assert reply.status_code == 200, reply.text
    assert [s["source"] for s in reply.json()["sources"]] == [str(paths["2024"])]
    assert len(chat().json()["sources"]) == 3
    for documents, fragment in ((["2019"], "matches '2019'"), ([""], "documents.0"), ([], "documents")):
        bad = chat(documents=documents)
        assert bad.status_code == 400, bad.text
        error = bad.json()["error"]
        assert fragment in error["message"] + (error.get("param") or "")
    nothing = chat(documents=["2019"]).json()["error"]
    assert (nothing["param"], nothing["code"]) == ("documents", "document_not_found")


# -- the web page -----------------------------------------------------------------------------

def test_the_page_asks_only_the_documents_picked_for_the_conversation(years) -> None:
    pytest.importorskip("gradio")
    from ragqa.web import Handlers

    pipeline, paths = years
    h = Handlers(pipeline)
    labels = h.page("contracts").labels(ok_only=True)
    assert labels == [str(paths[y]) for y in sorted(YEARS)]
    *_, (chat, _, sources, _) = list(h.ask("contracts", "合同 交付", [], scope=[str(paths["2023"])]))
    assert [s["file"] for s in sources] == ["contract-2023.md"]
    *_, (_, _, sources, _) = list(h.ask("contracts", "合同 交付", chat))
    assert len(sources) == 3
    paths["2023"].unlink()
    pipeline.remove_from_kb("contracts", [str(paths["2023"])])
    with pytest.raises(Exception, match="No longer in this knowledge base"):
        list(h.ask("contracts", "合同 交付", [], scope=[str(paths["2023"])]))


def test_a_picked_name_with_glob_characters_is_that_document_only(make_pipeline, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from ragqa.web import Handlers

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "[draft] plan.md").write_text("交付计划草稿。", "utf-8")
    (folder / "d plan.md").write_text("交付计划定稿。", "utf-8")
    pipeline = make_pipeline(retriever="bm25", k=3)
    pipeline.ingest("plans", [folder])
    *_, (_, _, sources, _) = list(Handlers(pipeline).ask("plans", "交付 计划", [], scope=[str(folder / "[draft] plan.md")]))
    assert [s["file"] for s in sources] == ["[draft] plan.md"]


# -- the local engine's scoped vector search: every path gives the exact scoped top k -------------

@pytest.mark.parametrize("base_kind", ["flat", "hnsw"])
def test_scoped_vector_search_matches_an_exact_scan_of_the_scope(make_pipeline, tmp_path: Path, monkeypatch,
                                                                   base_kind: str) -> None:
    """Small scopes are scanned, wide ones start from the unscoped head, middling ones go through
    the bitmap selector; chunks added after the base (the delta) and changed files' dead chunks
    count as the scope says. A small KB, where HNSW finds the true neighbours, so every path must
    give exactly what a scan of the scope's chunks gives."""
    import numpy as np

    import ragqa.store.vectors as vectors

    monkeypatch.setattr(vectors, "HNSW_MIN", 20 if base_kind == "hnsw" else 10_000)
    monkeypatch.setattr(vectors, "COMPACT_MIN", 10)
    monkeypatch.setattr(vectors, "SCOPE_SCAN_MAX", 6)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        (folder / f"f{i:02d}.txt").write_text(f"文件{i}，第{i * 7}句。", "utf-8")
    p = make_pipeline()
    p.ingest("kb", [folder])
    kb = p.kb("kb")
    kb.search_ids([0.0] * 16, 1)  # opens the base the writer built
    assert kb._vectors._kind == base_kind
    (folder / "f05.txt").write_text("改过的文件五。", "utf-8")  # a dead chunk in the base, a new one in the delta
    (folder / "new.txt").write_text("新加的文件。", "utf-8")
    p.ingest("kb", [folder])
    docs = {path: i for i, path, _ in kb.documents()}
    vectors_of = {cid: np.frombuffer(v, dtype="float32") for cid, v in kb.db.execute("SELECT id, vector FROM chunks")}
    file_of = dict(kb.db.execute("SELECT id, file_id FROM chunks").fetchall())
    for query in ("文件3", "第14句", "改过的", "新加"):
        q = np.asarray(p.embeddings.embed_query(query), dtype="float32")
        q /= np.linalg.norm(q)
        # scanned (2 files), the bitmap (7 of the base's 41: 17 %), the unscoped head (10, 31 and all)
        for names in (["f01.txt", "new.txt"], ["f0[0-7]*"], ["f0*"], ["f[0-2]*", "new.txt"], ["*"]):
            ids = kb.scope_ids(names)
            inside = [c for c, f in file_of.items() if f in set(ids)]
            exact = sorted(inside, key=lambda c: -float(vectors_of[c] @ q))[:4]
            got = [c for c, _ in kb.search_batch_ids([q.tolist()], 4, ids)[0]]
            assert got == exact, (base_kind, query, names)
    assert str(folder / "new.txt") in docs and len(kb._vectors._load_delta()[0]) >= 2  # the new chunks: delta
