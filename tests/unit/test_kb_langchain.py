"""A knowledge base as a LangChain VectorStore (KnowledgeBaseStore): in a plain LCEL chain, shared
with the pipeline both ways, BM25 over Chinese words, and what a persistent store must refuse.
Fake embeddings (CountingEmbeddings, random but deterministic vectors) and fake chat models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnablePassthrough

import ragqa
from ragqa.errors import ConfigError, InputError
from ragqa.vectorstores import KnowledgeBaseStore

TOWN = [
    "青岚镇每年农历三月初八举办开茶节，茶农祭拜茶神。",
    "白沙湖渔村的小学只有两个班，老师是林秀芳。",
    "卧云桥是一座明朝的石拱桥，长四十二米。",
    "镇上的渡船每天开三班，终点是鹭鸶洲。",
]
IDS = ["tea", "school", "bridge", "ferry"]


class RecordingChatModel(FakeListChatModel):
    """FakeListChatModel that keeps the messages it was sent."""

    seen: list[list[BaseMessage]] = []

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.seen.append(list(messages))
        return super()._call(messages, *args, **kwargs)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


@pytest.fixture
def pipeline(make_pipeline):
    return make_pipeline(k=2)


@pytest.fixture
def town(pipeline) -> KnowledgeBaseStore:
    """The KB 'town' with the four texts, opened as a store with the pipeline's (fake) embeddings."""
    store = KnowledgeBaseStore.open("town", pipeline.settings, pipeline.embeddings, create=True)
    store.add_texts(TOWN, [{"source": "town.md", "line": i} for i in range(len(TOWN))], ids=IDS)
    yield store
    store.close()


def test_a_kb_store_in_a_plain_lcel_chain_answers_from_the_kb(town, pipeline) -> None:
    chat = RecordingChatModel(responses=["农历三月初八。"], seen=[])
    chain = (
        {"context": town.as_hybrid_retriever(k=2) | format_docs, "question": RunnablePassthrough()}
        | ragqa.get_prompt("qa_stuff", "zh")
        | chat
        | StrOutputParser()
    )
    assert chain.invoke("开茶节在什么时候举办？") == "农历三月初八。"
    [[message]] = chat.seen
    assert TOWN[0] in message.content  # BM25 brought the tea-festival text, whatever the fake vectors say
    assert "开茶节在什么时候举办？" in message.content

    town.close()  # persistent: a new store on the same KB has the texts, ids and metadata
    with KnowledgeBaseStore.open("town", pipeline.settings, pipeline.embeddings) as again:
        assert again.get_by_ids(["ferry", "tea"]) == [
            Document(id="ferry", page_content=TOWN[3], metadata={"source": "town.md", "line": 3}),
            Document(id="tea", page_content=TOWN[0], metadata={"source": "town.md", "line": 0}),
        ]


def test_texts_added_through_the_store_are_what_the_pipeline_asks(town, pipeline) -> None:
    view, report = pipeline.kb_index("town")
    assert report.chunks == 4
    answer = pipeline.ask([], "渡船的终点是哪里？", kb="town", retriever="bm25", k=1)
    assert [(s.source, s.text) for s in answer.sources] == [("text:ferry", TOWN[3])]

    town.add_texts(["鹭鸶洲的渡船票价五元。"], ids=["ferry"])  # replaces the text under that id
    town.delete(["bridge"])
    texts = [d.page_content for d in pipeline.retriever(view).invoke("渡船 卧云桥", k=4)]
    assert "鹭鸶洲的渡船票价五元。" in texts and TOWN[3] not in texts and TOWN[2] not in texts
    assert pipeline.kb_index("town")[1].chunks == 3


