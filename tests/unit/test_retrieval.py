"""BM25 with jieba, the fusion functions, the retrievers over a ChunkIndex, and the reranker hook (fake)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document

from ragqa.errors import ConfigError
from ragqa.fusion import DEFAULT_FUSION, FUSIONS, fuse_rankings, lead, make_fusion, standout
from ragqa.retrieval import BM25Retriever, HybridRetriever, RerankingRetriever, make_retriever
from ragqa.words import tokenize
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


# a vector list that clearly prefers chunk 1, and a BM25 list that only narrowly prefers chunk 2
CLEAR_VECTOR = [(1, 0.95), (2, 0.80), (3, 0.79), (4, 0.78)]
NARROW_BM25 = [(2, 10.0), (3, 9.9), (1, 9.8), (4, 1.0)]


def test_zscore_fusion_keeps_a_clear_lead_that_rank_fusion_throws_away() -> None:
    # rank fusion sees 1st + 3rd vs 2nd + 1st and picks 2; z-scores see 1 far ahead in one list
    # and all but level in the other
    assert make_fusion("rrf")("q", CLEAR_VECTOR, NARROW_BM25)[0][0] == 2
    assert make_fusion("zscore")("q", CLEAR_VECTOR, NARROW_BM25)[0][0] == 1
    assert make_fusion("minmax")("q", CLEAR_VECTOR, NARROW_BM25)[0][0] == 1


def test_fusion_weight_moves_between_the_two_lists() -> None:
    vector = [(1, 0.9), (2, 0.85), (3, 0.8)]
    keyword = [(3, 12.0), (2, 6.0), (1, 1.0)]
    assert [i for i, _ in make_fusion("zscore:w=1")("q", vector, keyword)] == [1, 2, 3]
    assert [i for i, _ in make_fusion("zscore:w=0")("q", vector, keyword)] == [3, 2, 1]


def test_a_chunk_bm25_could_not_match_scores_zero_not_the_lists_last_score() -> None:
    # BM25 matched only chunk 7 (its list is shorter than the vector list): chunk 8, which shares no
    # word with the query, must not get chunk 7's BM25 score, so chunk 7 wins on words
    vector = [(8, 0.82), (7, 0.80), (9, 0.50)]
    fused = make_fusion("zscore")("q", vector, [(7, 3.0)])
    assert [i for i, _ in fused] == [7, 8, 9]
    assert fused[0][1] > fused[1][1] + 0.1  # not a tie broken by id
    assert all(0 < score < 1 for _, score in fused)
    # an empty BM25 list leaves the vector order as it is
    assert [i for i, _ in make_fusion("zscore")("q", vector, [])] == [8, 7, 9]


def test_fusion_specs_parse_and_bad_ones_say_what_is_valid() -> None:
    assert make_fusion(None).name == DEFAULT_FUSION == "zscore"
    assert make_fusion("zscore").spec == "zscore:w=0.5:lift=1:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5"
    assert make_fusion(" ZScore:w=0.7:lift=0 ").params == {
        "w": 0.7, "lift": 0.0, "below": 0.5, "drop": 0.4, "mass": 80.0, "stand": 0.2, "usual": 2.5, "gap": 0.5}
    assert make_fusion("rrf:k=10").params == {"k": 10.0}
    assert set(FUSIONS) >= {"rrf", "zscore", "minmax"}
    with pytest.raises(ConfigError, match="unknown fusion 'borda'.*rrf.*zscore.*minmax"):
        make_fusion("borda")
    with pytest.raises(ConfigError, match="'alpha=0.3' is not a parameter; its parameters: w=, lift=, below=, drop=, mass=, stand=, usual=, gap="):
        make_fusion("zscore:alpha=0.3")
    with pytest.raises(ConfigError, match="w must be a number from 0 to 1"):
        make_fusion("zscore:w=1.5")
    with pytest.raises(ConfigError, match="w must be a number"):
        make_fusion("zscore:w=high")


def test_zscore_leans_on_the_vectors_when_bm25s_best_chunk_misses_most_of_the_query() -> None:
    # the vectors mildly prefer chunk 1; BM25 clearly prefers chunk 2
    vector = [(1, 0.90), (2, 0.86), (3, 0.85), (4, 0.84)]
    keyword = [(2, 9.0), (3, 3.0), (4, 2.0), (1, 1.0)]
    query = "熊猫的尾巴有多长"
    holds_all = {2: set(tokenize(query))}
    holds_little = {2: {"有"}}  # only a common word: most of the query's idf mass is missing
    fusion = make_fusion("zscore")
    assert fusion(query, vector, keyword)[0][0] == 2  # no words given: fixed w = 0.5
    assert fusion(query, vector, keyword, words=holds_all.__getitem__)[0][0] == 2
    assert fusion(query, vector, keyword, words=holds_little.__getitem__)[0][0] == 1
    fixed = make_fusion("zscore:lift=0")
    assert fixed(query, vector, keyword, words=holds_little.__getitem__)[0][0] == 2


def test_zscore_leans_on_bm25_when_a_long_query_matches_many_words() -> None:
    # a paragraph as the query (a summary looking for its source): the vectors clearly prefer
    # chunk 1, BM25 prefers chunk 2, whose words cover the whole long query
    vector = [(1, 0.92), (2, 0.84), (3, 0.83), (4, 0.82)]
    keyword = [(2, 30.0), (1, 26.0), (3, 10.0), (4, 9.0)]
    summary = ("会议讨论了新产品的定价策略，市场部认为应该降低价格以扩大份额，财务部担心利润下降，"
               "最后决定先在华东地区试点三个月，再根据销售数据调整全国的价格方案。")
    short = "产品定价"
    fusion = make_fusion("zscore")
    holds = {2: set(tokenize(summary))}
    assert fusion(summary, vector, keyword, words=holds.__getitem__)[0][0] == 2
    assert make_fusion("zscore:drop=0")(summary, vector, keyword, words=holds.__getitem__)[0][0] == 1
    # a short query matching all its words is not "long": the weights stay even, the vectors' lead wins
    assert fusion(short, vector, keyword, words={2: set(tokenize(short))}.__getitem__)[0][0] == 1


def _disagreeing(vector_top: float, bm25_top: float, bm25_second: float) -> tuple[list, list]:
    """Ten candidates; the vectors' best is chunk 1, BM25's best is chunk 2 (chunk 1 is its sixth)."""
    vector = [(1, vector_top), (2, 0.87)] + [(i, 0.86 - 0.002 * i) for i in range(3, 11)]
    keyword = sorted([(2, bm25_top), (3, bm25_second), (1, 9.0)] + [(i, 8.0 - 0.3 * i) for i in range(4, 11)],
                     key=lambda hit: -hit[1])
    return vector, keyword


def test_zscore_follows_the_list_whose_best_hit_stands_clear() -> None:
    fusion, plain = make_fusion("zscore"), make_fusion("zscore:stand=0")
    # a web-search style query: BM25's best is level with its runner-up (passages that all repeat
    # the query's common words) -> the vectors' choice, which even weights would not make
    vector, keyword = _disagreeing(vector_top=0.88, bm25_top=11.0, bm25_second=10.5)
    assert lead([x for _, x in keyword]) < 0.3
    assert (fusion("q", vector, keyword)[0][0], plain("q", vector, keyword)[0][0]) == (1, 2)
    # BM25's best far ahead of its runner-up -> BM25's choice, where even weights follow the vectors
    vector, keyword = _disagreeing(vector_top=0.90, bm25_top=13.0, bm25_second=9.5)
    assert lead([x for _, x in keyword]) > 1.4
    assert (fusion("q", vector, keyword)[0][0], plain("q", vector, keyword)[0][0]) == (2, 1)


def test_the_standout_signal_needs_real_lists() -> None:
    # fewer than three hits a side say nothing of a lead: the fusion is the plain one
    vector, keyword = [(1, 0.9), (2, 0.8)], [(2, 5.0), (1, 4.0)]
    assert make_fusion("zscore")("q", vector, keyword) == make_fusion("zscore:stand=0")("q", vector, keyword)
    assert standout([0.5, 0.5, 0.5]) == lead([3.0, 3.0, 3.0]) == 0.0


def test_rrf_fusion_is_the_old_hybrid_ranking() -> None:
    vector, keyword = [(1, 0.9), (2, 0.8), (3, 0.7)], [(3, 5.0), (2, 4.0), (1, 3.0)]
    assert make_fusion("rrf")("q", vector, keyword) == fuse_rankings([[1, 2, 3], [3, 2, 1]])


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


def test_reranker_rescores_the_fused_candidates_of_hybrid() -> None:
    index = make_index()
    reranker = SeenTexts()
    retriever = make_retriever("hybrid", index, AxisEmbeddings(2), k=1, reranker=reranker, candidates=4,
                               fusion="rrf")
    docs = retriever.invoke("渔村小学的老师")
    assert len(reranker.seen) == 1 and len(reranker.seen[0]) == 4  # every fused candidate, once
    assert docs[0].page_content == CHUNKS[0]  # the fake prefers the tea chunk, whatever the fusion said
    assert "retrieval_score" in docs[0].metadata


class SeenTexts(FakeReranker):
    """FakeReranker that also records the texts it was asked to score."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.seen.append(list(texts))
        return super().score(query, texts)


