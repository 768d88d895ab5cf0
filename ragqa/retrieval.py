"""Retrievers over a knowledge base or a ChunkIndex, as LangChain BaseRetrievers: vector, keyword (BM25), hybrid.

- ``vector``: cosine similarity of embeddings (FAISS).
- ``bm25``: Okapi BM25 over words: jieba segmentation for Chinese runs, lower-cased words for
  Latin text. Finds the exact names and numbers an embedding model blurs.
- ``hybrid``: the two lists fused into one ranking by a registered fusion function (``zscore``,
  the default: a convex combination of per-query z-scores; ``minmax``; ``rrf``, reciprocal rank).

An optional reranker (a cross-encoder by name) re-scores the (fused) candidates; it is off by default.

``RagqaVectorStore`` is an in-memory index as a LangChain VectorStore, built from texts or documents;
``KnowledgeBaseStore`` is a persistent knowledge base (what ``ragqa index`` fills) as one.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore

from ragqa.errors import ConfigError, InputError, MissingDependencyError, ModelError
from ragqa.store import DEFAULT_KB, ChunkIndex, FileIndex, FileRecord, KBView, KnowledgeBase, content_hash

if TYPE_CHECKING:
    import numpy as np

    from ragqa.config import Settings

log = logging.getLogger(__name__)

RETRIEVERS = ("vector", "bm25", "hybrid")
RRF_K = 60
# chosen by `ragqa eval --compare` on MRC, keyword and search-style sets (README "Retrieval")
DEFAULT_FUSION = "zscore"
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


# -- fusion: how hybrid turns a vector and a BM25 list into one ranking -------------------------
#
# A fusion function sees the query and the two hit lists, [(chunk id, score)] best first (cosines
# and BM25 scores), and may ask for the words of a chunk; nothing else of the engine, so it works
# over every engine. Each is registered by name with its parameters and their defaults; a spec
# names one, with parameters after colons: "zscore:w=0.6:lift=0".

Hits = Sequence[tuple[int, float]]
ChunkWords = Callable[[int], set[str]]  # chunk id -> its BM25 words
FusionFn = Callable[..., list[tuple[int, float]]]


@dataclass(frozen=True)
class FusionInfo:
    fn: FusionFn
    params: dict[str, tuple[float, float, float]]  # name: (default, lowest, highest)
    help: str


FUSIONS: dict[str, FusionInfo] = {}


def register_fusion(name: str, help: str, **params: tuple[float, float, float]) -> Callable[[FusionFn], FusionFn]:
    """Register ``fn(query, vector_hits, keyword_hits, *, words, **params) -> [(id, score)]`` as ``name``."""
    def add(fn: FusionFn) -> FusionFn:
        FUSIONS[name] = FusionInfo(fn, params, help)
        return fn
    return add


@dataclass(frozen=True)
class Fusion:
    """A fusion function with its parameters; call it with the query, the vector hits, the keyword
    hits and (for query-adaptive fusions) ``words``, which gives a chunk's BM25 words by id."""

    name: str
    params: dict[str, float]

    @property
    def spec(self) -> str:
        """The canonical spec: every parameter spelled out ("rrf:k=60")."""
        return ":".join([self.name, *(f"{k}={v:g}" for k, v in self.params.items())])

    def __call__(self, query: str, vector: Hits, keyword: Hits, words: ChunkWords | None = None,
                 ) -> list[tuple[int, float]]:
        return FUSIONS[self.name].fn(query, vector, keyword, words=words, **self.params)


