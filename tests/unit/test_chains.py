"""The stuff and refine QA chains as Runnables, driven by LangChain's fake LLMs."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import FakeListLLM, FakeStreamingListLLM

from ragqa.chains import PromptBuilder, make_qa_chain
from ragqa.chat_formats import get_chat_format
from ragqa.errors import InputError

DOCS = [
    Document(page_content="熊猫主要吃竹子。", metadata={"source": "a.txt", "start": 0}),
    Document(page_content="熊猫每天睡十个小时。", metadata={"source": "a.txt", "start": 8}),
    Document(page_content="成都有熊猫基地。", metadata={"source": "b.txt", "start": 0}),
]


class RecordingLLM(FakeListLLM):
    """FakeListLLM that keeps every prompt it was given."""

    seen: list[str] = []

    def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.seen.append(prompt)
        return super()._call(prompt, stop, run_manager, **kwargs)


class RecordingStreamingLLM(FakeStreamingListLLM):
    seen: list[str] = []

    def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.seen.append(prompt)
        return super()._call(prompt, stop, run_manager, **kwargs)


@pytest.fixture
def pb() -> PromptBuilder:
    return PromptBuilder(chat_format=get_chat_format("chatml"), count_tokens=len, budget=100_000)


def test_stuff_invoke_returns_answer_and_sources(pb, fixed_retriever) -> None:
    llm = RecordingLLM(responses=["熊猫吃竹子。[1]"], seen=[])
    chain = make_qa_chain(llm, fixed_retriever(DOCS), pb, "stuff")
    result = chain.invoke({"question": "熊猫吃什么？"})
    assert result["answer"] == "熊猫吃竹子。[1]"
    assert result["source_documents"] == DOCS
    assert result["notes"] == []
    assert len(llm.seen) == 1
    assert result["prompts"] == llm.seen
    prompt = llm.seen[0]
    for i, d in enumerate(DOCS, 1):
        assert f"[{i}] {d.page_content}" in prompt
    assert "熊猫吃什么？" in prompt
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_plain_string_input_works_too(pb, fixed_retriever) -> None:
    retriever = fixed_retriever(DOCS)
    chain = make_qa_chain(FakeListLLM(responses=["ok"]), retriever, pb)
    assert chain.invoke("  熊猫吃什么？ ")["answer"] == "ok"
    assert retriever.questions == ["熊猫吃什么？"]  # stripped before retrieval


def test_stuff_stream_yields_sources_before_answer_tokens(pb, fixed_retriever) -> None:
    llm = FakeStreamingListLLM(responses=["竹子"])
    chain = make_qa_chain(llm, fixed_retriever(DOCS), pb, "stuff")
    parts = list(chain.stream({"question": "熊猫吃什么？"}))
    first_sources = next(i for i, p in enumerate(parts) if "source_documents" in p)
    answer_parts = [i for i, p in enumerate(parts) if "answer" in p]
    assert first_sources < answer_parts[0]
    assert len(answer_parts) == 3  # streamed: one part per character, then the citation marker
    assert "".join(parts[i]["answer"] for i in answer_parts) == "竹子[1]"
    assert parts[-1]["citations"][0]["n"] == 1  # the citations come with the last part
    assert parts[first_sources]["source_documents"] == DOCS


def test_refine_calls_the_llm_once_per_chunk_and_returns_the_last_answer(pb, fixed_retriever) -> None:
    llm = RecordingStreamingLLM(responses=["第一版回答", "第二版回答", "最终回答"], seen=[])
    chain = make_qa_chain(llm, fixed_retriever(DOCS), pb, "refine")
    result = chain.invoke({"question": "熊猫吃什么？"})
    assert len(llm.seen) == len(DOCS)
    assert result["answer"] == "最终回答"
    assert result["source_documents"] == DOCS
    assert result["prompts"] == llm.seen
    for prompt, doc in zip(llm.seen, DOCS):
        assert doc.page_content in prompt
    # each later step sees the answer so far and only its own chunk
    assert "第一版回答" in llm.seen[1] and DOCS[0].page_content not in llm.seen[1]
    assert "第二版回答" in llm.seen[2]
    assert "以下是一段背景资料" in llm.seen[0] and "目前的回答" in llm.seen[1]


def test_refine_stream_sends_sources_first(pb, fixed_retriever) -> None:
    llm = FakeStreamingListLLM(responses=["a", "b", "cd"])
    parts = list(make_qa_chain(llm, fixed_retriever(DOCS), pb, "refine").stream("熊猫吃什么？"))
    assert "source_documents" in parts[0]
    assert "".join(p.get("answer", "") for p in parts) == "cd"


def test_refine_with_no_chunks_answers_empty_with_a_note(pb, fixed_retriever) -> None:
    llm = RecordingLLM(responses=["never"], seen=[])
    result = make_qa_chain(llm, fixed_retriever([]), pb, "refine").invoke("熊猫吃什么？")
    assert result["answer"] == "" and result["source_documents"] == []
    assert result["notes"] == ["no chunks were retrieved"]
    assert llm.seen == []


@pytest.mark.parametrize("question", ["", "   ", {"question": " \n"}, {}])
@pytest.mark.parametrize("chain_type", ["stuff", "refine"])
def test_empty_question_is_an_input_error(pb, fixed_retriever, question, chain_type) -> None:
    llm = RecordingLLM(responses=["never"], seen=[])
    chain = make_qa_chain(llm, fixed_retriever(DOCS), pb, chain_type)
    with pytest.raises(InputError, match="empty"):
        chain.invoke(question)
    assert llm.seen == []


def test_unknown_chain_type_is_an_input_error(pb, fixed_retriever) -> None:
    with pytest.raises(InputError) as err:
        make_qa_chain(FakeListLLM(responses=["x"]), fixed_retriever(DOCS), pb, "map_reduce")
    assert "stuff" in str(err.value) and "refine" in str(err.value)


def test_batch_answers_each_question_with_its_own_prompt(pb, fixed_retriever) -> None:
    llm = FakeListLLM(responses=["同一个回答"])
    chain = make_qa_chain(llm, fixed_retriever(DOCS), pb, "stuff")
    questions = ["熊猫吃什么？", "熊猫睡多久？", "熊猫住在哪里？"]
    results = chain.batch([{"question": q} for q in questions])
    assert len(results) == 3
    for q, r in zip(questions, results):
        assert r["answer"] == "同一个回答"
        assert q in r["prompts"][0]
        assert r["source_documents"] == DOCS


def test_budget_notes_reach_the_chain_result(fixed_retriever) -> None:
    from ragqa.chains import format_context
    from ragqa.prompts import fill_prompt

    fmt = get_chat_format("chatml")
    budget = len(fmt.prompt(fill_prompt("qa_stuff", "zh", context=format_context(DOCS[:1]), question="熊猫吃什么？")))
    pb = PromptBuilder(chat_format=fmt, count_tokens=len, budget=budget)
    result = make_qa_chain(FakeListLLM(responses=["x"]), fixed_retriever(DOCS), pb).invoke("熊猫吃什么？")
    assert result["source_documents"] == DOCS[:1]
    assert len(result["notes"]) == 1 and "1 of 3" in result["notes"][0]


# -- conversations ------------------------------------------------------------------------------

HISTORY = [
    {"role": "user", "content": "熊猫吃什么？"},
    {"role": "assistant", "content": "竹子。"},
]


def test_follow_up_is_a_multi_turn_alpaca2_prompt(fixed_retriever) -> None:
    pb = PromptBuilder(chat_format=get_chat_format("alpaca-2"), count_tokens=len, budget=100_000)
    llm = RecordingLLM(responses=["十个小时。"], seen=[])
    retriever = fixed_retriever(DOCS[1:2])
    result = make_qa_chain(llm, retriever, pb).invoke({"question": "它睡多久？", "history": HISTORY})
    assert result["answer"] == "十个小时。[1]"  # cited: the passage says 它们每天睡十个小时
    assert result["citations"][0]["quote"] in DOCS[1].page_content and result["unsupported"] == []
    [prompt] = llm.seen
    # ANCHORS: first turn with the system block, assistant turn " {a}</s>", later turns "<s>[INST] ..."
    head = "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n熊猫吃什么？ [/INST] 竹子。</s><s>[INST] "
    assert prompt.startswith(head) and prompt.endswith(" [/INST]")
    assert "[1] 熊猫每天睡十个小时。" in prompt[len(head):]
    assert retriever.questions == ["熊猫吃什么？\n它睡多久？"]  # the follow-up searched with its antecedent


def test_history_in_gradio_and_pair_forms_gives_the_same_prompt(fixed_retriever) -> None:
    pb = PromptBuilder(chat_format=get_chat_format("chatml"), count_tokens=len, budget=100_000)
    prompts = []
    for history in (
        HISTORY,
        [("熊猫吃什么？", "竹子。")],
        [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in HISTORY]
        + [{"role": "assistant", "content": "出处", "metadata": {"title": "Sources"}}],
    ):
        llm = RecordingLLM(responses=["x"], seen=[])
        make_qa_chain(llm, fixed_retriever(DOCS), pb).invoke({"question": "它睡多久？", "history": history})
        prompts.append(llm.seen[0])
    assert prompts[0] == prompts[1] == prompts[2]
    assert "<|im_start|>user\n熊猫吃什么？<|im_end|>\n<|im_start|>assistant\n竹子。<|im_end|>\n" in prompts[0]


def test_long_history_keeps_the_newest_turns_with_a_note(fixed_retriever) -> None:
    pb = PromptBuilder(chat_format=get_chat_format("chatml"), count_tokens=len, budget=600)
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"问题{i}" + "很长" * 20}, {"role": "assistant", "content": f"回答{i}"}]
    llm = RecordingLLM(responses=["x"], seen=[])
    result = make_qa_chain(llm, fixed_retriever(DOCS), pb).invoke({"question": "最后？", "history": history})
    prompt = llm.seen[0]
    assert "回答9" in prompt and "回答0" not in prompt
    assert any(n.startswith("conversation: kept the last") for n in result["notes"])
    assert len(prompt) <= 600
    assert "熊猫主要吃竹子" in prompt  # the documents still got room


def test_unanswered_question_in_history_is_dropped(fixed_retriever) -> None:
    pb = PromptBuilder(chat_format=get_chat_format("chatml"), count_tokens=len, budget=100_000)
    llm = RecordingLLM(responses=["x"], seen=[])
    history = [{"role": "user", "content": "没答的问题"}, {"role": "assistant", "content": ""}]
    retriever = fixed_retriever(DOCS)
    make_qa_chain(llm, retriever, pb).invoke({"question": "熊猫吃什么？", "history": history})
    assert "没答的问题" not in llm.seen[0]
    assert retriever.questions == ["熊猫吃什么？"]
