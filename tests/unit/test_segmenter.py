"""jieba's dictionary as a trie file (ragqa/segmenter.py): the same words as jieba, a file that is
made once and read after, and jieba itself where the trie cannot be had."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ragqa import segmenter
from ragqa.words import _TOKEN

EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"

# Where other fast jiebas part from jieba 0.42.1 (rare characters its HMM meets, Traditional
# Chinese, kana, digits and Latin inside a run), and plain text.
SAMPLE = [
    "熊猫是中国特有的动物。它们主要生活在四川、陕西和甘肃的山区。",
    "在1597年的长筿之战中并未出现，长筿城守将是谁？",
    "忉杭人居住在缅甸北部的山地，说忉杭语。",
    "大怪獣ガメラが目覚める。哥斯拉與摩斯拉在東京灣決戰。",
    "臺灣大學的研究團隊發現，這種蝴蝶的翅膀會隨溫度變色。",
    "中华人民共和国国务院新闻办公室今天举行新闻发布会，介绍2023年上半年国民经济运行情况。",
    "小明硕士毕业于中国科学院计算所，后在日本京都大学深造",
    "工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作",
    "他来到了网易杭研大厦。我来到北京清华大学。",
    "结婚的和尚未结婚的都来了。南京市长江大桥。",
    "iPhone15的售价是5999元，GPT-4o和Llama 3.1都能读中文。",
    "𠀀𠀁古籍里的生僻字：龘靐齉爩，以及㐀㐁㐂。",
    "我们中出了一个叛徒",
    "",
]


def jieba_words(text: str, cut) -> list[list[str]]:
    """What ragqa.words.tokenize hands to jieba: each Chinese run, search mode."""
    return [cut(m.group()) for m in _TOKEN.finditer(text) if not m.group()[0].isascii()]


@pytest.fixture(scope="module")
def own():
    """jieba's own Tokenizer with its dictionary, loaded once for the module."""
    return segmenter._jieba_tokenizer()


@pytest.fixture(autouse=True)
def _load_jieba_once(own, monkeypatch) -> None:
    monkeypatch.setattr(segmenter, "_jieba_tokenizer", lambda: own)


@pytest.fixture(scope="module")
def pair(own):
    """(jieba's own Tokenizer, the trie one)."""
    return own, segmenter.TrieTokenizer(segmenter.trie_bytes(own))


def test_trie_segments_the_sample_as_jieba(pair) -> None:
    own, trie = pair
    for text in SAMPLE:
        assert jieba_words(text, trie.lcut_for_search) == jieba_words(text, own.lcut_for_search), text
        assert trie.lcut(text) == own.lcut(text), text


@pytest.mark.skipif(not EVAL.is_dir(), reason="the shared eval data is not here")
def test_trie_segments_real_contexts_as_jieba(pair) -> None:
    own, trie = pair
    texts = []
    for name in ("zh_mrc/cmrc2018_trial.squad.json", "zh_mrc/DRCD_dev.json"):
        data = json.loads((EVAL / name).read_text("utf-8"))["data"]
        texts += [p["context"] for art in data for p in art["paragraphs"]][:60]
    differ = [t[:40] for t in texts if jieba_words(t, trie.lcut_for_search) != jieba_words(t, own.lcut_for_search)]
    assert differ == []


def test_trie_file_is_made_once_then_read(tmp_path, monkeypatch) -> None:
    path = tmp_path / "jieba-trie.bin"
    first = segmenter._load_or_build(path)
    assert path.is_file()
    assert path.read_bytes()[:1] != b"\x80"  # no pickle
    monkeypatch.setattr(segmenter, "build_trie", lambda: pytest.fail("the file was built again"))
    second = segmenter._load_or_build(path)
    assert second.lcut_for_search("南京市长江大桥") == first.lcut_for_search("南京市长江大桥")


@pytest.mark.parametrize("damage", [b"", b"garbage", "truncated"])
def test_damaged_trie_file_is_built_again(tmp_path, damage) -> None:
    path = tmp_path / "jieba-trie.bin"
    segmenter._load_or_build(path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5] if damage == "truncated" else damage)
    tok = segmenter._load_or_build(path)
    assert path.read_bytes() == whole
    assert "长江大桥" in tok.lcut_for_search("南京市长江大桥")


def test_load_segmenter_picks_the_trie_and_writes_it_to_the_cache_folder(monkeypatch) -> None:
    jieba = segmenter.jieba_module()
    monkeypatch.setattr(jieba.dt, "initialized", False)
    tok = segmenter.load_segmenter()
    assert isinstance(tok, segmenter.TrieTokenizer)
    assert segmenter._trie_path().is_file()  # under XDG_CACHE_HOME, the test's own


def test_without_marisa_trie_jieba_segments(monkeypatch) -> None:
    jieba = segmenter.jieba_module()
    monkeypatch.setattr(jieba.dt, "initialized", False)
    monkeypatch.setitem(sys.modules, "marisa_trie", None)  # import fails
    assert segmenter.load_segmenter() is jieba


def test_unwritable_cache_folder_falls_back_to_jieba(monkeypatch, tmp_path) -> None:
    jieba = segmenter.jieba_module()
    monkeypatch.setattr(jieba.dt, "initialized", False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(segmenter, "_trie_path", lambda: blocker / "jieba-trie.bin")
    tok = segmenter.load_segmenter()
    assert type(tok) is jieba.Tokenizer and tok.initialized  # the one loaded to make the trie
    assert "长江大桥" in tok.lcut_for_search("南京市长江大桥")


def test_a_dictionary_jieba_already_loaded_is_used_as_it_is(monkeypatch) -> None:
    jieba = segmenter.jieba_module()
    monkeypatch.setattr(jieba.dt, "initialized", True)  # someone loaded (and may have changed) it
    assert segmenter.load_segmenter() is jieba


def test_tokenizer_id_names_jieba_and_its_dictionary() -> None:
    from ragqa.words import WORDS_FORMAT, tokenizer_id

    jieba = segmenter.jieba_module()
    assert tokenizer_id().startswith(f"words/{WORDS_FORMAT} jieba {jieba.__version__} dict ")
