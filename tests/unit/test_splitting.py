"""ChineseTextSplitter: sentence-aligned chunks with exact offsets."""

from __future__ import annotations

import re

import pytest
from langchain_core.documents import Document

from ragqa.errors import ConfigError
from ragqa.splitting import ChineseTextSplitter

TERMINATORS = "。！？；…!?;"
CLOSERS = "”」』）)"
# an ASCII '.' also ends a sentence when whitespace or the end of the text follows it
ENDS_SENTENCE = re.compile(rf"[{TERMINATORS}.][{CLOSERS}]*$")

PANDA = (
    "熊猫是中国特有的动物。它们主要生活在四川、陕西和甘肃的山区。熊猫的主要食物是竹子，每天要吃十几个小时！"
    "成年熊猫体重可达一百多公斤。它们看起来很笨拙，其实很会爬树。你知道熊猫为什么是黑白色的吗？"
    "科学家认为这有助于伪装。有人说：“熊猫是国宝。”也有人说「它们很可爱」。"
    "熊猫宝宝刚出生时只有一百克左右……非常小！母熊猫会一直抱着它；直到它能自己活动。"
    "Pandas are bears! Do they hibernate? No; they stay active all winter. "
    "保护熊猫需要保护它们的栖息地。"
)

SHORT_SENTENCES = "我来了。你好吗？很好！天晴了。去公园。看熊猫。吃竹子。回家了。睡觉吧。晚安。" * 3


def check_offsets(text: str, pairs: list[tuple[int, str]]) -> None:
    for start, chunk in pairs:
        assert text[start:start + len(chunk)] == chunk


@pytest.mark.parametrize("size, overlap", [(30, 0), (40, 10), (60, 20), (100, 30), (600, 100)])
def test_chunks_fit_align_and_end_at_sentence_ends(size: int, overlap: int) -> None:
    splitter = ChineseTextSplitter(chunk_size=size, chunk_overlap=overlap)
    pairs = splitter.split_with_offsets(PANDA)
    assert pairs, "no chunks"
    check_offsets(PANDA, pairs)
    for _, chunk in pairs:
        assert 0 < len(chunk) <= size
        assert chunk[0] not in TERMINATORS, f"chunk starts with punctuation: {chunk!r}"
        assert ENDS_SENTENCE.search(chunk), f"chunk cut mid-sentence: {chunk!r}"
    # nothing is lost: every sentence of the text is inside some chunk
    for sentence in re.findall(rf"[^{TERMINATORS}.]+[{TERMINATORS}.]+[{CLOSERS}]*", PANDA):  # no decimals in PANDA
        sentence = sentence.strip()
        if len(sentence) <= size:
            assert any(sentence in chunk for _, chunk in pairs), sentence


def test_docstring_example() -> None:
    s = ChineseTextSplitter(chunk_size=14, chunk_overlap=0)
    assert s.split_text("今天天气很好。我们去公园吧！好的。") == ["今天天气很好。我们去公园吧！", "好的。"]


def test_without_overlap_chunks_tile_the_text() -> None:
    pairs = ChineseTextSplitter(chunk_size=50, chunk_overlap=0).split_with_offsets(PANDA)
    assert "".join(chunk for _, chunk in pairs).replace(" ", "") == PANDA.replace(" ", "")


def test_neighbours_share_whole_sentences_when_sentences_are_short() -> None:
    splitter = ChineseTextSplitter(chunk_size=30, chunk_overlap=10)
    pairs = splitter.split_with_offsets(SHORT_SENTENCES)
    assert len(pairs) > 3
    check_offsets(SHORT_SENTENCES, pairs)
    for (s1, c1), (s2, c2) in zip(pairs, pairs[1:]):
        end1 = s1 + len(c1)
        assert s1 < s2 < end1, "neighbouring chunks should overlap"
        shared = SHORT_SENTENCES[s2:end1]
        assert 0 < len(shared) <= 10
        assert c1.endswith(shared) and c2.startswith(shared)
        assert ENDS_SENTENCE.search(shared), f"overlap is not whole sentences: {shared!r}"


def test_decimal_point_is_not_a_sentence_end() -> None:
    text = "圆周率约为3.14，是一个常数。自然常数e约为2.718。Pi is about 3.14 in value. Version 1.2.3 is out."
    for size in (16, 20, 30):
        chunks = ChineseTextSplitter(chunk_size=size, chunk_overlap=0).split_text(text)
        for number in ("3.14", "2.718", "1.2.3"):
            assert any(number in c for c in chunks), (size, number, chunks)
        for c in chunks:
            assert not c.startswith(("14", "718", ".")), (size, chunks)
            assert not re.search(r"\d\.$", c), (size, chunks)


