"""Abstention: "the documents do not say" when the knowledge base cannot answer, without the model.

Two signals ragqa computes anyway separate questions a knowledge base can answer from questions
it cannot: the cosine of the best chunk (vector search), and ``coverage``, the share of the
question's idf mass that BM25's best chunk holds (``ragqa.words.matched_share``). Their scale
moves with every embedding model, language and collection, so no fixed threshold works; each
knowledge base (or each set of files ``ask PATH...`` is given) is calibrated from itself,
without labelled questions:

1. ``PSEUDO_QUERIES`` chunks are drawn at random (fixed seed); from each, a question-like
   pseudo-query: a stretch of one sentence, some of its words dropped and some replaced by words
   of another chunk (real questions paraphrase: their coverage is ~0.7-0.8, not 1).
2. Each is searched twice: in the whole collection ("answerable": its own passage is there), and
   with its own document left out ("not answerable": a question about something the collection
   does not hold). With fewer than ``MIN_DOCUMENTS`` documents, its passage and the chunks
   around it are left out instead.
3. The two signals are standardised by the not-answerable searches (their mean and spread), and
   a question's score is ``z(cosine) + COVERAGE_WEIGHT * z(coverage)``. It abstains when the
   score is below the ``strictness`` quantile of the not-answerable pseudo-queries' scores
   (default 0.5, their median: a question that matches the collection no better than a typical
   question about something it does not hold; higher abstains more, lower less).

The calibration is stored with the knowledge base and made again when it changed by more than a
tenth (chunks or documents). A collection of fewer than ``MIN_CHUNKS`` chunks is too small to
calibrate: the question is answered as with ``abstain = off``, with a note.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.documents import Document

VERSION = 3  # bump when pseudo-queries or the score change: stored calibrations are made again
PSEUDO_QUERIES = 300
CALIBRATION_BATCH = 32  # pseudo-queries embedded at a time (a cancelled question stops between batches)
MIN_CHUNKS = 20
MIN_DOCUMENTS = 3  # fewer: leave out the pseudo-query's passage and its neighbours, not its document
NEIGHBOURHOOD = 2.0  # ... the chunks of that document starting within this many chunk sizes of it
COVERAGE_WEIGHT = 2.0  # chosen with bench/bench_abstain.py (README "Abstention")
DEFAULT_STRICTNESS = 0.5
DEPTH = 30  # hits fetched per pseudo-query search, to find the first outside its own document
STALE_SHARE = 0.1  # recalibrate when chunks or documents changed by more than this share
REPLACE_SHARE = 0.3  # of a pseudo-query's words, taken from another chunk
DROP_SHARE = 0.25  # of a pseudo-query's words, left out

MESSAGES = {"zh": "资料中没有找到与问题相关的内容。", "en": "The documents do not say."}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_PIECE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,2}|[^\W_]+")  # punctuation is no word


def message(question: str) -> str:
    """The fixed answer of an abstention, in the question's language."""
    from ragqa.prompts import detect_lang

    return MESSAGES[detect_lang(question)]


@dataclass(frozen=True)
class Signals:
    cosine: float  # the best chunk's cosine (0 when the search found none)
    coverage: float  # share of the question's idf mass BM25's best chunk holds (0: no BM25 hit)


def signals_of(query: str, vector: Sequence[tuple[int, float]], keyword: Sequence[tuple[int, float]],
               words: Callable[[int], set[str]]) -> Signals:
    """The signals of one question from its two hit lists (best first) and a chunk's BM25 words."""
    from ragqa.words import matched_share

    return Signals(float(vector[0][1]) if vector else 0.0,
                   matched_share(query, words(keyword[0][0])) if keyword else 0.0)


def search_signals(index: Any, embeddings: Any, query: str) -> Signals:
    """The signals of one question, searching ``index`` (a KB view) for its best chunk each way."""
    from ragqa.retrieval import chunk_words

    vector = index.search_ids(embeddings.embed_query(query), 1)
    keyword = index.bm25_search(query, 1)
    return signals_of(query, vector, keyword, lambda i: chunk_words(index, i))


