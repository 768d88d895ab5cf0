"""Evaluation metrics on hand-made cases, and SQuAD loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.evaluation import contains_answer, exact_match, f1_score, load_squad, retrieval_metrics


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
