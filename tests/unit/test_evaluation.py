"""Evaluation metrics on hand-made cases, SQuAD and query -> document loading, --compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragqa.errors import ConfigError, InputError
from ragqa.evaluation import (
    contains_answer,
    exact_match,
    f1_score,
    load_eval_data,
    load_pairs,
    load_squad,
    parse_compare,
    retrieval_metrics,
)


def test_known_ranking_gives_known_recall_and_mrr() -> None:
    hits = [
        [True, False, False],   # rank 1
        [False, False, True],   # rank 3
        [False, False, False],  # miss
        [False, True, False],   # rank 2
    ]
    m = retrieval_metrics(hits, ks=(1, 2, 3))
    assert m["recall@1"] == 0.25
    assert m["recall@2"] == 0.5
    assert m["recall@3"] == 0.75
    assert m["mrr"] == pytest.approx(round((1 + 1 / 3 + 0 + 1 / 2) / 4, 4))


def test_english_em_and_f1_use_squad_normalisation() -> None:
    assert exact_match("The Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower"]) == 0.0
    assert f1_score("Eiffel", ["Eiffel tower"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("nothing alike", ["Eiffel tower"]) == 0.0
    assert f1_score("Paris", ["London", "Paris"]) == 1.0  # best over gold answers


def test_chinese_em_and_f1_are_character_level() -> None:
    assert exact_match("成都。", ["成都"]) == 1.0
    # 2 shared characters: precision 2/5, recall 1 -> F1 4/7
    assert f1_score("四川省成都", ["成都"]) == pytest.approx(4 / 7)
    assert f1_score("北京", ["成都"]) == 0.0
    assert contains_answer("答案是成都市。", ["成都"]) == 1.0
    assert contains_answer("答案是北京", ["成都"]) == 0.0


def write_squad(path: Path) -> Path:
    data = {"data": [{"paragraphs": [
        {"context": "甲乙丙。", "qas": [{"id": "1", "question": "甲？", "answers": [{"text": "乙", "answer_start": 1}]},
                                      {"id": "2", "question": "没有答案？", "answers": []}]},
        {"context": "丁戊。", "qas": [{"id": "3", "question": "丁？", "answers": [{"text": "戊", "answer_start": 1}]}]},
        {"context": "甲乙丙。", "qas": [{"id": "4", "question": "丙？", "answers": [{"text": "丙", "answer_start": 2}]}]},
    ]}]}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_load_squad_dedupes_contexts_and_skips_unanswerable(tmp_path: Path) -> None:
    contexts, items = load_squad(write_squad(tmp_path / "d.json"))
    assert contexts == ["甲乙丙。", "丁戊。"]
    assert [(i.qid, i.context_id) for i in items] == [("1", 0), ("3", 1), ("4", 0)]
    contexts, items = load_squad(tmp_path / "d.json", max_contexts=1)
    assert contexts == ["甲乙丙。"] and [i.qid for i in items] == ["1", "4"]


def test_load_squad_rejects_other_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(InputError, match="SQuAD"):
        load_squad(bad)
    with pytest.raises(InputError, match="no such file"):
        load_squad(tmp_path / "missing.json")


def test_evaluate_scores_retrieval_and_answers_through_the_pipeline(make_pipeline, fake_backend_cls, tmp_path: Path) -> None:
    from ragqa.evaluation import evaluate

    data = {"data": [{"paragraphs": [
        {"context": "熊猫生活在四川，熊猫喜欢吃竹子。", "qas": [{"id": "a", "question": "熊猫喜欢吃什么？", "answers": [{"text": "竹子"}]}]},
        {"context": "老虎生活在东北，老虎喜欢吃肉。", "qas": [{"id": "b", "question": "老虎生活在哪里？", "answers": [{"text": "东北"}]}]},
    ]}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    backend = fake_backend_cls(["竹子", "西北"])  # right for the first question, wrong for the second
    pipeline = make_pipeline(backend=backend, retriever="bm25", k=1)
    report = evaluate(path, pipeline, answers=2, progress=False)
    assert report["questions"] == 2 and report["contexts"] == 2
    assert report["recall@1"] == 1.0  # each question shares its words with its own context
    assert report["answers"]["n"] == 2
    assert report["answers"]["em"] == 0.5 and report["answers"]["contains_answer"] == 0.5
    assert report["answers"]["f1"] == 0.75  # 竹子: 1.0; 西北 vs 东北: one of two characters
    assert "熊猫喜欢吃竹子" in backend.calls[0]["prompt"]  # the model read the retrieved context


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_pairs_reads_jsonl_dedupes_documents_and_keeps_distractors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"query": "熊猫 竹子", "document": "熊猫吃竹子。", "answers": ["竹子"]},
        {"document": "老虎吃肉。"},  # a distractor: no query is about it
        {"id": "q3", "query": "熊猫 四川", "document": "熊猫吃竹子。"},
        {"query": "渡轮", "document": "渡轮每天三班。"},
    ])
    contexts, items = load_pairs(path)
    assert contexts == ["熊猫吃竹子。", "老虎吃肉。", "渡轮每天三班。"]
    assert [(i.qid, i.question, i.context_id, i.answers) for i in items] == [
        ("0", "熊猫 竹子", 0, ["竹子"]), ("q3", "熊猫 四川", 0, []), ("2", "渡轮", 2, [])]
    contexts, items = load_pairs(path, max_contexts=2)
    assert len(contexts) == 2 and [i.question for i in items] == ["熊猫 竹子", "熊猫 四川"]


def test_load_pairs_reads_tsv_with_or_without_a_header(tmp_path: Path) -> None:
    tsv = tmp_path / "s.tsv"
    tsv.write_text("query\tdocument\n熊猫 竹子\t熊猫吃竹子。\n\t老虎吃肉。\n", encoding="utf-8")
    contexts, items = load_eval_data(tsv)
    assert contexts == ["熊猫吃竹子。", "老虎吃肉。"] and [i.question for i in items] == ["熊猫 竹子"]


def test_load_pairs_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "document": "b"}\n{"query": "a"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2: expected a non-empty \"document\""):
        load_pairs(bad)
    bad.write_text('{"query": "a", "document": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        load_pairs(bad)
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1: 3 tab-separated fields, expected 2"):
        load_pairs(tsv)
    empty = write_jsonl(tmp_path / "docs.jsonl", [{"document": "只有文档。"}])
    with pytest.raises(InputError, match="no queries"):
        load_pairs(empty)


def test_compare_names_retrievers_and_fusions() -> None:
    assert parse_compare("vector, bm25 ,hybrid", "zscore") == [
        ("vector", "vector", None), ("bm25", "bm25", None), ("hybrid", "hybrid", "zscore:w=0.5:lift=1:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5")]
    assert parse_compare("hybrid:rrf,zscore:w=0.7:lift=0", "zscore") == [
        ("hybrid:rrf", "hybrid", "rrf:k=60"), ("zscore:w=0.7:lift=0", "hybrid", "zscore:w=0.7:lift=0:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5")]
    with pytest.raises(ConfigError, match="'dense' is neither a retriever"):
        parse_compare("vector,dense", "zscore")
    with pytest.raises(ConfigError, match="needs retrievers"):
        parse_compare(" , ", "zscore")


class PreferTiger:
    """A stand-in cross-encoder: a text about tigers scores 1, anything else 0."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls += 1
        return [float("老虎" in t) for t in texts]