def test_files_the_pipeline_indexes_are_found_by_the_stores_retrievers(pipeline, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bridge.txt").write_text("卧云桥是一座明朝的石拱桥，长四十二米。桥下是白沙湖。", "utf-8")
    (docs / "ferry.md").write_text("The Brask ferry leaves Quillby pier every morning at seven.", "utf-8")
    pipeline.index_paths(pipeline.open_kb("files", create=True), [docs])

    with KnowledgeBaseStore.open("files", pipeline.settings, pipeline.embeddings) as store:
        [top] = store.as_hybrid_retriever(k=1).invoke("卧云桥有多长？")
        assert top.metadata["source"] == str((docs / "bridge.txt").resolve()) and "四十二米" in top.page_content
        assert top.metadata["bm25_score"] > 0
        assert store.get_by_ids([top.id])[0].page_content == top.page_content  # id: the KB's chunk number
        with pytest.raises(InputError, match="ragqa kb remove files .*bridge.txt"):
            store.delete([top.id])  # a file's chunks go together
        ids = store.add_texts(["卧云桥每年九月重新铺石板。"])
        hits = store.as_bm25_retriever(k=5).invoke("卧云桥")
        assert {d.id for d in hits} == {top.id, ids[0]}  # files and texts in one ranking


def test_bm25_over_the_kb_finds_the_exact_chinese_term(town, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = town.as_bm25_retriever(k=2).invoke("鹭鸶洲")
    assert docs[0].id == "ferry" and docs[0].metadata["score"] > 0
    assert {d.id for d in town.as_bm25_retriever(k=2).invoke("林秀芳老师")} == {"school"}
    assert town.as_bm25_retriever(k=3).invoke("量子计算") == []  # no word in common: nothing


def test_bm25_needs_no_embedding_model(pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    with KnowledgeBaseStore.open("town", pipeline.settings, pipeline.embeddings, create=True) as store:
        store.add_texts(TOWN, ids=IDS)
    import ragqa.pipeline as pl

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the embedding model was loaded")

    monkeypatch.setattr(pl.Pipeline, "embeddings", property(no_model))
    with KnowledgeBaseStore.open("town", pipeline.settings) as store:  # the settings' model, loaded on use
        assert store.as_bm25_retriever(k=1).invoke("石拱桥")[0].id == "bridge"
        with pytest.raises(RuntimeError, match="was loaded"):
            store.similarity_search("石拱桥")


def test_search_filter_scores_and_mmr(town) -> None:
    town.add_texts([f"第{i}条：茶农的日记。" for i in range(60)], [{"source": "diary.md"}] * 60)
    searched: list[int] = []
    search_ids = town.index.search_ids
    town.index.search_ids = lambda v, k: searched.append(k) or search_ids(v, k)  # type: ignore[method-assign]
    only = town.similarity_search("茶", k=4, filter={"source": "town.md"})
    assert sorted(d.id for d in only) == sorted(IDS)  # all four, though 60 diary entries outnumber them
    assert searched == [20, 80]  # the first 20 held too few: the search widened
    del town.index.search_ids
    line_2 = town.similarity_search(TOWN[0], k=1, filter=lambda d: d.metadata.get("line") == 2)
    assert [d.id for d in line_2] == ["bridge"]
    [(doc, score)] = town.similarity_search_with_score(TOWN[1], k=1)
    assert doc.id == "school" and score == pytest.approx(1.0, abs=1e-5)  # cosine of a text with itself
    assert all(0.0 <= s <= 1.0 for _, s in town.similarity_search_with_relevance_scores("茶", k=5))
    mmr = town.max_marginal_relevance_search(TOWN[0], k=3, fetch_k=10)
    assert mmr[0].id == "tea" and len({d.id for d in mmr}) == 3
    vector = town.as_retriever(search_kwargs={"k": 2, "filter": {"source": "town.md"}}).invoke(TOWN[3])
    assert vector[0].id == "ferry" and len(vector) == 2


def test_metadata_comes_back_as_given_and_must_be_json(town) -> None:
    meta = {"source": "notes/a.md", "score": 0.5, "chunk_id": "mine", "tags": ["茶", 1], "page": None}
    [doc_id] = town.add_texts(["茶神庙在山顶。"], [meta])
    [doc] = town.get_by_ids([doc_id])
    assert doc.metadata == meta and doc.id == doc_id
    with pytest.raises(InputError, match="metadata of text 0 cannot be stored"):
        town.add_texts(["x"], [{"when": object()}])
    with pytest.raises(InputError, match="ragqa kb drop town"):
        town.delete()  # None would empty a persistent KB
    assert town.delete(["no-such-id", "12345"]) is True  # unknown ids are ignored
    assert [d.id for d in town.get_by_ids(["no-such-id", "tea", "12345"])] == ["tea"]


def test_a_kb_refuses_a_store_with_other_embeddings(town, make_settings) -> None:
    with pytest.raises(ConfigError, match="was built with"):
        KnowledgeBaseStore.open("town", make_settings(embedding_model="all-MiniLM-L6-v2"))
    with pytest.raises(InputError, match="no knowledge base named 'nope'"):
        KnowledgeBaseStore.open("nope", make_settings())


def test_a_store_over_a_view_sees_its_files_and_the_texts_added_to_it(pipeline, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("卧云桥是一座明朝的石拱桥。", "utf-8")
    (tmp_path / "b.txt").write_text("白沙湖渔村的小学只有两个班。", "utf-8")
    pipeline.build_index([tmp_path / "a.txt", tmp_path / "b.txt"])
    view, _ = pipeline.build_index([tmp_path / "a.txt"])  # the internal KB holds both; the view one
    store = ragqa.RagqaVectorStore(pipeline.embeddings, index=view)
    assert isinstance(store, KnowledgeBaseStore)
    ids = store.add_texts(["渔村小学的新老师姓林。"])
    hits = store.as_bm25_retriever(k=5).invoke("石拱桥 渔村 小学")
    assert {"text" if d.id in ids else d.metadata["source"] for d in hits} == {str(tmp_path / "a.txt"), "text"}
    # not b.txt, though its words match: it is outside the view


def test_import_ragqa_kb_store_loads_nothing_heavy() -> None:
    code = (
        "import sys, ragqa\n"
        "ragqa.KnowledgeBaseStore\n"
        "print(','.join(m for m in ('torch', 'faiss', 'tantivy', 'sentence_transformers', 'transformers', 'jieba')"
        " if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_the_hybrid_retriever_fuses_as_the_settings_say(make_pipeline) -> None:
    """`ragqa ask --kb` and the store's hybrid retriever rank alike: both use the settings' fusion."""
    pipeline = make_pipeline(fusion="rrf:k=10")
    pipeline.open_kb("fused", create=True).close()
    with KnowledgeBaseStore.open("fused", pipeline.settings, pipeline.embeddings) as store:
        assert store.as_hybrid_retriever().fusion == "rrf:k=10"
        assert store.as_hybrid_retriever(fusion="minmax").fusion.startswith("minmax")
        with pytest.raises(Exception, match="zscore"):  # an unknown fusion lists the valid ones
            store.as_hybrid_retriever(fusion="average")