def test_hybrid_uses_the_fusion_it_is_given() -> None:
    index = make_index()
    # chunk 1 (the school) matches the words; the vector side points at chunk 2 (the bridge)
    for fusion in ("rrf", "zscore", "minmax:w=0.3"):
        docs = make_retriever("hybrid", index, AxisEmbeddings(2), k=1, fusion=fusion).invoke("渔村小学的老师")
        assert docs[0].page_content in (CHUNKS[1], CHUNKS[2])
    assert make_retriever("hybrid", index, AxisEmbeddings(2), k=1, fusion="zscore:w=1").invoke(
        "渔村小学的老师")[0].page_content == CHUNKS[2]
    assert make_retriever("hybrid", index, AxisEmbeddings(2), k=1, fusion="zscore:w=0").invoke(
        "渔村小学的老师")[0].page_content == CHUNKS[1]


def test_an_unknown_fusion_fails_before_any_search() -> None:
    class NoSearch:
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"searched: {name}")

    with pytest.raises(ConfigError, match="unknown fusion"):
        make_retriever("hybrid", NoSearch(), AxisEmbeddings(0), 4, fusion="nope")


def test_unknown_retriever_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="vector, bm25, hybrid"):
        make_retriever("dense", make_index(), None, 4)


def test_fusion_setting_is_checked_when_settings_are_built() -> None:
    from ragqa import config

    assert config.DEFAULT_FUSION == DEFAULT_FUSION
    assert config.load_settings().fusion == DEFAULT_FUSION
    assert config.load_settings(fusion="rrf").fusion == "rrf:k=60"
    with pytest.raises(ConfigError, match="invalid settings: fusion 'zscore': w must be a number from 0 to 1"):
        config.load_settings(fusion="zscore:w=2")
    with pytest.raises(ConfigError, match="unknown fusion 'rank'"):
        config.load_settings(fusion="rank")


def test_the_pipeline_hands_its_fusion_setting_to_the_hybrid_retriever(make_pipeline) -> None:
    retriever = make_pipeline(fusion="zscore:w=0.7").retriever(make_index())
    assert isinstance(retriever, HybridRetriever)
    assert retriever.fusion == "zscore:w=0.7:lift=1:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5"
    assert make_pipeline().retriever(make_index()).fusion == make_fusion(DEFAULT_FUSION).spec
