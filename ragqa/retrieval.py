"""Retrievers over a ChunkIndex, as LangChain BaseRetrievers: vector, keyword (BM25), hybrid.

- ``vector``: cosine similarity of embeddings (FAISS).
- ``bm25``: Okapi BM25 over words: jieba segmentation for Chinese runs, lower-cased words for
  Latin text. Finds the exact names and numbers an embedding model blurs.
- ``hybrid``: reciprocal-rank fusion of the two rankings (score = sum of 1 / (60 + rank)).

An optional reranker (a cross-encoder by name) re-scores the candidates; it is off by default.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ragqa.errors import ConfigError, MissingDependencyError, ModelError

log = logging.getLogger(__name__)

RETRIEVERS = ("vector", "bm25", "hybrid")
RRF_K = 60
DEFAULT_CANDIDATES = 20

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+")
_EN_STOP = frozenset(
    "a an and are as at be but by for from has have he her his i in is it its of on or she that the their "
    "them they this to was were what when where which who whom whose why will with you your how did does do".split()
)
_jieba: Any = None


def _segmenter() -> Any:
    global _jieba
    if _jieba is None:
        try:
            import jieba
        except ImportError:
            raise MissingDependencyError("jieba") from None
        jieba.setLogLevel(logging.WARNING)  # it announces its dictionary load on stderr otherwise
        _jieba = jieba
    return _jieba


def tokenize(text: str) -> list[str]:
    """Words for BM25: jieba search-mode segmentation of Chinese, lower-cased Latin words.

    >>> tokenize("熊猫住在四川 and eats Bamboo")
    ['熊猫', '住', '在', '四川', 'eats', 'bamboo']
    """
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        piece = match.group()
        if piece[0].isascii():
            word = piece.lower()
            if word not in _EN_STOP:
                out.append(word)
        else:
            out.extend(t for t in _segmenter().lcut_for_search(piece) if t.strip())
    return out


def _with_score(doc: Document, score: float, **extra: float) -> Document:
    return Document(page_content=doc.page_content, metadata={**doc.metadata, "score": score, **extra})


def fuse_rankings(rankings: Sequence[Sequence[int]], rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: ids ranked by sum over rankings of 1 / (rrf_k + rank), rank from 1.

    >>> fuse_rankings([[1, 2, 3], [3, 1]])
    [(1, 0.03252247488101534), (3, 0.032266458495966696), (2, 0.016129032258064516)]
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, 1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


class VectorRetriever(BaseRetriever):
    """Top-k chunks by cosine similarity; each result carries ``metadata["score"]``."""

    index: Any  # ragqa.store.ChunkIndex
    embeddings: Any  # a LangChain Embeddings
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.search_ids(self.embeddings.embed_query(query), self.k)
        return [_with_score(self.index.chunks[i], s) for i, s in hits]


class BM25Retriever(BaseRetriever):
    """Top-k chunks by BM25; chunks sharing no word with the question are never returned."""

    index: Any
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.bm25_search_ids(tokenize(query), self.k)
        return [_with_score(self.index.chunks[i], s) for i, s in hits]


class HybridRetriever(BaseRetriever):
    """Reciprocal-rank fusion of the vector and BM25 rankings of the top ``candidates`` each."""

    index: Any
    embeddings: Any
    k: int = 4
    candidates: int = DEFAULT_CANDIDATES

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        n = max(self.candidates, self.k)
        vector = self.index.search_ids(self.embeddings.embed_query(query), n)
        keyword = self.index.bm25_search_ids(tokenize(query), n)
        vec_score = dict(vector)
        kw_score = dict(keyword)
        fused = fuse_rankings([[i for i, _ in vector], [i for i, _ in keyword]])[: self.k]
        return [
            _with_score(self.index.chunks[i], s, vector_score=vec_score.get(i, 0.0), bm25_score=kw_score.get(i, 0.0))
            for i, s in fused
        ]


class Reranker(Protocol):
    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder by name or folder (e.g. BAAI/bge-reranker-base)."""

    def __init__(self, name: str) -> None:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            raise MissingDependencyError("sentence-transformers") from None
        try:
            self._model = CrossEncoder(name)
        except Exception as exc:  # offline hub, missing files
            raise ModelError(f"cannot load reranker {name!r}: {type(exc).__name__}: {exc}") from None

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return [float(s) for s in self._model.predict([(query, t) for t in texts])]


class RerankingRetriever(BaseRetriever):
    """Takes the base retriever's candidates and keeps the ``k`` the reranker scores highest."""

    base: Any  # a BaseRetriever returning the candidates
    reranker: Any  # a Reranker
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.base.invoke(query)
        if not docs:
            return []
        scores = self.reranker.score(query, [d.page_content for d in docs])
        ranked = sorted(zip(docs, scores), key=lambda ds: -ds[1])[: self.k]
        return [
            _with_score(d, s, retrieval_score=float(d.metadata.get("score", 0.0))) for d, s in ranked
        ]


def make_retriever(
    kind: str, index: Any, embeddings: Any, k: int, *, reranker: Reranker | None = None,
    candidates: int = DEFAULT_CANDIDATES,
) -> BaseRetriever:
    """The named retriever; with a reranker, it fetches ``candidates`` and the reranker keeps ``k``."""
    if kind not in RETRIEVERS:
        raise ConfigError(f"unknown retriever {kind!r}; choose one of: {', '.join(RETRIEVERS)}")
    depth = max(k, candidates) if reranker is not None else k
    base: BaseRetriever
    if kind == "vector":
        base = VectorRetriever(index=index, embeddings=embeddings, k=depth)
    elif kind == "bm25":
        base = BM25Retriever(index=index, k=depth)
    else:
        base = HybridRetriever(index=index, embeddings=embeddings, k=depth, candidates=max(candidates, depth))
    if reranker is None:
        return base
    return RerankingRetriever(base=base, reranker=reranker, k=k)