def make_fusion(spec: "str | Fusion | None" = None) -> Fusion:
    """A fusion from its spec: a registered name, optionally with parameters ("zscore:w=0.6",
    "rrf:k=60"); None is the default, DEFAULT_FUSION.

    >>> make_fusion("zscore:w=0.6").spec
    'zscore:w=0.6:lift=1:below=0.5:drop=0.4:mass=80'
    >>> make_fusion("rrf").spec
    'rrf:k=60'
    """
    if isinstance(spec, Fusion):
        return spec
    name, *given = (spec or DEFAULT_FUSION).strip().split(":")
    name = name.strip().lower()
    info = FUSIONS.get(name)
    if info is None:
        raise ConfigError(f"unknown fusion {name!r}; choose one of: {fusion_help()}")
    params = {k: v[0] for k, v in info.params.items()}
    for part in given:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key not in info.params or not eq:
            valid = ", ".join(f"{k}=" for k in info.params) or "none"
            raise ConfigError(f"fusion {name!r}: {part!r} is not a parameter; its parameters: {valid} "
                              f"(e.g. {name}:{next(iter(info.params), 'w')}=...)")
        _, lo, hi = info.params[key]
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not lo <= number <= hi:
            raise ConfigError(f"fusion {name!r}: {key} must be a number from {lo:g} to {hi:g} (got {value!r})")
        params[key] = number
    return Fusion(name, params)


def fusion_help() -> str:
    """The registered fusions with their parameters, for errors and --help."""
    return "; ".join(
        f"{n} ({', '.join(f'{k}={d:g}' for k, (d, _, _) in i.params.items())}: {i.help})" for n, i in FUSIONS.items())


