"""The keyword words' script fold: a Traditional question finds a Simplified text and back, the
text shown, its offsets and snippets stay as written, and a KB made under another fold has its
words made again on open (no re-embedding)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ragqa import words
from ragqa.errors import ConfigError
from ragqa.words import fold, tokenize, tokenizer_id, use_keyword_fold

SIMPLIFIED = "观景台由工程师蒋立华设计，建于一九九八年。"
TRADITIONAL = "龍山寺位於萬華區，始建於乾隆三年，是臺北最古老的寺廟之一。"


@pytest.mark.parametrize(("traditional", "simplified"), [
    ("觀景臺是誰設計的？", "观景台是谁设计的？"),
    ("蔣立華", "蒋立华"),  # a name: every character folds
    ("臺灣 台灣", "台湾 台湾"),  # variant characters
    ("裡面 裏面", "里面 里面"),
    ("羣眾 群衆 山峯", "群众 群众 山峰"),
    ("乾隆年間 天氣乾燥", "乾隆年间 天气干燥"),  # one character, two Simplified ones: by the phrase
    ("後來 皇后", "后来 皇后"),
])
def test_traditional_folds_to_simplified_and_simplified_stays(traditional: str, simplified: str) -> None:
    assert fold(traditional) == simplified
    assert fold(simplified) == simplified
    assert tokenize(traditional) == tokenize(simplified)


def test_mixed_script_and_latin_text() -> None:
    mixed = "觀景台 designed by 蔣立华 in 1998，Ｔａｉｐｅｉ １０１"
    assert fold(mixed) == "观景台 designed by 蒋立华 in 1998，Ｔａｉｐｅｉ １０１"  # width is not the fold's
    assert tokenize(mixed) == tokenize("观景台 designed by 蒋立华 in 1998，Ｔａｉｐｅｉ １０１")
    assert fold("plain ASCII, untouched") == "plain ASCII, untouched"


def test_traditional_text_is_segmented_as_well_as_simplified() -> None:
    """jieba's dictionary is Simplified: unfolded, Traditional words fall apart into characters."""
    use_keyword_fold("none")
    unfolded = tokenize(TRADITIONAL)
    use_keyword_fold("t2s")
    folded = tokenize(TRADITIONAL)
    simplified = tokenize(fold(TRADITIONAL))
    assert folded == simplified
    assert "古老" in folded and "寺庙" in folded
    assert "古老" in unfolded and "寺廟" not in unfolded  # 寺廟 is no word to jieba
    single = sum(len(w) == 1 for w in folded)
    assert single < sum(len(w) == 1 for w in unfolded)


def test_the_fold_is_part_of_the_tokenizer_id_and_none_keeps_the_old_one() -> None:
    folded = tokenizer_id()
    assert " fold t2s opencc " in folded
    use_keyword_fold("none")
    assert tokenizer_id() == folded.split(" fold ")[0] and "fold" not in tokenizer_id()
    use_keyword_fold("tw2s")
    assert " fold tw2s " in tokenizer_id()
    with pytest.raises(ConfigError, match="t2s, tw2s, hk2s, tw2sp, none"):
        use_keyword_fold("s2t")


def test_settings_field_matches_the_folds_and_a_pipeline_sets_it(make_pipeline) -> None:
    from ragqa.config import Settings

    assert Settings.model_fields["keyword_fold"].get_default() == "t2s"
    assert set(Settings.model_fields["keyword_fold"].annotation.__args__) == set(words.KEYWORD_FOLDS)
    make_pipeline(keyword_fold="hk2s")
    assert words.keyword_fold() == "hk2s"


def test_missing_opencc_names_the_package(monkeypatch) -> None:
    import sys

    from ragqa.errors import MissingDependencyError

    monkeypatch.setattr(words, "_converters", {})
    monkeypatch.setitem(sys.modules, "opencc", None)
    with pytest.raises(MissingDependencyError, match="opencc"):
        fold("觀景臺")


# -- knowledge bases ---------------------------------------------------------------------------------


@pytest.fixture
def two_scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "tower.txt").write_text(SIMPLIFIED, "utf-8")
    (folder / "temple.txt").write_text(TRADITIONAL, "utf-8")
    (folder / "panda.txt").write_text("熊猫是中国特有的动物，主要生活在四川的山区。", "utf-8")
    return folder


def bm25_files(kb, query: str) -> list[str]:
    return [Path(d.metadata["source"]).name for d in kb.get_chunks([i for i, _ in kb.bm25_search(query, 3)])]


def test_bm25_alone_finds_the_other_script_and_shows_the_text_as_written(make_pipeline, two_scripts) -> None:
    p = make_pipeline()
    kb = p.open_kb("t", create=True)
    p.index_paths(kb, [two_scripts])
    assert bm25_files(kb, "觀景臺是誰設計的？")[0] == "tower.txt"  # Traditional question, Simplified text
    assert bm25_files(kb, "龙山寺始建于哪一年？")[0] == "temple.txt"  # and back
    answer = p.ask([], "龍山寺始建於哪一年？", kb="t", dry_run=True, retriever="bm25", k=1)
    [source] = answer.sources
    assert Path(source.source).name == "temple.txt"
    [doc] = kb.get_chunks([kb.bm25_search("龙山寺", 1)[0][0]])
    assert doc.page_content == TRADITIONAL  # shown as written, never folded
    start = doc.metadata["start"]
    assert TRADITIONAL[start:start + len(doc.page_content)] == doc.page_content
    assert "龍山寺" in answer.prompts[0] and "龙山寺" not in answer.prompts[0]


def test_the_in_memory_index_and_the_fusion_fold_too() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragqa.vectorstores import RagqaVectorStore
    from ragqa.words import matched_share

    store = RagqaVectorStore.from_texts([SIMPLIFIED, TRADITIONAL, "熊猫吃竹子"], DeterministicFakeEmbedding(size=16))
    found = store.as_bm25_retriever(k=1).invoke("觀景臺是誰設計的")
    assert found[0].page_content == SIMPLIFIED
    # the fusion's share of the question's idf mass: the same in either script
    assert matched_share("觀景臺是誰設計的", set(tokenize(SIMPLIFIED))) == \
        matched_share("观景台是谁设计的", set(tokenize(SIMPLIFIED))) > 0.5


def test_a_kb_made_without_the_fold_is_re_tokenized_on_open_without_embedding(
        make_pipeline, counting_embeddings_cls, two_scripts, data_dir) -> None:
    before = make_pipeline(keyword_fold="none")
    kb = before.open_kb("old", create=True)
    before.index_paths(kb, [two_scripts])
    assert "tower.txt" not in bm25_files(kb, "觀景臺")  # unfolded: two languages
    stamp = tokenizer_id()
    kb.close()

    emb = counting_embeddings_cls()
    after = make_pipeline(embeddings=emb)  # the default fold
    kb = after.open_kb("old")
    assert bm25_files(kb, "觀景臺")[0] == "tower.txt"
    con = sqlite3.connect(data_dir / "kb" / "old" / "kb.sqlite")
    (now,) = con.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
    rows = con.execute("SELECT text, words FROM chunks").fetchall()
    con.close()
    assert now == tokenizer_id() != stamp
    assert all(" ".join(tokenize(t)) == w for t, w in rows)
    assert emb.document_calls == 0
    assert after.index_paths(kb, [two_scripts]).unchanged == 3
