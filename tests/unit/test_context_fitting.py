"""Fitting retrieved chunks into the token budget (n_ctx - max_new_tokens)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from ragqa.chains import PromptBuilder, build_stuff_prompt, first_prompt, format_context
from ragqa.chat_formats import get_chat_format
from ragqa.errors import InputError
from ragqa.prompts import fill_prompt

QUESTION = "熊猫吃什么？"
DOCS = [
    Document(page_content="熊猫主要吃竹子，每天要吃十几个小时。", metadata={"source": "a.txt", "start": 0}),
    Document(page_content="熊猫偶尔也吃小动物和水果。", metadata={"source": "a.txt", "start": 40}),
    Document(page_content="成都有熊猫基地。", metadata={"source": "b.txt", "start": 0}),
    Document(page_content="熊猫。", metadata={"source": "c.txt", "start": 0}),  # short: would fit anywhere
]


def half_chars(text: str) -> int:
    """Fake tokenizer: two characters per token."""
    return len(text) // 2


def builder(budget: int, count=half_chars, fmt: str = "chatml") -> PromptBuilder:
    return PromptBuilder(chat_format=get_chat_format(fmt), count_tokens=count, budget=budget, lang="auto")


def stuff_prompt(docs: list[Document], fmt: str = "chatml") -> str:
    """What the stuff prompt with exactly these chunks looks like."""
    return get_chat_format(fmt).prompt(fill_prompt("qa_stuff", "zh", context=format_context(docs), question=QUESTION))


def test_everything_fits_all_chunks_used_in_order_no_notes() -> None:
    prompt, used, notes = build_stuff_prompt(QUESTION, DOCS, builder(10_000))
    assert used == DOCS
    assert notes == []
    assert prompt == stuff_prompt(DOCS)
    assert "[1] 熊猫主要吃竹子" in prompt and "[4] 熊猫。" in prompt
    assert prompt.index(DOCS[0].page_content) < prompt.index(DOCS[1].page_content) < prompt.index(DOCS[2].page_content)


def test_budget_for_two_keeps_the_two_best_in_rank_order_and_says_so() -> None:
    # room for the first two plus the short 4th, but not the 3rd: drop lowest-ranked first,
    # do not skip the 3rd to squeeze the 4th in
    budget = half_chars(stuff_prompt([DOCS[0], DOCS[1], DOCS[3]]))
    assert half_chars(stuff_prompt(DOCS[:3])) > budget
    prompt, used, notes = build_stuff_prompt(QUESTION, DOCS, builder(budget))
    assert used == DOCS[:2]  # the short 4th chunk is not squeezed in ahead of rank
    assert prompt == stuff_prompt(DOCS[:2])
    assert half_chars(prompt) <= budget
    assert DOCS[2].page_content not in prompt and DOCS[3].page_content not in prompt
    assert len(notes) == 1
    assert "2 of 4" in notes[0] and "dropped" in notes[0]


def test_chunks_are_fitted_with_few_token_counts() -> None:
    """Each count is a /tokenize round trip on a server backend: one when everything fits, a binary
    search (not one per chunk) when not, with the same chunks kept."""
    counted: list[str] = []

    def counting(text: str) -> int:
        counted.append(text)
        return half_chars(text)

    build_stuff_prompt(QUESTION, DOCS, builder(10_000, counting))
    assert len(counted) == 1
    counted.clear()
    budget = half_chars(stuff_prompt(DOCS[:2]))
    _, used, _ = build_stuff_prompt(QUESTION, DOCS, builder(budget, counting))
    assert used == DOCS[:2] and len(counted) <= 3  # all 4, then 2 of 3, then 3 of 3 at most


def test_budget_below_the_best_chunk_cuts_it_and_says_so() -> None:
    empty = half_chars(stuff_prompt([Document(page_content="")]))
    budget = empty + 5  # room for about ten characters of the best chunk
    prompt, used, notes = build_stuff_prompt(QUESTION, DOCS, builder(budget))
    assert half_chars(prompt) <= budget
    assert len(used) == 1
    cut = used[0].page_content
    assert 0 < len(cut) < len(DOCS[0].page_content)
    assert DOCS[0].page_content.startswith(cut)
    assert used[0].metadata == DOCS[0].metadata  # the source still points at the right place
    assert f"[1] {cut}" in prompt and DOCS[1].page_content not in prompt
    # the cut is as long as the budget allows: one more character would not fit
    longer = DOCS[0].page_content[: len(cut) + 1]
    assert half_chars(stuff_prompt([Document(page_content=longer)])) > budget
    assert len(notes) == 1 and "cut" in notes[0] and "3 others dropped" in notes[0]


def test_question_alone_over_budget_is_an_input_error() -> None:
    with pytest.raises(InputError, match="budget"):
        build_stuff_prompt(QUESTION, DOCS, builder(20))


def test_question_alone_over_budget_with_refine_is_an_input_error() -> None:
    with pytest.raises(InputError, match="budget"):
        first_prompt(QUESTION, DOCS, builder(20), "refine")


def test_whitespace_token_counter_budget() -> None:
    docs = [Document(page_content=" ".join(["word"] * 50)) for _ in range(3)]

    def words(text: str) -> int:
        return len(text.split())

    question = "what is a word?"
    base = words(builder(0, words).render(fill_prompt("qa_stuff", "en", context=format_context(docs[:1]), question=question)))
    prompt, used, notes = build_stuff_prompt(question, docs, builder(base + 60, words))
    assert used == docs[:2]
    assert words(prompt) <= base + 60
    assert notes and "2 of 3" in notes[0]


def test_no_chunks_retrieved_is_a_note_not_an_error() -> None:
    prompt, used, notes = build_stuff_prompt(QUESTION, [], builder(10_000))
    assert used == [] and notes == ["no chunks were retrieved"]
    assert QUESTION in prompt


def test_fit_text_returns_longest_fitting_prefix() -> None:
    pb = builder(10, count=len)
    prompt, prefix = pb.fit_text(lambda t: "Q:" + t, "abcdefghijklmnop")
    assert prefix == "abcdefgh" and prompt == "Q:abcdefgh"


def test_fit_text_unchanged_when_it_fits() -> None:
    pb = builder(100, count=len)
    assert pb.fit_text(lambda t: "Q:" + t, "abc") == ("Q:abc", "abc")


def test_prompt_language_follows_the_question_unless_set() -> None:
    en_q = "What do pandas eat?"
    prompt, _, _ = build_stuff_prompt(en_q, DOCS[:1], builder(10_000))
    assert "Using only these passages" in prompt
    zh_prompt, _, _ = build_stuff_prompt(QUESTION, DOCS[:1], builder(10_000))
    assert "请只根据以上资料" in zh_prompt
    forced = PromptBuilder(get_chat_format("chatml"), half_chars, 10_000, lang="zh")
    assert "请只根据以上资料" in build_stuff_prompt(en_q, DOCS[:1], forced)[0]


def test_system_prompt_reaches_the_rendered_prompt() -> None:
    pb = PromptBuilder(get_chat_format("alpaca-2"), half_chars, 10_000, system_prompt="你是熊猫专家。")
    prompt, _, _ = build_stuff_prompt(QUESTION, DOCS[:1], pb)
    assert prompt.startswith("[INST] <<SYS>>\n你是熊猫专家。\n<</SYS>>\n\n")
    assert prompt.endswith(" [/INST]")