SEARCH_SET = [
    {"query": "熊猫 竹子", "document": "熊猫生活在四川，熊猫喜欢吃竹子。", "answers": ["竹子"]},
    {"query": "老虎 东北", "document": "老虎生活在东北，老虎喜欢吃肉。"},
    {"document": "渡轮每天三班，从码头出发。"},
]


def test_compare_measures_several_retrievers_from_one_index_and_one_search(
    make_pipeline, counting_embeddings_cls, tmp_path: Path,
) -> None:
    from ragqa.evaluation import evaluate

    path = write_jsonl(tmp_path / "s.jsonl", SEARCH_SET)
    embeddings = counting_embeddings_cls()
    pipeline = make_pipeline(embeddings=embeddings, k=1)
    report = evaluate(path, pipeline, progress=False, compare="vector,bm25,hybrid,rrf")
    rows = report["compare"]
    assert list(rows) == ["vector", "bm25", "hybrid", "rrf"]
    assert rows["hybrid"]["fusion"].startswith("zscore:") and rows["rrf"]["fusion"] == "rrf:k=60"
    assert rows["bm25"]["recall@1"] == 1.0  # both queries share words with their documents only
    assert rows["bm25"]["answer_in_context@1"] == 1.0  # over the one query with answers
    assert report["questions"] == 2 and report["contexts"] == 3
    assert embeddings.query_calls == 2  # each query embedded once for all four rows
    indexed = embeddings.documents_embedded
    report = evaluate(path, pipeline, progress=False, compare="vector,hybrid")
    assert embeddings.documents_embedded == indexed  # the second run embedded no document: the index is cached


