"""An in-memory index: chunks, a flat FAISS index and rank_bm25, for texts that are not in a
knowledge base (``RagqaVectorStore.from_texts`` and the retriever tests).

It answers the same search calls as a knowledge base (``search_ids``, ``bm25_search``,
``get_chunks``), so every retriever works over either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import MissingDependencyError, RagqaError
from ragqa.store.base import faiss_module as _faiss

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: BM25 tokens stored with the chunks




@dataclass
class FileIndex:
    """Chunks and their vectors (row i of ``vectors`` embeds ``chunks[i]``), with BM25 words."""

    chunks: list[Document]
    vectors: "np.ndarray"
    tokens: list[list[str]] | None = None  # BM25 words per chunk


def _lucene_bm25(corpus: list[list[str]]) -> Any:
    """rank_bm25's Okapi BM25 with Lucene's idf, log(1 + (N - n + 0.5) / (n + 0.5)).

    rank_bm25's own idf, log((N - n + 0.5) / (n + 0.5)), is zero or negative for a word in half
    the chunks or more: a one-file question over 2 chunks would score nothing. Lucene's is > 0.
    """
    import math

    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise MissingDependencyError("rank-bm25") from None

    class LuceneBM25(BM25Okapi):
        def _calc_idf(self, nd: dict[str, int]) -> None:
            for word, freq in nd.items():
                self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))
            self.average_idf = sum(self.idf.values()) / max(len(self.idf), 1)

    return LuceneBM25(corpus)


class ChunkIndex:
    """Several files' chunks in one in-memory FAISS index (cosine on normalised vectors).

    Built from cached file indexes for a question; ``add`` and ``remove`` let a LangChain
    VectorStore (``ragqa.vectorstores.RagqaVectorStore``) grow and shrink it. ``allow_empty`` makes an
    index with no chunks yet; its dimension is set by the first ``add``.
    """

    def __init__(self, files: Sequence[FileIndex], *, allow_empty: bool = False) -> None:
        self.chunks: list[Document] = []
        self._index: Any = None
        self._tokens: list[list[str]] | None = []
        self._bm25: Any = None
        if not any(len(f.vectors) for f in files) and not allow_empty:
            raise RagqaError("nothing to search: the documents produced no chunks")
        for f in files:
            self.add(f)

    @property
    def dimension(self) -> int:
        return int(self._index.d) if self._index is not None else 0

    def __len__(self) -> int:
        return len(self.chunks)

    def add(self, index: FileIndex) -> None:
        """Append chunks with their vectors (and BM25 words, if every part so far has them)."""
        import numpy as np

        if not index.chunks:
            return
        vectors = np.ascontiguousarray(index.vectors, dtype="float32")
        if vectors.ndim != 2 or len(vectors) != len(index.chunks):
            raise RagqaError(f"{len(index.chunks)} chunks but vectors of shape {vectors.shape}")
        if self._index is None:
            self._index = _faiss().IndexFlatIP(vectors.shape[1])
        elif vectors.shape[1] != self.dimension:
            raise RagqaError(
                f"vectors have {vectors.shape[1]} dimensions but the index has {self.dimension} "
                "(was it built with another embedding model?)"
            )
        self._index.add(vectors)
        self.chunks.extend(index.chunks)
        if self._tokens is not None and index.tokens is not None:
            self._tokens.extend(index.tokens)
        else:
            self._tokens = None
        self._bm25 = None

    def remove(self, ids: Iterable[int]) -> None:
        """Drop chunks by position; later chunks move up (FAISS renumbers a flat index the same way)."""
        import numpy as np

        drop = sorted({i for i in ids if 0 <= i < len(self.chunks)})
        if not drop:
            return
        self._index.remove_ids(np.asarray(drop, dtype="int64"))
        gone = set(drop)
        self.chunks = [c for i, c in enumerate(self.chunks) if i not in gone]
        if self._tokens is not None:
            self._tokens = [t for i, t in enumerate(self._tokens) if i not in gone]
        self._bm25 = None

    def vectors(self, ids: Sequence[int]) -> "np.ndarray":
        """The stored vectors of these chunks, in order."""
        import numpy as np

        if not ids:
            return np.zeros((0, self.dimension), "float32")
        return np.vstack([self._index.reconstruct(int(i)) for i in ids])

    def search_ids(self, query_vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        """[(chunk id, cosine)] best first."""
        return self.search_batch_ids([query_vector], k)[0]

    def search_batch_ids(self, query_vectors: Sequence[Sequence[float]], k: int) -> list[list[tuple[int, float]]]:
        """One FAISS call for many queries (evaluation embeds and searches thousands).

        Queries are normalised here, so a score is the cosine even for a model whose query vectors
        are not unit length (the ranking is the same either way)."""
        import numpy as np

        q = np.array(query_vectors, dtype="float32")
        if not self.chunks or k <= 0:
            return [[] for _ in range(len(q))]
        if q.ndim != 2 or q.shape[1] != self.dimension:
            raise RagqaError(
                f"query vectors have {q.shape[-1]} dimensions but the index has {self.dimension} "
                "(was it built with another embedding model?)"
            )
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q /= np.where(norms > 0, norms, 1.0)
        scores, ids = self._index.search(q, min(k, len(self.chunks)))
        return [[(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)]

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        """The chunks with these ids, in order."""
        return [self.chunks[i] for i in ids]

    def search(self, query_vector: Sequence[float], k: int) -> list[tuple[Document, float]]:
        return [(self.chunks[i], s) for i, s in self.search_ids(query_vector, k)]

    @property
    def bm25(self) -> Any:
        """rank_bm25's BM25Okapi over the stored tokens, built on first use."""
        if self._bm25 is None:
            if self._tokens is None:
                raise RagqaError("this index has no BM25 tokens; rebuild it")
            corpus = [t if t else ["\x00"] for t in self._tokens]  # BM25Okapi needs a word per doc
            self._bm25 = _lucene_bm25(corpus)
        return self._bm25

    def bm25_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """[(chunk id, BM25 score)] for a question, segmented as the chunks were."""
        from ragqa.words import tokenize

        return self.bm25_search_ids(tokenize(query), k)

    def bm25_search_ids(self, query_tokens: Sequence[str], k: int) -> list[tuple[int, float]]:
        """[(chunk id, BM25 score)] best first; chunks sharing no word with the query are left out."""
        import numpy as np

        if not query_tokens or not self.chunks or k <= 0:
            return []
        scores = self.bm25.get_scores(list(query_tokens))
        n = min(k, len(scores))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = sorted(top, key=lambda i: (-scores[i], i))
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