@dataclass
class Calibration:
    """What a collection's pseudo-queries showed: the not-answerable signals' mean and spread,
    and both kinds' scores, sorted (the strictness picks a quantile of the not-answerable ones)."""

    mean: tuple[float, float]
    sd: tuple[float, float]
    scores: list[float]  # the answerable pseudo-queries' scores, sorted (shown by kb show, not decided on)
    chunks: int
    documents: int
    mode: str  # "document" or "passage": what each not-answerable search left out
    embedding: str = ""
    version: int = VERSION
    seconds: float = 0.0
    made: float = field(default_factory=time.time)
    negatives: list[float] = field(default_factory=list)  # the not-answerable pseudo-queries' scores, sorted

    def score(self, s: Signals) -> float:
        zc = (s.cosine - self.mean[0]) / max(self.sd[0], 1e-6)
        zv = (s.coverage - self.mean[1]) / max(self.sd[1], 1e-6)
        return zc + COVERAGE_WEIGHT * zv

    def threshold(self, strictness: float) -> float:
        xs = self.negatives
        if not xs:
            return -math.inf
        pos = min(max(strictness, 0.0), 1.0) * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def decide(self, s: Signals, strictness: float) -> dict[str, Any]:
        """{"answerable", "score", "threshold", "cosine", "coverage"}: the decision, explained."""
        score, threshold = self.score(s), self.threshold(strictness)
        return {"answerable": score >= threshold, "score": round(score, 3), "threshold": round(threshold, 3),
                "cosine": round(s.cosine, 4), "coverage": round(s.coverage, 3)}

    def stale(self, chunks: int, documents: int, embedding: str) -> bool:
        return (self.version != VERSION or self.embedding != embedding
                or abs(chunks - self.chunks) > STALE_SHARE * max(self.chunks, 1)
                or abs(documents - self.documents) > STALE_SHARE * max(self.documents, 1))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> Calibration | None:
        try:
            data = json.loads(text or "")
            data["mean"], data["sd"] = tuple(data["mean"]), tuple(data["sd"])
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None  # missing, older or damaged: calibrate again


def _pieces(text: str) -> list[str]:
    """A text cut into word-like pieces: words of letters and digits, and Chinese in pairs of
    characters; punctuation left out."""
    return _PIECE.findall(text)


def _join(pieces: Sequence[str]) -> str:
    out = ""
    for p in pieces:
        out += p if not out or _CJK.match(p) or _CJK.match(out[-1]) else " " + p
    return out


def pseudo_query(text: str, other: str, rnd: random.Random) -> str | None:
    """A question-like stretch of one sentence of ``text``: 40-80 % of its words, a quarter of
    them dropped and some replaced by words of ``other`` (another chunk). None for a text with no
    usable sentence (a table, code: then a stretch of the text itself is used by the caller)."""
    from ragqa.splitting import sentence_spans

    spans = [(s, e) for s, e in sentence_spans(text) if len(_pieces(text[s:e])) >= 4]
    if not spans:
        return None
    s, e = rnd.choice(spans)
    words = _pieces(text[s:e])[:60]
    keep = max(3, min(len(words), int(rnd.uniform(0.4, 0.8) * len(words))))
    a = rnd.randint(0, len(words) - keep)
    foreign = _pieces(other) or words
    picked = [rnd.choice(foreign) if rnd.random() < REPLACE_SHARE else w
              for w in words[a:a + keep] if rnd.random() >= DROP_SHARE]
    return _join(picked or words[a:a + keep])