@register_fusion("rrf", "reciprocal rank, sum of 1/(k + rank)", k=(RRF_K, 1, 1000))
def rrf_fusion(query: str, vector: Hits, keyword: Hits, *, words: ChunkWords | None = None,
               k: float = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of the two lists; the scores themselves are ignored."""
    return fuse_rankings([[i for i, _ in vector], [i for i, _ in keyword]], rrf_k=int(k))


def _zscores(scores: dict[int, float]) -> dict[int, float]:
    """Each score as standard deviations above the mean (0 when all are equal)."""
    if not scores:
        return {}
    mean = sum(scores.values()) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores.values()) / len(scores)) ** 0.5
    return {i: (x - mean) / sd if sd > 0 else 0.0 for i, x in scores.items()}


def _minmax(scores: dict[int, float]) -> dict[int, float]:
    """Each score scaled to [0, 1] between the lowest and the highest (1 when all are equal)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    return {i: (x - lo) / (hi - lo) if hi > lo else 1.0 for i, x in scores.items()}


def _both_scores(vector: Hits, keyword: Hits) -> tuple[dict[int, float], dict[int, float]]:
    """Both scores for every candidate in either list.

    A chunk the vector list left out gets the list's lowest cosine (it ranked below all of them).
    BM25 leaves out chunks sharing no word with the query: when its list is shorter than the
    vector list (both were asked for the same number), it ran out of matches and a missing chunk
    scores 0; otherwise it was cut off and a missing chunk gets the list's lowest score.

    >>> _both_scores([(1, 0.9), (2, 0.8)], [(3, 5.0)])
    ({1: 0.9, 2: 0.8, 3: 0.8}, {1: 0.0, 2: 0.0, 3: 5.0})
    """
    ids = list(dict.fromkeys([i for i, _ in vector] + [i for i, _ in keyword]))
    v, kw = dict(vector), dict(keyword)
    v_floor = min(v.values(), default=0.0)
    k_floor = 0.0 if len(keyword) < len(vector) else min(kw.values(), default=0.0)
    return {i: v.get(i, v_floor) for i in ids}, {i: kw.get(i, k_floor) for i in ids}


def _convex(vector: Hits, keyword: Hits, w: float,
            normalise: Callable[[dict[int, float]], dict[int, float]]) -> list[tuple[int, float]]:
    """w * vector + (1 - w) * keyword, each normalised over all the candidates."""
    v_raw, k_raw = _both_scores(vector, keyword)
    v, kw = normalise(v_raw), normalise(k_raw)
    fused = {i: w * v[i] + (1 - w) * kw[i] for i in v}
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


IDF_CACHE_FORMAT = 1


def _idf_of(words: Sequence[str]) -> tuple[dict[str, float], float]:
    """jieba's general-corpus idf of these words, and its median (what an unknown word gets).

    The table has 270k words: parsing it costs ~0.4 s and ~100 MB per process, more than the
    rest of a question. So it is copied once into an SQLite file in the cache folder and only the
    question's words are looked up; where that cannot be written, the table is read as jieba does."""
    db = _idf_db()
    if db is None:
        idf, median = _idf_table()
        return {w: idf[w] for w in words if w in idf}, median
    found: dict[str, float] = {}
    for part in (list(words)[i:i + 500] for i in range(0, len(words), 500)):
        q = f"SELECT word, idf FROM idf WHERE word IN ({','.join('?' * len(part))})"
        found.update(db.execute(q, part).fetchall())
    return found, _idf_median


_idf: tuple[dict[str, float], float] | None = None
_idf_connection: Any = None
_idf_median = 0.0


def _idf_table() -> tuple[dict[str, float], float]:
    """jieba's idf table in memory (the fallback of ``_idf_of``)."""
    global _idf
    if _idf is None:
        _segmenter()
        import jieba.analyse

        table = jieba.analyse.default_tfidf
        _idf = (table.idf_freq, table.median_idf)
    return _idf


def _idf_db() -> Any:
    """The idf table as SQLite under the cache folder, made on first use (None if it cannot be)."""
    global _idf_connection, _idf_median
    if _idf_connection is not None:
        return _idf_connection or None
    import contextlib
    import os
    import sqlite3
    from pathlib import Path

    from ragqa.config import default_cache_dir

    try:
        import jieba

        source = Path(jieba.__file__).parent / "analyse" / "idf.txt"
        # jieba's version and the table's size, not its mtime: every new venv copies the file anew
        version = getattr(jieba, "__version__", "0").replace("-", "_")
        stamp = f"{IDF_CACHE_FORMAT}-{version}-{source.stat().st_size}"
        path = default_cache_dir() / f"jieba-idf-{stamp}.sqlite"
        if not path.is_file():
            for old in path.parent.glob("jieba-idf-*.sqlite"):  # earlier versions' copies (6 MB each)
                with contextlib.suppress(OSError):
                    old.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            idf, median = _idf_table()
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            con = sqlite3.connect(tmp)
            con.execute("CREATE TABLE idf (word TEXT PRIMARY KEY, idf REAL NOT NULL) WITHOUT ROWID")
            con.execute("CREATE TABLE meta (median REAL NOT NULL)")
            con.executemany("INSERT OR REPLACE INTO idf VALUES (?, ?)", idf.items())
            con.execute("INSERT INTO meta VALUES (?)", (median,))
            con.commit()
            con.close()
            os.replace(tmp, path)
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        _idf_median = float(con.execute("SELECT median FROM meta").fetchone()[0])
        _idf_connection = con
    except (OSError, sqlite3.Error, ImportError) as exc:
        log.info("idf table not cached (%s); reading it in memory", exc)
        _idf_connection = False
    return _idf_connection or None


def matched_share(query: str, chunk_words: set[str]) -> float:
    """How much of the query's idf mass a chunk holds: the idf-weighted share of the query's
    words that are among the chunk's words (idf from jieba's general-corpus table, so the same
    on every engine; a word it does not know, English included, counts as rare).

    >>> round(matched_share("熊猫的尾巴", set(tokenize("熊猫吃竹子"))), 2)  # 熊猫 (idf 9.1) of 熊猫, 的 (0.9), 尾巴 (7.9)
    0.51
    """
    matched, total = matched_mass(query, chunk_words)
    return matched / total if total else 0.0


def matched_mass(query: str, chunk_words: set[str]) -> tuple[float, float]:
    """(the idf mass of the query's words a chunk holds, the query's whole idf mass)."""
    words = list(dict.fromkeys(tokenize(query)))
    idf, unknown = _idf_of(words)
    weights = {w: idf.get(w, unknown) for w in words}
    return sum(x for w, x in weights.items() if w in chunk_words), sum(weights.values())


@register_fusion(
    "zscore", "w * z-score of the cosine + (1 - w) * z-score of BM25, w raised by lift * (below - share) "
    "when BM25's best chunk holds less than `below` of the query's idf mass, and lowered by up to `drop` "
    "when that chunk matches more than `mass` of idf (long queries)",
    w=(0.5, 0, 1), lift=(1.0, 0, 10), below=(0.5, 0, 1), drop=(0.4, 0, 1), mass=(80.0, 1, 10000),
)
def zscore_fusion(query: str, vector: Hits, keyword: Hits, *, words: ChunkWords | None = None,
                  w: float = 0.5, lift: float = 1.0, below: float = 0.5, drop: float = 0.4,
                  mass: float = 80.0) -> list[tuple[int, float]]:
    """Convex combination of per-query z-scores (how far each chunk stands out among the
    candidates), with the vector weight adapted to the query. The score returned is the fused
    z-score through the logistic function: in (0, 1), 0.5 for an average candidate.

    Unlike rank fusion, a chunk far ahead in one list keeps its lead over a chunk that is only
    narrowly first in the other. Here the vectors clearly prefer 1 and BM25 barely prefers 2
    (10 vs 9.8); rank fusion puts 2 first, z-scores put 1 first:

    >>> vector, keyword = [(1, 0.95), (2, 0.80), (3, 0.79), (4, 0.78)], [(2, 10.0), (3, 9.9), (1, 9.8), (4, 1.0)]
    >>> [i for i, _ in zscore_fusion("q", vector, keyword)], [i for i, _ in rrf_fusion("q", vector, keyword)]
    ([1, 2, 3, 4], [2, 1, 3, 4])

    BM25 is right far more often when its best chunk holds most of the query's informative words
    (MRC questions that copy the passage) than when it matched only part of them (a query worded
    unlike the text), while the vectors degrade less; so when ``words`` is given and BM25's best
    chunk holds a share of the query's idf mass under ``below``, the vector weight rises by
    ``lift * (below - share)`` (to at most 0.95). ``lift=0`` keeps ``w`` fixed.

    A long query (a paragraph used as the query: a summary looking for its source) is the other
    way round: e5 embeds it coarsely while BM25 has many words to match. When BM25's best chunk
    matches more idf mass than ``mass`` (about ten informative words; a search query has a third
    of that), the vector weight falls linearly by up to ``drop`` at twice ``mass``.
    """
    if (lift > 0 or drop > 0) and keyword and words is not None:
        matched, total = matched_mass(query, words(keyword[0][0]))
        share = matched / total if total else 0.0
        w = min(w + lift * max(0.0, below - share), max(w, 0.95))
        w = max(0.05, w - drop * min(1.0, max(0.0, (matched - mass) / mass)))
    # the score a user sees: the fused z-score squashed into (0, 1), 0.5 = an average candidate
    return [(i, 1.0 / (1.0 + math.exp(-x))) for i, x in _convex(vector, keyword, w, _zscores)]


@register_fusion("minmax", "w * min-max scaled cosine + (1 - w) * min-max scaled BM25, per query", w=(0.5, 0, 1))
def minmax_fusion(query: str, vector: Hits, keyword: Hits, *, words: ChunkWords | None = None,
                  w: float = 0.5) -> list[tuple[int, float]]:
    """Convex combination of scores scaled to [0, 1] among the candidates."""
    return _convex(vector, keyword, w, _minmax)


def chunk_words(index: Any, chunk_id: int) -> set[str]:
    """A chunk's BM25 words, from its text (empty if it was deleted since the search)."""
    found = _chunks_by_id(index, [chunk_id])
    return set(tokenize(found[chunk_id].page_content)) if chunk_id in found else set()


def _hits_to_documents(
    index: Any, hits: Sequence[tuple[int, float]], extra: Callable[[int], dict[str, float]] | None = None,
) -> list[Document]:
    """[(chunk id, score)] -> the chunks, fetched in one call, each with its scores."""
    by_id = _chunks_by_id(index, [i for i, _ in hits])
    return [_with_score(by_id[i], s, **(extra(i) if extra else {})) for i, s in hits if i in by_id]


def _chunks_by_id(index: Any, ids: list[int]) -> dict[int, Document]:
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


class RagqaVectorStore(VectorStore):
    """ragqa's index (FAISS cosine + jieba BM25 words) as a LangChain VectorStore.

    Texts are embedded with ``embedding`` and their vectors normalised, so every score is a cosine.
    Adding a text under an id that is already stored replaces it. Besides the usual
    ``as_retriever()`` (vector search), ``as_hybrid_retriever()`` gives ragqa's hybrid retrieval
    over the same index, which finds exact names and numbers an embedding model blurs, and
    ``as_bm25_retriever()`` the keyword ranking alone.

    ``index`` is an in-memory ``ChunkIndex`` (a new empty one by default). Given a knowledge base or
    a view of one (``Pipeline.build_index`` / ``kb_index`` return views), the store is a
    ``KnowledgeBaseStore`` over it.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> store = RagqaVectorStore.from_texts(["熊猫吃竹子。", "The ferry runs daily."],
    ...                                     DeterministicFakeEmbedding(size=8), ids=["a", "b"])
    >>> [d.id for d in store.as_hybrid_retriever(k=1).invoke("熊猫吃什么？")]
    ['a']
    """

    index: Any  # a ChunkIndex here; a KB view in KnowledgeBaseStore

    def __new__(cls, embedding: Any = None, index: Any = None, *args: Any, **kwargs: Any) -> "RagqaVectorStore":
        if cls is RagqaVectorStore and isinstance(index, (KnowledgeBase, KBView)):
            cls = KnowledgeBaseStore
        return super().__new__(cls)

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
        texts, new_ids, keep = _check_texts(texts, metadatas, ids)
        if not texts:
            return []
        docs = [
            Document(id=new_ids[n], page_content=texts[n], metadata=dict(metadatas[n]) if metadatas else {})
            for n in keep
        ]
        vectors = _unit_rows(self.embedding.embed_documents([d.page_content for d in docs]))
        self.delete([new_ids[n] for n in keep])
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

    def _hits(self, vector: Sequence[float], k: int, filter: Any = None) -> list[tuple[int, Document, float]]:
        """[(chunk position, a copy of the chunk, cosine)] best first, of the chunks ``filter`` keeps."""
        keep = _metadata_filter(filter)
        if keep is None:
            return [(i, _copy(self.index.chunks[i]), s) for i, s in self.index.search_ids(vector, k)]
        hits = self.index.search_ids(vector, len(self.index))  # a flat index scores every chunk anyway
        return [(i, _copy(self.index.chunks[i]), s) for i, s in hits if keep(self.index.chunks[i])][:k]

    def _stored_vectors(self, hits: list[tuple[int, Document, float]]) -> "np.ndarray":
        return self.index.vectors([i for i, _, _ in hits])

    # -- the same on every ragqa store
    def similarity_search_with_score(
        self, query: str, k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """[(document, cosine)] best first; ``filter`` is a metadata dict to match or a predicate."""
        return [(d, s) for _, d, s in self._hits(self.embedding.embed_query(query), k, filter)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [d for _, d, _ in self._hits(embedding, k, filter)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: min(1.0, max(0.0, cosine))  # opposite directions are simply irrelevant

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, *,
        filter: Callable[[Document], bool] | dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        import numpy as np
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        hits = self._hits(embedding, max(fetch_k, k), filter)
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype="float32"), self._stored_vectors(hits), lambda_mult=lambda_mult, k=k
        )
        return [hits[j][1] for j in chosen]

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
        ids: list[str] | None = None, **kwargs: Any,
    ) -> "RagqaVectorStore":
        store = cls(embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    fusion: str = DEFAULT_FUSION  # what as_hybrid_retriever fuses with (KnowledgeBaseStore.open: the settings')

    def as_hybrid_retriever(self, k: int = 4, *, candidates: int = DEFAULT_CANDIDATES,
                            fusion: str | None = None) -> HybridRetriever:
        """ragqa's hybrid retrieval (vector + BM25 fused) over this store, as ``ask`` does it.

        ``fusion``: a spec such as ``"zscore:w=0.6"`` or ``"rrf"`` (README "Retrieval"); default the
        store's ``fusion`` (for ``KnowledgeBaseStore.open``: the settings' ``fusion``). Results carry
        ``metadata["score"]`` (the fusion score), ``vector_score`` and ``bm25_score``.
        """
        spec = make_fusion(fusion or self.fusion).spec  # a bad spec fails here, not at the first query
        return HybridRetriever(index=self.index, embeddings=self.embedding, k=k, candidates=candidates, fusion=spec)

    def as_bm25_retriever(self, k: int = 4) -> BM25Retriever:
        """ragqa's keyword retrieval (BM25 over jieba words) over this store; needs no embedding model.

        Results carry ``metadata["score"]`` (BM25); a chunk sharing no word with the query is never returned.
        """
        return BM25Retriever(index=self.index, k=k)


TEXT_PREFIX = "text:"  # a text added through a VectorStore is a KB record of its own: "text:<its id>"
TEXT_PARSER = "vectorstore/1"  # never a loader id, so no file's chunks are ever copied from a text
_KB_KEYS = ("source", "score", "chunk_id")  # the KB sets these on every chunk it returns
_GIVEN = "ragqa_given"  # a text's own values for those keys, kept aside in its chunk's metadata


class KnowledgeBaseStore(RagqaVectorStore):
    """A knowledge base (what ``ragqa index`` fills, ``ragqa ask --kb`` searches) as a LangChain
    VectorStore, with ragqa's vector, BM25 and hybrid retrievers over it.

    ``KnowledgeBaseStore.open(name)`` opens one with the settings' embedding model and splitter
    (the KB refuses others); ``KnowledgeBaseStore(embedding, kb_or_view)`` wraps one already open.

    Each text added through the store is one KB record, path ``text:<id>``, holding one chunk:
    the text as given (split it first, e.g. with ``ChineseTextSplitter``, as for any VectorStore),
    its vector, its BM25 words and its metadata (JSON). Its ``Document.id`` is that id, given or
    made up (a uuid4); adding a text under an id already stored replaces it, in one transaction.
    Files indexed by ``ragqa index`` / ``Pipeline.index_paths`` are searched alongside: their
    chunks come back as the KB gives them (``metadata["source"]`` the file, ``start``, ``chunk_id``)
    with ``Document.id`` the chunk's number in the KB. ``get_by_ids`` takes both kinds of id (a
    text's id wins over a chunk number that reads the same); ``delete`` removes texts, and refuses a
    file's chunk: a file's chunks go together (``ragqa kb remove NAME PATH``).

    Over a view (``Pipeline.build_index`` returns one) searches see the view's files and the texts
    added through this store.
    """

    def __init__(self, embedding: Embeddings | None, index: KnowledgeBase | KBView) -> None:
        if isinstance(index, KBView):
            kb, file_ids, sources = index.kb, index.file_ids, index.sources
        elif isinstance(index, KnowledgeBase):
            kb, file_ids, sources = index, None, {}
        else:
            raise TypeError(f"KnowledgeBaseStore wraps a KnowledgeBase or a KBView, not {type(index).__name__}")
        self.kb = kb
        self.index = _StoreView(kb, file_ids, sources)
        self._embedding = embedding
        self._make_embedding: Callable[[], Embeddings] | None = None
        self._owns_kb = False

    @classmethod
    def open(
        cls, name: str = DEFAULT_KB, settings: "Settings | None" = None, embedding: Embeddings | None = None,
        create: bool = False,
    ) -> "KnowledgeBaseStore":
        """The knowledge base ``name`` of ``settings`` (default: ``load_settings()``: flags aside, the
        same env and config file as the CLI), checked against their embedding model and splitter as
        every ragqa run is; ``create`` makes it when missing. ``embedding`` defaults to the settings'
        model, loaded on first use (a BM25 retriever never loads it)."""
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        pipeline = Pipeline(settings if settings is not None else load_settings())
        store = cls(embedding, pipeline.open_kb(name, create=create))
        store.fusion = pipeline.settings.fusion
        if embedding is None:
            store._make_embedding = lambda: pipeline.embeddings
        store._owns_kb = True
        return store

    @property
    def embedding(self) -> Embeddings:  # type: ignore[override]
        if self._embedding is None:
            if self._make_embedding is None:
                raise InputError("this knowledge base store has no embedding model: pass embedding=, or use "
                                 "KnowledgeBaseStore.open(name), which uses the settings' model")
            self._embedding = self._make_embedding()
        return self._embedding

    def close(self) -> None:
        """Close the KB if ``open`` opened it (a KB handed in stays its owner's to close)."""
        if self._owns_kb:
            self.kb.close()

    def __enter__(self) -> "KnowledgeBaseStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing
    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store each text as a KB record of its own; -> their ids (given ones kept,
        missing ones made up). Metadata must be JSON (str, numbers, bools, None, lists, dicts)."""
        import numpy as np

        texts, new_ids, keep = _check_texts(texts, metadatas, ids)
        if not texts:
            return []
        docs = []
        for n in keep:
            metadata = dict(metadatas[n]) if metadatas else {}
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as exc:
                raise InputError(f"the metadata of text {n} cannot be stored in a knowledge base ({exc}); "
                                 "use JSON values: str, numbers, bools, None, lists, dicts") from None
            docs.append(Document(page_content=texts[n], metadata=_to_stored(metadata)))
        vectors = np.asarray(self.embedding.embed_documents([d.page_content for d in docs]), dtype="float32")
        with self.kb.writing():
            for n, doc, vector in zip(keep, docs, vectors):
                data = doc.page_content.encode("utf-8")
                record = FileRecord(TEXT_PREFIX + new_ids[n], size=len(data), hash=content_hash(data),
                                    parser=TEXT_PARSER)
                self.kb.put_file(record, [doc], vector[None, :], [tokenize(doc.page_content)])
                self.index.include(record.id)
        return new_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove the texts with these ids (unknown ids are ignored). A chunk of an indexed file is
        refused: remove the file (``ragqa kb remove NAME PATH``). ``None`` is refused too: emptying a
        knowledge base is ``ragqa kb drop NAME``."""
        if ids is None:
            raise InputError(f"name the ids to delete; to empty knowledge base {self.kb.name!r}: "
                             f"ragqa kb drop {self.kb.name}")
        ids = [str(i) for i in ids]
        records = self._records()
        paths = [TEXT_PREFIX + i for i in dict.fromkeys(ids) if TEXT_PREFIX + i in records]
        chunks = self._file_chunks([i for i in ids if TEXT_PREFIX + i not in records], records)
        if chunks:
            doc = chunks[0]
            raise InputError(f"chunk {doc.id} is part of the indexed file {doc.metadata.get('source')}; a file's "
                             f"chunks go together: ragqa kb remove {self.kb.name} {doc.metadata.get('source')}")
        if paths:
            with self.kb.writing():
                self.kb.remove_files(paths)
        return True

    # -- reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The texts and chunks with these ids, in this order; unknown ids are left out."""
        ids = [str(i) for i in ids]
        records = self._records()
        found: dict[str, Document] = {}
        texts = [records[TEXT_PREFIX + i].id for i in dict.fromkeys(ids) if TEXT_PREFIX + i in records]
        if texts:
            for doc in self.kb.iter_chunks(texts):
                doc = self.index.seen(doc)
                found[str(doc.id)] = doc
        for doc in self._file_chunks([i for i in ids if i not in found], records):
            found[str(doc.id)] = self.index.seen(doc)
        return [found[i] for i in ids if i in found]

    def _records(self) -> dict[str, FileRecord]:
        """The KB's ok records this store sees, by path."""
        return {r.path: r for r in self.kb.files() if r.status == "ok" and self.index.allows(r.id)}

    def _file_chunks(self, ids: Sequence[str], records: dict[str, FileRecord]) -> list[Document]:
        """The chunks of indexed files (not texts) these ids number, as the KB returns them."""
        numbers = [int(i) for i in dict.fromkeys(ids) if i.isascii() and i.isdigit()]
        if not numbers:
            return []
        return [d for d in self.kb.get_chunks(numbers)
                if d.metadata.get("source", "") in records and not d.metadata["source"].startswith(TEXT_PREFIX)]

    def _hits(self, vector: Sequence[float], k: int, filter: Any = None) -> list[tuple[int, Document, float]]:
        """[(chunk id, chunk, cosine)] best first; with ``filter``, fetched in widening rounds
        (4k, 16k, ...) until k chunks pass it or the KB has no more."""
        keep = _metadata_filter(filter)
        n = k if keep is None else max(4 * k, 20)
        while True:
            hits = self.index.search_ids(vector, n)
            docs = _chunks_by_id(self.index, [i for i, _ in hits])
            out = [(i, docs[i], s) for i, s in hits if i in docs and (keep is None or keep(docs[i]))]
            if keep is None or len(out) >= k or len(hits) < n:
                return out[:k]
            n *= 4

    def _stored_vectors(self, hits: list[tuple[int, Document, float]]) -> "np.ndarray":
        # the KB interface hands out chunks, not vectors: the candidates are embedded again
        import numpy as np

        return np.asarray(self.embedding.embed_documents([d.page_content for _, d, _ in hits]), dtype="float32")

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
        ids: list[str] | None = None, name: str = DEFAULT_KB, settings: "Settings | None" = None, **kwargs: Any,
    ) -> "KnowledgeBaseStore":
        """Add the texts to knowledge base ``name`` (made if missing) of ``settings``; -> its store."""
        store = cls.open(name, settings, embedding, create=True)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class _StoreView(KBView):
    """A KB as a KnowledgeBaseStore searches it: texts added through the store come back with their
    own ids and metadata, and join the view's file filter (if it has one)."""

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        return [self.seen(d) for d in self.kb.get_chunks(ids)]

    def seen(self, doc: Document) -> Document:
        """A KB chunk as the store's user sees it: a text as it was added; a file's chunk under
        the path the user gave for the file (a view from ``build_index``)."""
        path = doc.metadata.get("source", "")
        if not path.startswith(TEXT_PREFIX):
            if self.sources:
                doc.metadata["source"] = self.sources.get(path, path)
            return doc
        metadata = {k: v for k, v in doc.metadata.items() if k not in ("source", "chunk_id", _GIVEN)}
        metadata.update(doc.metadata.get(_GIVEN, {}))
        return Document(id=path[len(TEXT_PREFIX):], page_content=doc.page_content, metadata=metadata)

    def include(self, file_id: int | None) -> None:
        if self.file_ids is not None and file_id is not None and file_id not in self.file_ids:
            self.file_ids.append(file_id)

    def allows(self, file_id: int | None) -> bool:
        return self.file_ids is None or file_id in self.file_ids


def _to_stored(metadata: dict[str, Any]) -> dict[str, Any]:
    """A text's metadata as its KB chunk keeps it: the KB's own keys (source, score, chunk_id) aside.

    >>> _to_stored({"source": "news.md", "page": 2})
    {'page': 2, 'ragqa_given': {'source': 'news.md'}}
    """
    stored = {k: v for k, v in metadata.items() if k not in _KB_KEYS}
    given = {k: metadata[k] for k in _KB_KEYS if k in metadata}
    if given:
        stored[_GIVEN] = given
    return stored


def _check_texts(
    texts: Iterable[str], metadatas: list[dict] | None, ids: Sequence[str | None] | None,
) -> tuple[list[str], list[str], list[int]]:
    """-> (the texts, an id for each, the positions to store): the same id twice in one call keeps
    the later text, as two calls would."""
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    new_ids = [str(i) if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
    last = {doc_id: n for n, doc_id in enumerate(new_ids)}
    return texts, new_ids, sorted(last.values())


def _metadata_filter(filter: Callable[[Document], bool] | dict[str, Any] | None) -> Callable[[Document], bool] | None:
    if filter is None or callable(filter):
        return filter
    return lambda d: all(d.metadata.get(m) == v for m, v in filter.items())


def _copy(doc: Document) -> Document:
    """A caller's copy: editing a search result must not edit the stored chunk."""
    return Document(id=doc.id, page_content=doc.page_content, metadata=dict(doc.metadata))


def _unit_rows(vectors: Sequence[Sequence[float]]) -> Any:
    import numpy as np

    v = np.array(vectors, dtype="float32")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)
