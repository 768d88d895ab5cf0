"""ragqa's parts as LangChain components, composed the way a developer would: LCEL pipelines, any
LLM or chat model in the chains (fakes from langchain-core), the VectorStore over ragqa's index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import (
    FakeListChatModel,
    FakeListLLM,
    FakeStreamingListLLM,
    GenericFakeChatModel,
    ParrotFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnablePassthrough

import ragqa
from ragqa.chains import PromptBuilder, estimate_tokens
from ragqa.errors import ConfigError
from ragqa.prompts import LANGS, PROMPT_VARIABLES, fill_prompt

HERON = """# The town of Quillby

The Zorblat festival is held every year on the second weekend of March. It celebrates the return
of the blue heron to the river marshes after the winter.

The town is known for its smoked eel pie, baked with juniper berries.

A ferry crosses the Ember River every forty minutes. The nearest railway station is in Harrowgate.
"""


@pytest.fixture
def heron_file(tmp_path: Path) -> Path:
    path = tmp_path / "heron.md"
    path.write_text(HERON, "utf-8")
    return path


@pytest.fixture
def store(heron_file: Path) -> ragqa.RagqaVectorStore:
    docs = ragqa.load_documents([heron_file])
    chunks = ragqa.ChineseTextSplitter(chunk_size=120, chunk_overlap=0).split_documents(docs)
    return ragqa.RagqaVectorStore.from_documents(chunks, DeterministicFakeEmbedding(size=16))


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


class RecordingChatModel(FakeListChatModel):
    """FakeListChatModel that keeps the messages it was sent (invoked or streamed)."""

    seen: list[list[BaseMessage]] = []

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.seen.append(list(messages))
        return super()._call(messages, *args, **kwargs)

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._stream(messages, *args, **kwargs)


class RecordingLLM(FakeListLLM):
    """FakeListLLM that keeps each prompt and the stop strings it was given."""

    seen: list[tuple[str, list[str] | None]] = []

    def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.seen.append((prompt, stop))
        return super()._call(prompt, stop, run_manager, **kwargs)


# -- the public names -------------------------------------------------------------------------------


def test_every_public_name_resolves_and_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    section = readme[readme.index("## Python API (LangChain components)"):]
    for name in ragqa.__all__:
        assert getattr(ragqa, name) is not None
    for name in ("load_documents", "ChineseTextSplitter", "make_embeddings", "RagqaVectorStore", "get_prompt",
                 "make_qa_chain", "make_summarize_chain", "PromptBuilder"):
        assert f"`{name}" in section, f"{name} is not documented in the Python API section"


def test_get_prompt_is_a_prompt_template_with_the_files_variables() -> None:
    for name, variables in PROMPT_VARIABLES.items():
        for lang in LANGS:
            template = ragqa.get_prompt(name, lang)
            assert isinstance(template, PromptTemplate)
            assert set(template.input_variables) == variables
            values = {v: f"<{v}>" for v in variables}
            assert template.format(**values) == fill_prompt(name, lang, **values)
    with pytest.raises(ConfigError, match="unknown prompt"):
        ragqa.get_prompt("qa_magic", "en")


def test_make_embeddings_takes_a_path_a_name_or_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from ragqa.models import resolve_embedding

    created: list[dict] = []
    monkeypatch.setitem(sys.modules, "langchain_huggingface",
                        types.SimpleNamespace(HuggingFaceEmbeddings=lambda **kw: created.append(kw) or kw))
    monkeypatch.setitem(sys.modules, "transformers", None)
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")

    ragqa.make_embeddings(folder)  # a pathlib.Path
    ragqa.make_embeddings(str(folder))
    ragqa.make_embeddings(resolve_embedding(str(folder)))
    assert [c["model_name"] for c in created] == [str(folder.resolve())] * 3
    assert all(c["model_kwargs"] == {"local_files_only": True} for c in created)


# -- the VectorStore -------------------------------------------------------------------------------


def test_splitter_output_goes_into_the_store_with_offsets_and_sources(store, heron_file) -> None:
    hits = store.similarity_search_with_score("When is the festival?", k=10)
    assert len(hits) == len(store.index) >= 3
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    for doc, _ in hits:
        assert doc.metadata["source"] == str(heron_file)
        assert HERON[doc.metadata["start"]:].startswith(doc.page_content)
        assert "score" not in doc.metadata  # a VectorStore returns the metadata it was given
    hits[0][0].metadata["source"] = "edited"
    assert store.similarity_search("When is the festival?", k=1)[0].metadata["source"] == str(heron_file)


def test_hybrid_retriever_finds_the_exact_name_that_random_vectors_miss(store) -> None:
    """The fake embeddings rank at random; BM25 on the same index still puts 'Harrowgate' first."""
    retriever = store.as_hybrid_retriever(k=2)
    docs = retriever.invoke("Harrowgate railway station")
    assert "Harrowgate" in docs[0].page_content
    assert docs[0].metadata["bm25_score"] > 0 and "vector_score" in docs[0].metadata
    assert len(retriever.invoke("Harrowgate railway station", k=1)) == 1
    # a retriever is a live view: what is added later is found
    store.add_texts(["Quillby's mayor is Orla Brant."], [{"source": "news.md"}], ids=["news"])
    assert retriever.invoke("Orla Brant mayor")[0].id == "news"


def test_as_retriever_mmr_and_filters_come_from_langchain(store) -> None:
    assert len(store.as_retriever(search_kwargs={"k": 2}).invoke("heron")) == 2
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4}).invoke("heron")
    assert len(mmr) == 2 and mmr[0].id != mmr[1].id
    store.add_texts(["other file"], [{"source": "other.md"}])
    only = store.similarity_search("heron", k=5, filter={"source": "other.md"})
    assert [d.page_content for d in only] == ["other file"]
    relevant = store.similarity_search_with_relevance_scores("heron", k=3)
    assert all(0.0 <= s <= 1.0 for _, s in relevant)


def test_kb_store_ranks_like_the_pipeline_over_the_same_kb(make_pipeline, heron_file, tmp_path) -> None:
    """A KB opened as a VectorStore is searched by ragqa's own retrievers: same chunks, same ids,
    same hybrid ranking and scores as `ragqa ask --kb` (the pipeline's retriever)."""
    pipeline = make_pipeline(chunk_size=120, chunk_overlap=0, k=3, data_dir=tmp_path / "data")
    pipeline.index_paths(pipeline.open_kb("quillby", create=True), [heron_file])
    view, _ = pipeline.kb_index("quillby")
    question = "Where is the railway station?"
    expected = [(d.id, d.page_content, d.metadata["score"]) for d in pipeline.retriever(view).invoke(question)]
    # BM25's only match is among the fused top 3 (which is first depends on the fake vectors' noise)
    assert len(expected) == 3 and any("Harrowgate" in text for _, text, _ in expected)

    store = ragqa.KnowledgeBaseStore.open("quillby", pipeline.settings, pipeline.embeddings)
    got = store.as_hybrid_retriever(k=3).invoke(question)
    assert [(d.id, d.page_content, d.metadata["score"]) for d in got] == expected
    [again] = store.get_by_ids([got[0].id])
    assert again.page_content == got[0].page_content and again.metadata["source"] == str(heron_file.resolve())

    # the view Pipeline.build_index returns wraps the same way, as RagqaVectorStore(embedding, index=...)
    index, _ = pipeline.build_index([heron_file])
    vs = ragqa.RagqaVectorStore(pipeline.embeddings, index=index)
    assert isinstance(vs, ragqa.KnowledgeBaseStore)
    ranked = vs.as_hybrid_retriever(k=3).invoke(question)
    assert [d.page_content for d in ranked] == [text for _, text, _ in expected]
    assert ranked[0].metadata["source"] == str(heron_file)  # the path as it was given


# -- LCEL with ragqa's parts -----------------------------------------------------------------------


def test_retriever_and_prompt_template_in_a_plain_lcel_chain(store) -> None:
    chat = RecordingChatModel(responses=["The second weekend of March."], seen=[])
    chain = (
        {"context": store.as_hybrid_retriever(k=2) | format_docs, "question": RunnablePassthrough()}
        | ragqa.get_prompt("qa_stuff", "en")
        | chat
        | StrOutputParser()
    )
    assert chain.invoke("When is the Zorblat festival held?") == "The second weekend of March."
    [[message]] = chat.seen
    assert "second weekend of March" in message.content  # BM25 fetched the festival chunk
    assert message.content.rstrip().endswith("Question: When is the Zorblat festival held?")


def test_qa_chain_on_a_chat_model_sends_messages_and_streams(store) -> None:
    chat = GenericFakeChatModel(messages=iter(["It is held in March."]))
    chain = ragqa.make_qa_chain(chat, store.as_hybrid_retriever(k=2))
    parts = list(chain.stream({"question": "When is the Zorblat festival held?"}))
    assert "source_documents" in parts[0]
    answers = [p["answer"] for p in parts if "answer" in p]
    assert len(answers) > 1 and "".join(answers) == "It is held in March.[1]"  # token by token
    [prompt] = parts[0]["prompts"]
    assert [type(m) for m in prompt] == [HumanMessage]  # no system prompt unless asked for
    assert "second weekend of March" in prompt[0].content
    assert "<|im_start|>" not in prompt[0].content  # the chat model applies its own template


async def test_qa_chain_async_invoke_stream_and_batch(store) -> None:
    chat = GenericFakeChatModel(messages=iter(["In March.", "Herons.", "a", "b"]))
    chain = ragqa.make_qa_chain(chat, store.as_hybrid_retriever(k=2))
    assert (await chain.ainvoke("When is the festival?"))["answer"] == "In March.[1]"
    parts = [p async for p in chain.astream({"question": "What does it celebrate?"})]
    assert "source_documents" in parts[0] and "".join(p.get("answer", "") for p in parts) == "Herons."
    assert sorted(r["answer"] for r in await chain.abatch(["one?", "two?"])) == ["a", "b"]


def test_chat_model_history_becomes_alternating_messages(fixed_retriever) -> None:
    docs = [Document(page_content="Herons nest in the marsh.", metadata={"source": "a.md"})]
    chat = RecordingChatModel(responses=["In the marsh."], seen=[])
    retriever = fixed_retriever(docs)
    chain = ragqa.make_qa_chain(chat, retriever, system_prompt="Answer briefly.")
    history = [{"role": "user", "content": "What birds live there?"}, {"role": "assistant", "content": "Herons."}]
    result = chain.invoke({"question": "Where do they nest?", "history": history})
    assert result["answer"] == "In the marsh.[1]"
    [sent] = chat.seen
    assert [type(m) for m in sent] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert [m.content for m in sent[:3]] == ["Answer briefly.", "What birds live there?", "Herons."]
    assert "Where do they nest?" in sent[3].content and "Herons nest in the marsh." in sent[3].content
    assert retriever.questions == ["What birds live there?\nWhere do they nest?"]


def test_batch_answers_two_questions_each_from_its_own_prompt(store) -> None:
    # BM25: the fake embedding's vectors are noise, and each question shares its words with one chunk only
    chain = ragqa.make_qa_chain(ParrotFakeChatModel(), store.as_bm25_retriever(k=1))  # echoes the prompt
    questions = ["Where is the railway station?", "What is in the smoked eel pie?"]  # words of one chunk each
    results = chain.batch(questions)
    assert len(results) == 2
    for question, result in zip(questions, results):
        assert question in result["answer"]
    assert "Harrowgate" in results[0]["answer"] and "eel pie" in results[1]["answer"]


def test_refine_on_a_chat_model(store) -> None:
    chat = RecordingChatModel(responses=["draft", "better", "final"], seen=[])
    result = ragqa.make_qa_chain(chat, store.as_hybrid_retriever(k=3), chain_type="refine").invoke("When?")
    assert result["answer"] == "final" and len(chat.seen) == 3
    assert "draft" in chat.seen[1][-1].content


def test_completion_llm_gets_the_default_chat_format_and_its_stop_strings(store) -> None:
    llm = RecordingLLM(responses=["March."], seen=[])
    result = ragqa.make_qa_chain(llm, store.as_hybrid_retriever(k=2)).invoke("When is the festival?")
    assert result["answer"] == "March.[1]"
    [(prompt, stop)] = llm.seen
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert stop == ["<|im_end|>"]
    named = RecordingLLM(responses=["x"], seen=[])
    ragqa.make_qa_chain(named, store.as_hybrid_retriever(k=1), chat_format="alpaca-2").invoke("When?")
    assert named.seen[0][0].startswith("[INST] <<SYS>>") and named.seen[0][1] == ["</s>"]


def test_positional_chain_type_and_conflicting_options() -> None:
    llm = FakeStreamingListLLM(responses=["a", "b"])
    retriever = ragqa.RagqaVectorStore.from_texts(["x", "y"], DeterministicFakeEmbedding(size=4)).as_retriever()
    assert ragqa.make_qa_chain(llm, retriever, "refine").name == "ragqa_qa_refine"
    pb = PromptBuilder.for_model(llm)
    with pytest.raises(TypeError, match="either a PromptBuilder or chat_format"):
        ragqa.make_qa_chain(llm, retriever, pb, chat_format="chatml")
    with pytest.raises(ConfigError, match="own chat template"):
        ragqa.make_qa_chain(FakeListChatModel(responses=["x"]), retriever, chat_format="chatml")
    with pytest.raises(ConfigError, match="needs a ragqa model"):
        ragqa.make_qa_chain(llm, retriever, chat_format="auto")
    with pytest.raises(ConfigError, match="less than the context window"):
        ragqa.make_qa_chain(llm, retriever, context_window=256, max_new_tokens=256)


# -- token budgets for models of every kind --------------------------------------------------------


def test_a_model_without_its_own_tokenizer_is_estimated_not_gpt2(store) -> None:
    """LangChain's default counter would fetch GPT-2's tokenizer from the hub (offline: fails)."""
    pb = PromptBuilder.for_model(FakeListLLM(responses=["x"]))
    assert pb.count_tokens is estimate_tokens and pb.budget == 4096 - 400
    llm = RecordingLLM(responses=["x"], seen=[])
    small = ragqa.make_qa_chain(llm, store.as_hybrid_retriever(k=4), context_window=330, max_new_tokens=100)
    result = small.invoke("When is the festival?")
    assert 0 < len(result["source_documents"]) < 4
    assert "dropped to fit 230 prompt tokens" in result["notes"][0]
    assert estimate_tokens(llm.seen[0][0]) <= 230


def test_a_models_own_token_counter_is_used() -> None:
    class CountedLLM(FakeListLLM):
        def get_num_tokens(self, text: str) -> int:
            return len(text.split())

    llm = CountedLLM(responses=["x"])
    assert PromptBuilder.for_model(llm).count_tokens("a b c") == 3


def test_a_chat_model_whose_counter_fails_offline_falls_back_with_a_warning(caplog) -> None:
    class OfflineChat(FakeListChatModel):
        def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
            raise OSError("cannot download the tokenizer")

    with caplog.at_level(logging.WARNING, logger="ragqa.chains"):
        pb = PromptBuilder.for_model(OfflineChat(responses=["x"]), context_window=1000, max_new_tokens=100)
    assert "estimating instead" in caplog.text
    assert pb.count_tokens([HumanMessage("熊猫吃竹子")]) == estimate_tokens("熊猫吃竹子") + 4
    assert pb.budget == 900


def test_a_ragqa_llm_brings_its_format_context_and_stops(fake_backend_cls, store) -> None:
    from ragqa.llms import RagqaLLM

    backend = fake_backend_cls(["In March."], n_ctx=2048)
    llm = RagqaLLM(backend=backend, params={"max_tokens": 300}, stop_default=["<|im_end|>"])
    pb = PromptBuilder.for_model(llm)
    assert pb.chat_format.name == "chatml" and pb.budget == 2048 - 300  # the backend's auto format
    result = ragqa.make_qa_chain(llm, store.as_hybrid_retriever(k=2)).invoke("When is the festival?")
    assert result["answer"] == "In March.[1]"
    [call] = backend.calls
    assert call["stop"] == ["<|im_end|>"]  # once, not also passed again by the chain
    assert call["prompt"] == result["prompts"][0]


# -- summaries -------------------------------------------------------------------------------------


def test_summarize_chain_on_a_chat_model_invoke_stream_batch() -> None:
    chat = RecordingChatModel(responses=["A festival for herons."], seen=[])
    chain = ragqa.make_summarize_chain(chat)
    result = chain.invoke({"chunks": [HERON]})
    assert result == {"summary": "A festival for herons.", "chain": "stuff", "llm_calls": 1, "notes": []}
    [[message]] = chat.seen
    assert isinstance(message, HumanMessage) and "Zorblat" in message.content
    assert message.content.startswith("Write a concise summary")  # English text -> English prompt
    assert [p["summary"] for p in chain.stream(HERON)] == ["A festival for herons."]
    assert [r["summary"] for r in chain.batch([HERON, HERON])] == ["A festival for herons."] * 2


def test_summarize_chain_map_reduce_when_the_text_does_not_fit() -> None:
    chat = RecordingChatModel(responses=["part one", "part two", "whole"], seen=[])
    chunks = [HERON[:150], HERON[150:]]
    result = ragqa.make_summarize_chain(chat, chain_type="auto", context_window=250, max_new_tokens=100).invoke(
        {"chunks": chunks}
    )
    assert result["chain"] == "map_reduce" and result["llm_calls"] == 3 and result["summary"] == "whole"
    assert "part one" in chat.seen[2][-1].content and "part two" in chat.seen[2][-1].content


def test_summarize_chain_positional_pb_still_works() -> None:
    from ragqa.chat_formats import get_chat_format

    llm = RecordingLLM(responses=["短"], seen=[])
    pb = PromptBuilder(get_chat_format("chatml"), len, 2000)
    assert ragqa.make_summarize_chain(llm, pb).invoke("熊猫吃竹子。")["summary"] == "短"
    assert llm.seen[0][0].startswith("<|im_start|>")