def test_a_reranker_rescores_each_rankings_candidates_in_eval(make_pipeline, tmp_path: Path) -> None:
    from ragqa.evaluation import evaluate

    path = write_jsonl(tmp_path / "s.jsonl", SEARCH_SET)
    pipeline = make_pipeline(k=1)
    pipeline._reranker = PreferTiger()
    report = evaluate(path, pipeline, progress=False, compare="bm25,hybrid")
    # hybrid's candidates hold every document, and the fake puts the tiger one first: right for
    # one query of two; BM25 found only the panda document for the panda query, so it stays right
    assert report["compare"]["hybrid"]["recall@1"] == 0.5
    assert report["compare"]["bm25"]["recall@1"] == 1.0
    assert pipeline._reranker.calls == 4  # each query, each compared retriever


def test_compare_with_answers_is_refused(make_pipeline, tmp_path: Path) -> None:
    from ragqa.evaluation import evaluate

    path = write_jsonl(tmp_path / "s.jsonl", SEARCH_SET)
    with pytest.raises(ConfigError, match="drop --compare"):
        evaluate(path, make_pipeline(), progress=False, compare="vector,bm25", answers=2)
    no_answers = write_jsonl(tmp_path / "n.jsonl", SEARCH_SET[1:])
    with pytest.raises(InputError, match="--answers needs gold answers"):
        evaluate(no_answers, make_pipeline(), progress=False, answers=2)


def test_scoped_eval_searches_each_question_only_in_its_own_article(make_pipeline, tmp_path: Path) -> None:
    """--scoped: article 0's question shares its words with article 1's context, so unscoped BM25
    ranks that one first; scoped to its own article (a record of its own, filtered inside the
    engine) it finds its own context."""
    from ragqa.evaluation import evaluate

    data = {"data": [
        {"title": "a", "paragraphs": [
            {"context": "熊猫生活在四川。", "qas": [{"id": "1", "question": "竹子 竹子 熊猫", "answers": [{"text": "四川"}]}]},
            {"context": "熊猫的寿命很长。", "qas": []}]},
        {"title": "b", "paragraphs": [
            {"context": "竹子长得很快，竹子很高。", "qas": [{"id": "2", "question": "竹子 高", "answers": [{"text": "很高"}]}]}]},
    ]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    pipeline = make_pipeline(k=1, retriever="bm25")
    plain = evaluate(path, pipeline, progress=False)
    scoped = evaluate(path, pipeline, progress=False, scoped=True)
    assert plain["recall@1"] == 0.5 and scoped["recall@1"] == 1.0
    assert scoped["settings"]["scoped"] is True and plain["settings"]["scoped"] is False
    assert (scoped["contexts"], scoped["chunks"]) == (plain["contexts"], plain["chunks"]) == (3, 3)
