"""Fusion: how hybrid retrieval turns a vector list and a BM25 list into one ranking.

A fusion function sees the query and the two hit lists, [(chunk id, score)] best first (cosines
and BM25 scores), and may ask for the words of a chunk; nothing else of the engine, so it works
over every engine. Each is registered by name with its parameters and their defaults; a spec
names one, with parameters after colons: "zscore:w=0.6:lift=0". ``DEFAULT_FUSION`` is the one
default (``Settings.fusion`` and the retrievers read it from here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragqa.errors import ConfigError
from ragqa.words import matched_mass

RRF_K = 60
# chosen by `ragqa eval --compare` on MRC, keyword and search-style sets (README "Retrieval")
DEFAULT_FUSION = "zscore"


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
    'zscore:w=0.6:lift=1:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5'
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


def _spread(scores: Sequence[float]) -> tuple[float, float]:
    mean = sum(scores) / len(scores)
    return mean, (sum((x - mean) ** 2 for x in scores) / len(scores)) ** 0.5


def _zscores(scores: dict[int, float]) -> dict[int, float]:
    """Each score as standard deviations above the mean (0 when all are equal)."""
    if not scores:
        return {}
    mean, sd = _spread(list(scores.values()))
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



def standout(scores: Sequence[float]) -> float:
    """How far a list's best score stands above the rest: its z-score within the list (0 for
    fewer than three scores or all equal).

    >>> round(standout([0.95, 0.80, 0.79, 0.78]), 2), round(standout([0.81, 0.80, 0.79, 0.78]), 2)
    (1.72, 1.34)
    """
    if len(scores) < 3:
        return 0.0
    mean, sd = _spread(scores)
    return (scores[0] - mean) / sd if sd > 0 else 0.0


def lead(scores: Sequence[float]) -> float:
    """How far a list's best score is ahead of its second, in standard deviations of the list
    (0 for fewer than three scores or all equal).

    >>> round(lead([10.0, 9.9, 5.0, 4.0]), 2), round(lead([10.0, 6.0, 5.0, 4.0]), 2)
    (0.04, 1.76)
    """
    if len(scores) < 3:
        return 0.0
    _, sd = _spread(scores)
    return (scores[0] - scores[1]) / sd if sd > 0 else 0.0


@register_fusion(
    "zscore", "w * z-score of the cosine + (1 - w) * z-score of BM25, w raised by lift * (below - share) "
    "when BM25's best chunk holds less than `below` of the query's idf mass, lowered by up to `drop` "
    "when that chunk matches more than `mass` of idf (long queries), and moved by up to `stand` by "
    "tanh(vector top's standout - usual - gap * ln(BM25 top's lead + 0.05))",
    w=(0.5, 0, 1), lift=(1.0, 0, 10), below=(0.5, 0, 1), drop=(0.4, 0, 1), mass=(80.0, 1, 10000),
    stand=(0.2, 0, 0.5), usual=(2.5, -10, 10), gap=(0.5, 0, 5),
)
def zscore_fusion(query: str, vector: Hits, keyword: Hits, *, words: ChunkWords | None = None,
                  w: float = 0.5, lift: float = 1.0, below: float = 0.5, drop: float = 0.4,
                  mass: float = 80.0, stand: float = 0.2, usual: float = 2.5, gap: float = 0.5,
                  ) -> list[tuple[int, float]]:
    """Convex combination of per-query z-scores (how far each chunk stands out among the
    candidates), with the vector weight adapted to the query. The score returned is the fused
    z-score through the logistic function: in (0, 1), 0.5 for an average candidate.

    Unlike rank fusion, a chunk far ahead in one list keeps its lead over a chunk that is only
    narrowly first in the other. Here the vectors clearly prefer 1 and BM25 barely prefers 2
    (10 vs 9.8); rank fusion puts 2 first, z-scores put 1 first:

    >>> vector, keyword = [(1, 0.95), (2, 0.80), (3, 0.79), (4, 0.78)], [(2, 10.0), (3, 9.9), (1, 9.8), (4, 1.0)]
    >>> [i for i, _ in zscore_fusion("q", vector, keyword)], [i for i, _ in rrf_fusion("q", vector, keyword)]
    ([1, 2, 3, 4], [2, 1, 3, 4])

    The weight moves with three signals of the query and its two lists:

    - BM25 is right far more often when its best chunk holds most of the query's informative words
      (MRC questions that copy the passage) than when it matched only part of them (a query worded
      unlike the text), while the vectors degrade less; so when ``words`` is given and BM25's best
      chunk holds a share of the query's idf mass under ``below``, the vector weight rises by
      ``lift * (below - share)`` (to at most 0.95). ``lift=0`` keeps ``w`` fixed.
    - A long query (a paragraph used as the query: a summary looking for its source) is the other
      way round: e5 embeds it coarsely while BM25 has many words to match. When BM25's best chunk
      matches more idf mass than ``mass`` (about ten informative words; a search query has a third
      of that), the vector weight falls linearly by up to ``drop`` at twice ``mass``.
    - Which list to believe shows in the lists themselves. Where the two disagree on the top
      chunk, the vectors are mostly right when their best hit stands clear of their other
      candidates and BM25's best is barely ahead of its runner-up (questions typed into a search
      box, over passages that all repeat the query's common words), and BM25 is mostly right the
      other way round. The weight moves by ``stand * tanh(standout - usual - gap * ln(lead +
      0.05))``: ``standout`` is the vector top hit's z-score within the vector list, ``lead`` BM25's
      first-to-second gap in standard deviations of the BM25 list. Chosen on the even-numbered
      queries of every dev set and checked on the odd ones (bench/fusion_tune.py; README "Fusion
      across query styles"); ``stand=0`` turns it off.
    """
    if (lift > 0 or drop > 0) and keyword and words is not None:
        matched, total = matched_mass(query, words(keyword[0][0]))
        share = matched / total if total else 0.0
        w = min(w + lift * max(0.0, below - share), max(w, 0.95))
        w = max(0.05, w - drop * min(1.0, max(0.0, (matched - mass) / mass)))
    if stand > 0 and len(vector) >= 3 and len(keyword) >= 3:
        signal = standout([x for _, x in vector]) - usual - gap * math.log(lead([x for _, x in keyword]) + 0.05)
        w = min(0.95, max(0.05, w + stand * math.tanh(signal)))
    # the score a user sees: the fused z-score squashed into (0, 1), 0.5 = an average candidate
    return [(i, 1.0 / (1.0 + math.exp(-x))) for i, x in _convex(vector, keyword, w, _zscores)]


@register_fusion("minmax", "w * min-max scaled cosine + (1 - w) * min-max scaled BM25, per query", w=(0.5, 0, 1))
def minmax_fusion(query: str, vector: Hits, keyword: Hits, *, words: ChunkWords | None = None,
                  w: float = 0.5) -> list[tuple[int, float]]:
    """Convex combination of scores scaled to [0, 1] among the candidates."""
    return _convex(vector, keyword, w, _minmax)
