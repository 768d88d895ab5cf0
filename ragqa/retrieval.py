"""Retrievers over a ChunkIndex, as LangChain BaseRetrievers: vector, keyword (BM25), hybrid.

- ``vector``: cosine similarity of embeddings (FAISS).
- ``bm25``: Okapi BM25 over words: jieba segmentation for Chinese runs, lower-cased words for
  Latin text. Finds the exact names and numbers an embedding model blurs.
- ``hybrid``: reciprocal-rank fusion of the two rankings (score = sum of 1 / (60 + rank)).

An optional reranker (a cross-encoder by name) re-scores the candidates; it is off by default.

``RagqaVectorStore`` is the same index as a LangChain VectorStore, built from texts or documents.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore

from ragqa.errors import ConfigError, MissingDependencyError, ModelError
from ragqa.store import ChunkIndex, FileIndex

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
    return Document(id=doc.id, page_content=doc.page_content, metadata={**doc.metadata, "score": score, **extra})


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


def _hits_to_documents(
    index: Any, hits: Sequence[tuple[int, float]], extra: Callable[[int], dict[str, float]] | None = None,
) -> list[Document]:
    """[(chunk id, score)] -> the chunks, fetched in one call, each with its scores."""
    ids = [i for i, _ in hits]
    docs = index.get_chunks(ids)
    if len(docs) == len(ids):
        by_id = dict(zip(ids, docs))
    else:  # a KB leaves out chunks deleted meanwhile; its chunks carry their id
        by_id = {int(d.metadata["chunk_id"]): d for d in docs}
    return [_with_score(by_id[i], s, **(extra(i) if extra else {})) for i, s in hits if i in by_id]


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
    """Reciprocal-rank fusion of the vector and BM25 rankings of the top ``candidates`` each."""

    index: Any
    embeddings: Any
    k: int = 4
    candidates: int = DEFAULT_CANDIDATES

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        k = k or self.k
        n = max(self.candidates, k)
        vector = self.index.search_ids(self.embeddings.embed_query(query), n)
        keyword = self.index.bm25_search(query, n)
        vec_score = dict(vector)
        kw_score = dict(keyword)
        fused = fuse_rankings([[i for i, _ in vector], [i for i, _ in keyword]])[:k]
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


# -- the index as a LangChain VectorStore ---------------------------------------------------------


class RagqaVectorStore(VectorStore):
    """ragqa's index (FAISS cosine + jieba BM25 words) as a LangChain VectorStore.

    Texts are embedded with ``embedding`` and their vectors normalised, so every score is a cosine.
    Adding a text under an id that is already stored replaces it. Besides the usual
    ``as_retriever()`` (vector search), ``as_hybrid_retriever()`` gives ragqa's hybrid retrieval
    over the same index, which finds exact names and numbers an embedding model blurs.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> store = RagqaVectorStore.from_texts(["熊猫吃竹子。", "The ferry runs daily."],
    ...                                     DeterministicFakeEmbedding(size=8), ids=["a", "b"])
    >>> [d.id for d in store.as_hybrid_retriever(k=1).invoke("熊猫吃什么？")]
    ['a']
    """

    def __init__(self, embedding: Embeddings, index: ChunkIndex | None = None) -> None:
        self.embedding = embedding
        self.index = index if index is not None else ChunkIndex([], allow_empty=True)
        for i, chunk in enumerate(self.index.chunks):  # chunks from ragqa's file cache carry no id
            if chunk.id is None:
                self.index.chunks[i] = chunk.model_copy(update={"id": str(uuid.uuid4())})
        self._positions: dict[str, int] | None = None

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def _position(self) -> dict[str, int]:
        if self._positions is None:
            self._positions = {c.id: i for i, c in enumerate(self.index.chunks) if c.id is not None}
        return self._positions

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store the texts; -> their ids (given ones kept, missing ones made up)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        if not texts:
            return []
        new_ids = [i if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        # the same id twice in one call: the later text wins, as it would over two calls
        last = {doc_id: n for n, doc_id in enumerate(new_ids)}
        keep = sorted(last.values())
        docs = [
            Document(id=new_ids[n], page_content=texts[n], metadata=dict(metadatas[n]) if metadatas else {})
            for n in keep
        ]
        vectors = _unit_rows(self.embedding.embed_documents([d.page_content for d in docs]))
        self.delete(list(last))
        self.index.add(FileIndex(docs, vectors, [tokenize(d.page_content) for d in docs]))
        self._positions = None
        return new_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove these ids (unknown ones are ignored); ``None`` removes everything."""
        if ids is None:
            self.index.remove(range(len(self.index)))
        else:
            where = self._position()
            self.index.remove(where[i] for i in ids if i in where)
        self._positions = None
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        where = self._position()
        return [_copy(self.index.chunks[where[i]]) for i in ids if i in where]

    def similarity_search_with_score(
        self, query: str, k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """[(document, cosine)] best first; ``filter`` is a metadata dict to match or a predicate."""
        return self._search(self.embedding.embed_query(query), k, filter)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [d for d, _ in self._search(embedding, k, filter)]

    def _search(self, vector: Sequence[float], k: int, filter: Any = None) -> list[tuple[Document, float]]:
        if filter is None:
            return [(_copy(self.index.chunks[i]), s) for i, s in self.index.search_ids(vector, k)]
        keep = filter if callable(filter) else lambda d: all(d.metadata.get(m) == v for m, v in filter.items())
        hits = self.index.search_ids(vector, len(self.index))  # a flat index scores every chunk anyway
        return [(_copy(self.index.chunks[i]), s) for i, s in hits if keep(self.index.chunks[i])][:k]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: min(1.0, max(0.0, cosine))  # opposite directions are simply irrelevant

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        import numpy as np
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        hits = self.index.search_ids(embedding, max(fetch_k, k))
        if not hits:
            return []
        ids = [i for i, _ in hits]
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype="float32"), self.index.vectors(ids), lambda_mult=lambda_mult, k=k
        )
        return [_copy(self.index.chunks[ids[j]]) for j in chosen]

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
        ids: list[str] | None = None, **kwargs: Any,
    ) -> "RagqaVectorStore":
        store = cls(embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def as_hybrid_retriever(self, k: int = 4, *, candidates: int = DEFAULT_CANDIDATES) -> HybridRetriever:
        """ragqa's hybrid retrieval (vector + BM25, rank fusion) over this store, as ``ask`` does it.

        Results carry ``metadata["score"]`` (the fusion score), ``vector_score`` and ``bm25_score``.
        """
        return HybridRetriever(index=self.index, embeddings=self.embedding, k=k, candidates=candidates)


def _copy(doc: Document) -> Document:
    """A caller's copy: editing a search result must not edit the stored chunk."""
    return Document(id=doc.id, page_content=doc.page_content, metadata=dict(doc.metadata))


def _unit_rows(vectors: Sequence[Sequence[float]]) -> Any:
    import numpy as np

    v = np.array(vectors, dtype="float32")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)
