"""Retrievers over a knowledge base or a ChunkIndex, as LangChain BaseRetrievers: vector, keyword (BM25), hybrid.

- ``vector``: cosine similarity of embeddings (FAISS).
- ``bm25``: Okapi BM25 over words (``ragqa.words.tokenize``: jieba segmentation for Chinese runs,
  lower-cased words for Latin text). Finds the exact names and numbers an embedding model blurs.
- ``hybrid``: the two lists fused into one ranking by a registered fusion function
  (``ragqa.fusion``: ``zscore``, the default; ``minmax``; ``rrf``, reciprocal rank).

An optional reranker (a cross-encoder by name) re-scores the (fused) candidates; it is off by default.
A retriever sees its index only through ``search_ids``, ``bm25_search`` and ``get_chunks``, so the
same classes serve a KB view of either engine and the in-memory index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ragqa.errors import ConfigError, MissingDependencyError, ModelError
from ragqa.fusion import DEFAULT_FUSION, make_fusion
from ragqa.words import tokenize

log = logging.getLogger(__name__)

RETRIEVERS = ("vector", "bm25", "hybrid")
DEFAULT_CANDIDATES = 20


def _with_score(doc: Document, score: float, **extra: float) -> Document:
    return Document(id=doc.id, page_content=doc.page_content, metadata={**doc.metadata, "score": score, **extra})

def chunk_words(index: Any, chunk_id: int) -> set[str]:
    """A chunk's BM25 words, from its text (empty if it was deleted since the search)."""
    found = chunks_by_id(index, [chunk_id])
    return set(tokenize(found[chunk_id].page_content)) if chunk_id in found else set()


def _hits_to_documents(
    index: Any, hits: Sequence[tuple[int, float]], extra: Callable[[int], dict[str, float]] | None = None,
) -> list[Document]:
    """[(chunk id, score)] -> the chunks, fetched in one call, each with its scores."""
    by_id = chunks_by_id(index, [i for i, _ in hits])
    return [_with_score(by_id[i], s, **(extra(i) if extra else {})) for i, s in hits if i in by_id]


def chunks_by_id(index: Any, ids: list[int]) -> dict[int, Document]:
    """{chunk id: chunk} in one ``get_chunks`` call; a chunk deleted since the search is left out."""
    docs = index.get_chunks(ids)
    if len(docs) == len(ids):
        return dict(zip(ids, docs))
    return {i: found[0] for i in ids if (found := index.get_chunks([i]))}  # rare: a writer deleted some


class VectorRetriever(BaseRetriever):
    """Top-k chunks by cosine similarity; each result carries ``metadata["score"]``.

    Like every retriever here, ``invoke(query, k=2)`` overrides ``k`` for one call.
    """

    index: Any  # a KB view or an in-memory ChunkIndex: search_ids, bm25_search, get_chunks
    embeddings: Any  # a LangChain Embeddings
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        hits = self.index.search_ids(self.embeddings.embed_query(query), k or self.k)
        return _hits_to_documents(self.index, hits)


class BM25Retriever(BaseRetriever):
    """Top-k chunks by BM25; chunks sharing no word with the question are never returned."""

    index: Any
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        hits = self.index.bm25_search(query, k or self.k)
        return _hits_to_documents(self.index, hits)


class HybridRetriever(BaseRetriever):
    """The vector and BM25 hits (top ``candidates`` each) fused into one ranking by ``fusion``
    (a spec such as "zscore:w=0.5" or "rrf", default DEFAULT_FUSION)."""

    index: Any
    embeddings: Any
    k: int = 4
    candidates: int = DEFAULT_CANDIDATES
    fusion: str = DEFAULT_FUSION

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        k = k or self.k
        n = max(self.candidates, k)
        vector = self.index.search_ids(self.embeddings.embed_query(query), n)
        keyword = self.index.bm25_search(query, n)
        vec_score = dict(vector)
        kw_score = dict(keyword)
        fused = make_fusion(self.fusion)(query, vector, keyword, words=lambda i: chunk_words(self.index, i))[:k]
        return _hits_to_documents(
            self.index, fused, lambda i: {"vector_score": vec_score.get(i, 0.0), "bm25_score": kw_score.get(i, 0.0)})


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

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        docs = self.base.invoke(query)
        if not docs:
            return []
        scores = self.reranker.score(query, [d.page_content for d in docs])
        ranked = sorted(zip(docs, scores), key=lambda ds: -ds[1])[: k or self.k]
        return [
            _with_score(d, s, retrieval_score=float(d.metadata.get("score", 0.0))) for d, s in ranked
        ]


def make_retriever(
    kind: str, index: Any, embeddings: Any, k: int, *, reranker: Reranker | None = None,
    candidates: int = DEFAULT_CANDIDATES, fusion: str = DEFAULT_FUSION,
) -> BaseRetriever:
    """The named retriever (``hybrid`` fuses with ``fusion``); with a reranker, it fetches
    ``candidates`` (the fused ones, for hybrid) and the reranker keeps ``k``."""
    if kind not in RETRIEVERS:
        raise ConfigError(f"unknown retriever {kind!r}; choose one of: {', '.join(RETRIEVERS)}")
    fusion = make_fusion(fusion).spec  # an unknown fusion fails here, before any search
    depth = max(k, candidates) if reranker is not None else k
    base: BaseRetriever
    if kind == "vector":
        base = VectorRetriever(index=index, embeddings=embeddings, k=depth)
    elif kind == "bm25":
        base = BM25Retriever(index=index, k=depth)
    else:
        base = HybridRetriever(index=index, embeddings=embeddings, k=depth, candidates=max(candidates, depth),
                               fusion=fusion)
    if reranker is None:
        return base
    return RerankingRetriever(base=base, reranker=reranker, k=k)


# -- ragqa's indexes as LangChain VectorStores ----------------------------------------------------
