"""BM25 with jieba, rank fusion, the retrievers over a ChunkIndex, and the reranker hook (fake)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document

from ragqa.errors import ConfigError
from ragqa.retrieval import (
    BM25Retriever,
    HybridRetriever,
    RerankingRetriever,
    fuse_rankings,
    make_retriever,
    tokenize,
)
from ragqa.store import ChunkIndex, FileIndex

CHUNKS = [
    "青岚镇每年农历三月初八举办开茶节，茶农祭拜茶神。",
    "白沙湖渔村的小学只有两个班，老师是林秀芳。",
    "卧云桥是一座明朝的石拱桥，长四十二米。",
    "The ferry to Kestrel Point runs three times a day.",
]


def make_index(vectors: np.ndarray | None = None) -> ChunkIndex:
    docs = [Document(page_content=t, metadata={"source": "x.txt", "start": i}) for i, t in enumerate(CHUNKS)]
    if vectors is None:
        vectors = np.eye(len(CHUNKS), 4, dtype="float32")
    return ChunkIndex([FileIndex(docs, vectors, [tokenize(t) for t in CHUNKS])])


class AxisEmbeddings:
    """Embeds every query as the given unit vector: the vector ranking is whatever the test says."""

    def __init__(self, axis: int) -> None:
        self.axis = axis

    def embed_query(self, text: str) -> list[float]:
        v = [0.0] * 4
        v[self.axis] = 1.0
        return v


def test_tokenize_segments_chinese_into_words_and_lowercases_english() -> None:
    words = tokenize("卧云桥是一座明朝的石拱桥 The FERRY runs")
    assert "明朝" in words and "石拱桥" in words
    assert "ferry" in words and "runs" in words
    assert "the" not in words  # English stopword
    assert all(w.strip() for w in words)


def test_bm25_finds_the_chunk_that_shares_the_chinese_words() -> None:
    index = make_index()
    docs = BM25Retriever(index=index, k=2).invoke("渔村小学的老师叫什么？")
    assert "林秀芳" in docs[0].page_content
    assert docs[0].metadata["score"] > 0


def test_bm25_returns_nothing_for_a_question_sharing_no_word() -> None:
    assert BM25Retriever(index=make_index(), k=3).invoke("量子计算") == []


def test_bm25_scores_positive_even_in_a_two_chunk_corpus() -> None:
    # rank_bm25's own idf is 0 for a word in 1 of 2 documents; ragqa uses Lucene's idf
    docs = [Document(page_content="熊猫吃竹子。"), Document(page_content="老虎吃肉。")]
    index = ChunkIndex([FileIndex(docs, np.eye(2, dtype="float32"), [tokenize(d.page_content) for d in docs])])
    hits = index.bm25_search_ids(tokenize("熊猫吃什么"), 2)
    assert hits and hits[0][0] == 0 and hits[0][1] > 0


def test_rank_fusion_prefers_ids_ranked_well_by_both() -> None:
    # 2 is second in both lists; 1 and 3 are first in one and third in the other:
    # 1/61 + 1/63 = 0.032266 > 2/62 = 0.032258, and the 1-3 tie goes to the lower id
    assert [i for i, _ in fuse_rankings([[1, 2, 3], [3, 2, 1]])] == [1, 3, 2]
    fused = fuse_rankings([[5, 7], [7]])
    assert fused[0][0] == 7  # in both lists beats first in one


def test_hybrid_combines_vector_and_keyword_rankings() -> None:
    index = make_index()
    # the vector side (axis 2) prefers the bridge chunk; the words point at the school chunk
    docs = HybridRetriever(index=index, embeddings=AxisEmbeddings(2), k=2, candidates=4).invoke("渔村小学的老师")
    texts = [d.page_content for d in docs]
    assert CHUNKS[1] in texts and CHUNKS[2] in texts
    assert {"vector_score", "bm25_score"} <= set(docs[0].metadata)


class FakeReranker:
    """Scores a text by how many times it contains the character 茶 (a stand-in cross-encoder)."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls += 1
        return [float(t.count("茶")) for t in texts]


def test_reranker_reorders_candidates_and_keeps_k() -> None:
    index = make_index()
    reranker = FakeReranker()
    retriever = make_retriever("vector", index, AxisEmbeddings(3), k=1, reranker=reranker, candidates=4)
    assert isinstance(retriever, RerankingRetriever)
    docs = retriever.invoke("anything")
    assert reranker.calls == 1
    assert len(docs) == 1 and "开茶节" in docs[0].page_content  # vector alone would pick the ferry chunk
    assert docs[0].metadata["score"] == 3.0 and "retrieval_score" in docs[0].metadata


def test_unknown_retriever_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="vector, bm25, hybrid"):
        make_retriever("dense", make_index(), None, 4)
