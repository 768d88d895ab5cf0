"""Abstention (ragqa.abstain): the decision, its calibration, and the pipeline path that skips the model.

Unit tests: a fake embedding model (random vectors per text, so the cosine carries no meaning and
the BM25 coverage decides) and a fake LLM backend that records every call.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ragqa.abstain import (
    MESSAGES, MIN_CHUNKS, Calibration, Signals, _pieces, calibrate, collection_key, message, pseudo_query,
)

TOPICS = [
    ("Quillby", "herons", "smoked eel pie"), ("Marrow", "salt", "juniper bread"), ("Tessel", "copper", "plum wine"),
    ("Brindle", "wool", "barley soup"), ("Ostrava", "glass", "onion tart"), ("Fenwick", "clocks", "pear cider"),
    ("Galloway", "rope", "oat cakes"), ("Harrow", "bells", "mint tea"), ("Iverly", "paper", "walnut cake"),
    ("Jesmond", "boats", "crab stew"), ("Kelso", "lace", "honey buns"), ("Lindow", "ink", "cherry pie"),
]


def _town_file(tmp_path: Path, i: int, town: str, craft: str, dish: str) -> Path:
    rnd = random.Random(i)
    year = 1700 + rnd.randrange(250)
    people = 1000 + rnd.randrange(9000)
    text = (f"# {town}\n\n{town} is a small town known for its {craft}. It was founded in {year} by "
            f"traders.\n\nAbout {people} people live in {town} today. Most of them make {craft}.\n\n"
            f"The local dish of {town} is {dish}, served at the autumn fair.\n\nA ferry leaves {town} "
            f"every {10 + i} minutes.\n")
    path = tmp_path / "towns" / f"{town.lower()}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, "utf-8")
    return path


@pytest.fixture
def towns(tmp_path: Path) -> Path:
    for i, (town, craft, dish) in enumerate(TOPICS):
        _town_file(tmp_path, i, town, craft, dish)
    return tmp_path / "towns"


def _calibration(negatives: list[float]) -> Calibration:
    return Calibration((0.5, 0.3), (0.1, 0.2), [], 100, 10, "document", negatives=sorted(negatives))


def test_threshold_is_the_strictness_quantile_of_the_not_answerable_scores() -> None:
    cal = _calibration([float(x) for x in range(101)])  # 0..100
    assert cal.threshold(0.5) == pytest.approx(50.0)
    assert cal.threshold(0.9) == pytest.approx(90.0)
    assert cal.threshold(0.0) == 0.0 and cal.threshold(1.0) == 100.0


def test_decision_standardises_both_signals_and_weighs_coverage_more() -> None:
    cal = _calibration([-1.0, 0.0, 1.0])
    # at the not-answerable mean both z-scores are 0
    at_mean = cal.decide(Signals(0.5, 0.3), 0.5)
    assert at_mean["score"] == pytest.approx(0.0) and at_mean["answerable"]  # >= the median (0)
    # one spread below on the cosine, one above on coverage: coverage counts twice
    mixed = cal.decide(Signals(0.4, 0.5), 0.5)
    assert mixed["score"] == pytest.approx(-1.0 + 2.0) and mixed["answerable"]
    far = cal.decide(Signals(0.3, 0.1), 0.5)
    assert not far["answerable"] and far["threshold"] == 0.0
    # a stricter setting abstains on what a lenient one keeps
    assert not cal.decide(Signals(0.5, 0.35), 0.99)["answerable"]
    assert cal.decide(Signals(0.5, 0.35), 0.2)["answerable"]


def test_calibration_round_trips_and_goes_stale_when_the_collection_changes() -> None:
    cal = _calibration([0.0, 1.0])
    cal.embedding = "model-a"
    back = Calibration.from_json(cal.to_json())
    assert back == cal
    assert not back.stale(105, 10, "model-a")  # 5 % more chunks: still good
    assert back.stale(120, 10, "model-a")  # a fifth more chunks
    assert back.stale(100, 12, "model-a")  # more documents
    assert back.stale(100, 10, "model-b")  # another embedding model
    assert Calibration.from_json("{not json") is None and Calibration.from_json(None) is None
    assert Calibration.from_json('{"mean": [0, 0]}') is None  # an older or damaged record: calibrate again


def test_pseudo_query_is_a_stretch_of_one_sentence_with_words_dropped_and_replaced() -> None:
    text = "熊猫住在四川的山里。它们每天要吃很多竹子，也会睡很久。Pandas are shy animals that live alone."
    other = "Copper boats leave the harbour at noon"
    for seed in range(20):
        q = pseudo_query(text, other, random.Random(seed))
        assert q
        latin = [w for w in q.split() if w.isascii()]
        assert all(w in text or w in other for w in latin)  # words of the sentence, or of the other chunk
        assert all(ch in text for ch in q if "\u4e00" <= ch <= "\u9fff")
        assert len(_pieces(q)) < len(_pieces(text))
        assert not any(ch in q for ch in "。，.")  # no punctuation
    assert pseudo_query("| a | b |", other, random.Random(0)) is None  # no sentence of four words
    assert pseudo_query(text, other, random.Random(3)) == pseudo_query(text, other, random.Random(3))


def test_message_follows_the_question_language() -> None:
    assert message("熊猫吃什么？") == MESSAGES["zh"] == "资料中没有找到与问题相关的内容。"
    assert message("What do pandas eat?") == MESSAGES["en"] == "The documents do not say."


def test_collection_key_names_the_whole_kb_or_a_set_of_files() -> None:
    assert collection_key(None) == "abstain"
    assert collection_key([3, 1, 2]) == collection_key([1, 2, 3]) != collection_key([1, 2])


def test_a_question_the_documents_do_not_answer_gets_the_fixed_message_without_the_model(
        make_pipeline, fake_backend_cls, towns) -> None:
    backend = fake_backend_cls(["Quillby makes herons."])
    pipeline = make_pipeline(backend=backend, chunk_size=80, chunk_overlap=0)
    pipeline.index_paths(pipeline.open_kb("towns", create=True), [towns], progress=False)

    off = pipeline.ask([], "Which volcano erupted under the glacier in spring?", kb="towns")
    assert off.answerable is False and off.answer == "The documents do not say."
    assert backend.calls == []  # the model was never asked
    assert off.sources  # the best it found are still shown
    assert off.abstain and off.abstain["score"] < off.abstain["threshold"]
    d = off.to_dict()
    assert d["answerable"] is False and "score" in d["abstain"]

    on = pipeline.ask([], "What is the local dish of Quillby, served at the autumn fair?", kb="towns")
    assert on.answerable is True and on.answer == "Quillby makes herons."
    assert len(backend.calls) == 1

    # abstain off (setting or per question) answers anyway, as before
    again = pipeline.ask([], "Which volcano erupted under the glacier in spring?", kb="towns", abstain="off")
    assert again.answerable is True and len(backend.calls) == 2


def test_calibration_is_stored_with_the_kb_and_reused(make_pipeline, towns, counting_embeddings_cls) -> None:
    pipeline = make_pipeline(chunk_size=80, chunk_overlap=0)
    kb = pipeline.open_kb("towns", create=True)
    pipeline.index_paths(kb, [towns], progress=False)
    view = kb.view(None)
    cal = pipeline.calibration(view)
    assert cal is not None and cal.mode == "document" and cal.chunks == kb.count()
    assert kb.read_note("abstain")  # stored in the KB

    fresh = make_pipeline(chunk_size=80, chunk_overlap=0, embeddings=(emb := counting_embeddings_cls()))
    again = fresh.calibration(fresh.open_kb("towns").view(None))
    assert again == cal
    assert emb.query_calls == 0  # read back, not made again


def test_too_small_a_collection_answers_with_a_note(make_pipeline, fake_backend_cls, tmp_path) -> None:
    doc = tmp_path / "one.txt"
    doc.write_text("熊猫住在四川。它们吃竹子。", "utf-8")
    backend = fake_backend_cls(["竹子。"])
    answer = make_pipeline(backend=backend).ask([doc], "火山在哪里？")
    assert answer.answerable and answer.answer == "竹子。[1]"  # cited (ragqa.citations)
    assert any(f"too few chunks to calibrate on ({MIN_CHUNKS} needed)" in n for n in answer.notes)


def test_refine_chain_never_abstains(make_pipeline, fake_backend_cls, towns) -> None:
    backend = fake_backend_cls(["An answer."])
    pipeline = make_pipeline(backend=backend, chunk_size=80, chunk_overlap=0, chain="refine")
    pipeline.index_paths(pipeline.open_kb("towns", create=True), [towns], progress=False)
    answer = pipeline.ask([], "Which volcano erupted under the glacier in spring?", kb="towns")
    assert answer.answerable and backend.calls


def test_calibrate_on_a_single_document_leaves_out_the_passage_and_its_neighbours(make_pipeline, tmp_path) -> None:
    book = tmp_path / "book.md"
    book.write_text("\n\n".join(f"Chapter {i}. The {TOPICS[i % 12][0]} mill makes {TOPICS[i % 12][1]} "
                                f"in year {1800 + i}." for i in range(60)), "utf-8")
    pipeline = make_pipeline(chunk_size=60, chunk_overlap=0)
    kb = pipeline.open_kb("book", create=True)
    pipeline.index_paths(kb, [book], progress=False)
    cal = calibrate(kb.view(None), pipeline.embeddings, chunk_size=60)
    assert cal is not None and cal.mode == "passage" and cal.documents == 1
    assert len(cal.negatives) == len(cal.scores) >= MIN_CHUNKS
    # searched with its own passage there, a pseudo-query matches better than with it left out
    assert sum(cal.scores) / len(cal.scores) > sum(cal.negatives) / len(cal.negatives)
