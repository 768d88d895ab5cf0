"""context = sentences: only the sentences of the retrieved chunks that bear on the question reach the prompt."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from ragqa.chains import PromptBuilder, build_stuff_prompt, first_prompt
from ragqa.chat_formats import get_chat_format
from ragqa.config import Settings
from ragqa.context import compact_chunks
from ragqa.splitting import sentence_spans
from ragqa.errors import ConfigError
from ragqa.evaluation import QAItem, prompt_metrics

TEA = ("青岚镇位于虚构的云溪省西部，是一个以茶叶闻名的山区小镇。全镇人口约一万二千人。"
       "每年农历三月初八，镇上会举办“开茶节”。节日当天，茶农们在老茶园里祭拜茶神。"
       "镇上还有一座建于明朝的石拱桥。交通方面，每天有六班公共汽车开往省城。")
FISH = "白沙湖渔村在湖的北岸，村里共有三百二十户人家。村民世代以捕鱼为生。渔村每年十月举行“谢湖会”。"
EN = ("Quillby is a small river town. It was founded in 1742 by salt traders. The Heron Festival is held "
      "on the second weekend of March. Children paint wooden herons. The bridge is 3.5 metres wide.")


def pb(budget: int = 100_000) -> PromptBuilder:
    return PromptBuilder(chat_format=get_chat_format("chatml"), count_tokens=len, budget=budget)


@pytest.mark.parametrize("text, sentences", [
    ("今天下雨。我们没去！你呢？", ["今天下雨。", "我们没去！", "你呢？"]),
    ("他说：“好的。”然后走了。", ["他说：“好的。”", "然后走了。"]),
    ("价格是3.5元，不贵。The rate is 3.5 per cent. Done", ["价格是3.5元，不贵。", "The rate is 3.5 per cent. ", "Done"]),
    ("第一段\n\n第二段没有句号", ["第一段\n\n", "第二段没有句号"]),
    ("", []),
])
def test_sentences_split_at_chinese_and_english_ends_not_inside_numbers(text: str, sentences: list[str]) -> None:
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == sentences
    assert "".join(text[s:e] for s, e in spans) == text  # nothing lost between them


def test_the_top_chunk_stays_whole_and_the_others_keep_the_sentences_that_bear_on_the_question() -> None:
    # the question segments as 开 / 茶节, the text as 开茶节: the character pairs still match
    docs = [Document(FISH, metadata={"start": 0}), Document(TEA, metadata={"start": 40, "source": "tea.txt"})]
    out = compact_chunks("青岚镇的开茶节是哪一天？", docs)
    assert out[0] == docs[0]  # the best-ranked passage as it is
    assert "三月初八" in out[1].page_content
    assert "石拱桥" not in out[1].page_content  # a sentence that bears on nothing is left out
    assert len(out[1].page_content) < len(TEA)
    assert out[1].metadata["source"] == "tea.txt" and out[1].metadata["compacted_from"] == len(TEA)
    for s, e in out[1].metadata["spans"]:  # every kept range is the file's own text at its offsets
        assert TEA[s - 40:e - 40] in out[1].page_content


def test_a_ranked_chunk_keeps_its_best_sentence_and_the_one_after_it() -> None:
    top = Document("The town has a river.", metadata={"start": 0})
    out = compact_chunks("When is the Heron Festival held?", [top, Document(EN, metadata={"start": 0})])
    text = out[1].page_content
    assert "second weekend of March" in text and "Children paint" in text
    assert "salt traders" not in text
    # a chunk sharing no word still keeps its best sentence: a passage the retriever ranked never vanishes
    out = compact_chunks("When is the Heron Festival held?", [Document(EN), Document(FISH)])
    assert out[1].page_content.strip("… ")


def test_chunks_that_match_nothing_or_have_one_sentence_stay_whole() -> None:
    docs = [Document(FISH, metadata={}), Document("只有一句话没有句号", metadata={})]
    assert compact_chunks("量子计算机", docs) == docs  # no sentence shares a word: nothing to choose by
    assert compact_chunks("渔村", docs)[1].page_content == "只有一句话没有句号"


def test_the_prompt_carries_the_sentences_and_the_sources_stay_whole_chunks() -> None:
    question = "青岚镇的开茶节是哪一天？"
    docs = [Document(FISH, metadata={"start": 0}), Document(TEA, metadata={"start": 0, "source": "tea.txt"})]
    whole, used_whole, _ = build_stuff_prompt(question, docs, pb())
    cut, used_cut, _ = build_stuff_prompt(question, docs, pb(), context="sentences")
    assert "三月初八" in cut and "石拱桥" in whole and "石拱桥" not in cut
    assert len(cut) < len(whole)
    assert [d.page_content for d in used_cut] == [d.page_content for d in used_whole] == [FISH, TEA]
    assert first_prompt(question, docs, pb(), "stuff", "sentences")[0] == cut
    # a budget too small for both whole chunks fits both compacted ones
    budget = len(cut) + 5
    assert len(build_stuff_prompt(question, docs, pb(budget), context="sentences")[1]) == 2
    assert len(build_stuff_prompt(question, docs, pb(budget))[1]) == 1


def test_the_setting_takes_chunks_or_sentences_only() -> None:
    assert Settings().context == "sentences"  # the default, chosen by bench/bench_context.py
    assert Settings(context="chunks").context == "chunks"
    with pytest.raises((ConfigError, ValueError)):
        Settings(context="paragraphs")


def test_eval_reports_what_the_prompt_would_carry() -> None:
    chunks = {1: Document(TEA, metadata={}), 2: Document(FISH, metadata={})}
    items = [QAItem(qid="a", question="青岚镇的开茶节是哪一天？", context_id=0, answers=["农历三月初八"]),
             QAItem(qid="b", question="石拱桥建于什么朝代？", context_id=0, answers=["明朝"])]
    whole = prompt_metrics([[2, 1], [2, 1]], items, chunks, 2, "chunks")
    cut = prompt_metrics([[2, 1], [2, 1]], items, chunks, 2, "sentences")
    assert whole["answer_in_prompt"] == cut["answer_in_prompt"] == 1.0
    assert cut["context_tokens"] < whole["context_tokens"]
    assert prompt_metrics([[2], [2]], items, chunks, 1, "chunks")["answer_in_prompt"] == 0.0