def test_sentence_longer_than_chunk_is_cut_at_commas_first() -> None:
    text = "这是一个非常长的句子，里面有很多逗号，但是没有句号，所以它会在逗号处被切开，而不是在中间硬切。"
    chunks = ChineseTextSplitter(chunk_size=30, chunk_overlap=0).split_text(text)
    assert len(chunks) > 1
    assert all(len(c) <= 30 for c in chunks)
    assert all(c.endswith("，") for c in chunks[:-1])
    assert chunks[-1].endswith("。")
    assert "".join(chunks) == text


def test_long_sentence_without_any_break_is_hard_cut() -> None:
    text = "啊" * 250
    pairs = ChineseTextSplitter(chunk_size=100, chunk_overlap=20).split_with_offsets(text)
    assert [len(c) for _, c in pairs] == [100, 100, 50]
    assert [s for s, _ in pairs] == [0, 100, 200]


def test_long_sentence_between_short_ones_keeps_neighbours_whole() -> None:
    text = "开头一句。" + "长" * 45 + "。结尾一句。"
    chunks = ChineseTextSplitter(chunk_size=20, chunk_overlap=0).split_text(text)
    assert chunks[0] == "开头一句。"
    assert chunks[-1].endswith("。结尾一句。")  # the long sentence's tail, then the whole next one
    assert all(len(c) <= 20 for c in chunks)
    assert "".join(chunks) == text


def test_paragraph_breaks_end_chunks_and_are_not_kept_as_edges() -> None:
    text = "# 标题\n\n第一段的内容。\n\n第二段的内容。\n"
    pairs = ChineseTextSplitter(chunk_size=10, chunk_overlap=0).split_with_offsets(text)
    check_offsets(text, pairs)
    assert [c for _, c in pairs] == ["# 标题", "第一段的内容。", "第二段的内容。"]


@pytest.mark.parametrize("size, overlap", [(100, 100), (100, 150), (50, -1)])
def test_bad_overlap_is_a_config_error(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="chunk_overlap"):
        ChineseTextSplitter(chunk_size=size, chunk_overlap=overlap)


def test_nonpositive_chunk_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        ChineseTextSplitter(chunk_size=0, chunk_overlap=0)


def test_split_documents_keeps_metadata_and_records_start() -> None:
    docs = [
        Document(page_content="第一页。第一页第二句。", metadata={"source": "a.pdf", "page": 1}),
        Document(page_content="第二页。", metadata={"source": "a.pdf", "page": 2}),
    ]
    chunks = ChineseTextSplitter(chunk_size=8, chunk_overlap=0).split_documents(docs)
    assert [(c.page_content, c.metadata) for c in chunks] == [
        ("第一页。", {"source": "a.pdf", "page": 1, "start": 0}),
        ("第一页第二句。", {"source": "a.pdf", "page": 1, "start": 4}),
        ("第二页。", {"source": "a.pdf", "page": 2, "start": 0}),
    ]
    assert docs[0].metadata == {"source": "a.pdf", "page": 1}  # input not mutated


def test_whitespace_only_text_gives_no_chunks() -> None:
    assert ChineseTextSplitter(chunk_size=50, chunk_overlap=0).split_text("  \n\n \t ") == []


def test_langchain_default_splitter_cuts_chinese_mid_sentence_but_ours_does_not() -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    size, overlap = 40, 10
    theirs = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap).split_text(PANDA)
    ours = ChineseTextSplitter(chunk_size=size, chunk_overlap=overlap).split_text(PANDA)

    def bad(chunk: str) -> bool:
        return chunk[0] in TERMINATORS or not ENDS_SENTENCE.search(chunk)

    assert any(bad(c) for c in theirs), "expected LangChain's default splitter to cut mid-sentence"
    assert not any(bad(c) for c in ours), [c for c in ours if bad(c)]


# A run of short sentences followed by one sentence too long to share a chunk with the overlap.
CONTRACT = "合同双方如下。" * 30 + "甲方应当在合同生效后按照约定支付款项，" * 40 + "本合同一式两份。"


@pytest.mark.parametrize(
    "text, size, overlap",
    [
        ("甲" * 9 + "。" + "乙" * 7 + "。" + "丙" * 14 + "。", 20, 10),
        (CONTRACT, 600, 100),  # the default settings
        (PANDA, 40, 20),
        (SHORT_SENTENCES, 30, 10),
    ],
    ids=["minimal", "contract-defaults", "panda", "short-sentences"],
)
def test_every_chunk_adds_text_beyond_the_previous_one(text: str, size: int, overlap: int) -> None:
    """Overlap must not produce chunks that lie wholly inside their predecessor (duplicate hits)."""
    pairs = ChineseTextSplitter(chunk_size=size, chunk_overlap=overlap).split_with_offsets(text)
    check_offsets(text, pairs)
    for (s1, c1), (s2, c2) in zip(pairs, pairs[1:]):
        assert s2 + len(c2) > s1 + len(c1), f"chunk {c2!r} at {s2} adds nothing to {c1!r} at {s1}"