def calibrate(index: Any, embeddings: Any, *, chunk_size: int, embedding: str = "", records: int = 0,
              document_of: Callable[[Document], Any] | None = None, n: int = PSEUDO_QUERIES,
              seed: int = 0) -> Calibration | None:
    """The calibration of a KB view's chunks (see the module docstring); None when it holds fewer
    than ``MIN_CHUNKS`` chunks or no usable text. ``records``: the view's file records (what
    staleness is checked against); ``document_of``: a chunk's document (default: its source file;
    ``ragqa eval`` keeps many contexts in one record)."""
    document_of = document_of or (lambda d: d.metadata.get("source", ""))
    from ragqa.cancel import check_cancelled
    from ragqa.embeddings import embed_queries
    from ragqa.retrieval import chunks_by_id
    from ragqa.words import tokenize

    t0 = time.perf_counter()
    rnd = random.Random(seed)
    sample: list[Document] = []  # reservoir sample: one pass, the KB's chunks never all in memory
    total = 0
    documents: set[Any] = set()
    for doc in index.kb.iter_chunks(index.file_ids):
        total += 1
        documents.add(document_of(doc))
        if len(sample) < n + 1:
            sample.append(doc)
        elif (j := rnd.randrange(total)) < n + 1:
            sample[j] = doc
    if total < MIN_CHUNKS:
        return None
    mode = "document" if len(documents) >= MIN_DOCUMENTS else "passage"
    queries: list[tuple[str, Document]] = []
    for i, doc in enumerate(sample[:n]):
        other = sample[(i + 1) % len(sample)].page_content
        q = pseudo_query(doc.page_content, other, rnd)
        if q is None:  # no sentences (a table, code): a stretch of the text
            pieces = _pieces(doc.page_content)
            if len(pieces) < 4:
                continue
            a = rnd.randint(0, max(0, len(pieces) - 12))
            q = _join(pieces[a:a + 12])
        queries.append((q, doc))
    if len(queries) < MIN_CHUNKS:
        return None
    texts = [q for q, _ in queries]
    query_vectors: list[list[float]] = []
    for at in range(0, len(texts), CALIBRATION_BATCH):  # a question whose client left stops between batches
        check_cancelled()
        query_vectors += embed_queries(embeddings, texts[at:at + CALIBRATION_BATCH])
    vectors = index.search_batch_ids(query_vectors, DEPTH)
    check_cancelled()
    keywords = [index.bm25_search(q, DEPTH) for q in texts]
    ids = {i for hits in vectors + keywords for i, _ in hits}
    found = chunks_by_id(index, sorted(ids))
    words: dict[int, set[str]] = {}

    def words_of(cid: int) -> set[str]:
        if cid not in words:
            words[cid] = set(tokenize(found[cid].page_content)) if cid in found else set()
        return words[cid]

    def outside(doc: Document, hits: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
        src, start = document_of(doc), int(doc.metadata.get("start", 0) or 0)

        def own(cid: int) -> bool:
            other = found.get(cid)
            if other is None or document_of(other) != src:
                return False
            if mode == "document":
                return True
            return abs(int(other.metadata.get("start", 0) or 0) - start) <= NEIGHBOURHOOD * chunk_size
        return [(i, x) for i, x in hits if not own(i)][:1]

    answerable, other = [], []
    for (q, doc), vec, kw in zip(queries, vectors, keywords):
        answerable.append(signals_of(q, vec, kw, words_of))
        other.append(signals_of(q, outside(doc, vec), outside(doc, kw), words_of))
    (mc, sc), (mv, sv) = _mean_sd([s.cosine for s in other]), _mean_sd([s.coverage for s in other])
    cal = Calibration((mc, mv), (sc, sv), [], total, records or len(documents), mode, embedding,
                      seconds=round(time.perf_counter() - t0, 2))
    cal.scores = sorted(round(cal.score(s), 4) for s in answerable)
    cal.negatives = sorted(round(cal.score(s), 4) for s in other)
    return cal


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    from ragqa.fusion import _spread

    return _spread(xs) if xs else (0.0, 0.0)


def collection_key(file_ids: Sequence[int] | None) -> str:
    """The calibration's name in its KB: the whole KB, or (``ask PATH...``, ``--doc``) these files."""
    if file_ids is None:
        return "abstain"
    digest = hashlib.sha256(",".join(map(str, sorted(file_ids))).encode()).hexdigest()[:16]
    return f"abstain:{digest}"
