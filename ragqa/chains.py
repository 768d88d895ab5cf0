"""QA chains (stuff, refine) as LangChain Runnables, with prompts fitted to the context window.

``stuff`` puts the retrieved chunks into one prompt. ``refine`` answers from the first chunk, then
shows the model each further chunk with its answer so far and lets it improve the answer.

Every prompt is measured with the model's tokenizer before it is sent. Chunks that do not fit
``n_ctx - max_new_tokens`` are dropped (lowest-ranked first) or, if even the best one does not
fit, cut; each such change is reported in the result's ``notes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from ragqa.chat_formats import ChatFormat, Message
from ragqa.errors import InputError
from ragqa.prompts import detect_lang, fill_prompt

log = logging.getLogger(__name__)

CHAIN_TYPES = ("stuff", "refine")


@dataclass
class PromptBuilder:
    """Turns an instruction into the exact model prompt and keeps it inside the token budget."""

    chat_format: ChatFormat
    count_tokens: Callable[[str], int]
    budget: int  # tokens the prompt may use: n_ctx - max_new_tokens
    system_prompt: str | None = None
    lang: str = "auto"
    history: tuple[Message, ...] = ()  # earlier turns of a conversation, rendered before the instruction

    def language(self, question: str) -> str:
        return detect_lang(question) if self.lang == "auto" else self.lang

    def render(self, instruction: str) -> str:
        if not self.history:
            return self.chat_format.prompt(instruction, self.system_prompt)
        return self.chat_format.render([*self.history, {"role": "user", "content": instruction}], self.system_prompt)

    def with_history(self, history: Sequence[Any], share: float = 0.5) -> tuple["PromptBuilder", list[str]]:
        """This builder with earlier turns, keeping the newest that fit ``share`` of the budget.

        ``history`` is OpenAI-style messages (``{"role", "content"}``, as Gradio's Chatbot keeps
        them) or ``(question, answer)`` pairs. Incomplete turns are dropped; whole turns are kept
        from the newest back, so the documents still get most of the context.
        """
        turns = _pair_turns(history)
        kept: list[tuple[str, str]] = []
        for q, a in reversed(turns):
            candidate = [(q, a), *kept]
            msgs = _turn_messages(candidate)
            probe = self.chat_format.render([*msgs, {"role": "user", "content": ""}], self.system_prompt)
            if self.count_tokens(probe) > self.budget * share:
                break
            kept = candidate
        notes = []
        if len(kept) < len(turns):
            notes.append(f"conversation: kept the last {len(kept)} of {len(turns)} earlier turns to fit the context")
        return replace(self, history=tuple(_turn_messages(kept))), notes

    def fits(self, prompt: str) -> bool:
        return self.count_tokens(prompt) <= self.budget

    def fit_text(self, make_prompt: Callable[[str], str], text: str) -> tuple[str, str]:
        """Longest prefix of ``text`` whose prompt fits (binary search); -> (prompt, prefix)."""
        if self.fits(prompt := make_prompt(text)):
            return prompt, text
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(make_prompt(text[:mid])):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise InputError(
                f"the question and instructions alone need more than the {self.budget}-token budget "
                "(shorten the question, raise n_ctx or lower max_new_tokens)"
            )
        return make_prompt(text[:lo]), text[:lo]


def format_context(docs: Sequence[Document]) -> str:
    """Numbered passages, so an answer can point at [1], [2], ..."""
    return "\n\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(docs, 1))


def build_stuff_prompt(
    question: str, docs: Sequence[Document], pb: PromptBuilder
) -> tuple[str, list[Document], list[str]]:
    """The stuff prompt with as many top-ranked chunks as fit; -> (prompt, used chunks, notes)."""
    lang = pb.language(question)

    def make(chunks: Sequence[Document]) -> str:
        return pb.render(fill_prompt("qa_stuff", lang, context=format_context(chunks), question=question))

    kept: list[Document] = []
    for doc in docs:
        if not pb.fits(make([*kept, doc])):
            break
        kept.append(doc)
    notes = []
    if kept:
        if len(kept) < len(docs):
            notes.append(
                f"context budget: used {len(kept)} of {len(docs)} retrieved chunks "
                f"({len(docs) - len(kept)} dropped to fit {pb.budget} prompt tokens)"
            )
        return make(kept), kept, notes
    if not docs:
        return make([]), [], ["no chunks were retrieved"]
    first = docs[0]
    prompt, cut = pb.fit_text(lambda t: make([Document(page_content=t, metadata=first.metadata)]), first.page_content)
    notes.append(
        f"context budget: the best chunk was cut to {len(cut)} of {len(first.page_content)} characters "
        f"and {len(docs) - 1} others dropped to fit {pb.budget} prompt tokens"
    )
    return prompt, [Document(page_content=cut, metadata=first.metadata)], notes


def _refine_prompt(question: str, doc: Document, answer: str | None, pb: PromptBuilder) -> tuple[str, list[str]]:
    lang = pb.language(question)
    if answer is None:
        make = lambda t: pb.render(fill_prompt("qa_refine_initial", lang, context_str=t, question=question))  # noqa: E731
    else:
        make = lambda t: pb.render(  # noqa: E731
            fill_prompt("qa_refine", lang, question=question, existing_answer=answer, context_str=t)
        )
    prompt, used = pb.fit_text(make, doc.page_content)
    notes = []
    if len(used) < len(doc.page_content):
        notes.append(f"context budget: a chunk was cut to {len(used)} of {len(doc.page_content)} characters")
    return prompt, notes


def _text(chunk: Any) -> str:
    """LLMs stream str; chat models stream message chunks."""
    return chunk if isinstance(chunk, str) else str(getattr(chunk, "content", chunk))


def _pair_turns(history: Sequence[Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs from messages or pairs; a question without an answer is dropped."""
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    for item in history or ():
        if isinstance(item, (tuple, list)) and len(item) == 2:
            q, a = item
            if q and a:
                turns.append((_text(q), _text(a)))
            continue
        role, content = item.get("role"), _message_text(item.get("content"))
        if content is None or (item.get("metadata") or {}).get("title"):
            continue  # files, images and collapsible notes are not conversation
        if role == "user":
            pending = content
        elif role == "assistant" and pending is not None and content.strip():
            turns.append((pending, content))
            pending = None
    return turns


def _message_text(content: Any) -> str | None:
    """A message's text: a str, or Gradio 6's list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(texts) if texts else None
    return None


def _turn_messages(turns: Sequence[tuple[str, str]]) -> list[Message]:
    msgs: list[Message] = []
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


def retrieval_query(question: str, history: Sequence[Any] = ()) -> str:
    """What to search for: a follow-up ("那它在哪里举行？") alone names nothing, so the previous
    question is searched with it."""
    turns = _pair_turns(history)
    return f"{turns[-1][0]}\n{question}" if turns else question


def _question(inputs: Any) -> str:
    question = inputs if isinstance(inputs, str) else inputs.get("question", "")
    question = (question or "").strip()
    if not question:
        raise InputError("the question is empty")
    return question


def make_qa_chain(
    llm: Runnable, retriever: BaseRetriever, pb: PromptBuilder, chain_type: str = "stuff"
) -> Runnable:
    """A Runnable: ``{"question": str, "history"?: messages}`` (or a str) ->
    ``{"answer", "source_documents", "prompts", "notes"}``.

    ``stream`` yields the sources and prompt first, then the answer token by token. With a
    ``history`` (earlier turns), retrieval searches the previous question with this one and the
    prompt is the chat format's multi-turn conversation, the newest turns that fit kept.
    """
    if chain_type not in CHAIN_TYPES:
        raise InputError(f"unknown chain {chain_type!r}; choose one of: {', '.join(CHAIN_TYPES)}")
    base_pb = pb

    def run(inputs: Any) -> Iterator[AddableDict]:
        question = _question(inputs)
        history = [] if isinstance(inputs, str) else inputs.get("history") or []
        pb, history_notes = base_pb.with_history(history) if history else (base_pb, [])
        docs = retriever.invoke(retrieval_query(question, history))
        if chain_type == "stuff":
            prompt, used, notes = build_stuff_prompt(question, docs, pb)
            yield AddableDict(source_documents=used, prompts=[prompt], notes=history_notes + notes)
            for chunk in llm.stream(prompt):
                yield AddableDict(answer=_text(chunk))
            return
        if not docs:
            yield AddableDict(source_documents=[], prompts=[], notes=["no chunks were retrieved"], answer="")
            return
        yield AddableDict(source_documents=list(docs), notes=history_notes)
        answer: str | None = None
        for i, doc in enumerate(docs):
            prompt, notes = _refine_prompt(question, doc, answer, pb)
            yield AddableDict(prompts=[prompt], notes=notes)
            if i < len(docs) - 1:
                log.info("refine: step %d of %d", i + 1, len(docs))
                answer = _text(llm.invoke(prompt)).strip()
                continue
            for chunk in llm.stream(prompt):
                yield AddableDict(answer=_text(chunk))

    return RunnableLambda(run, name=f"ragqa_qa_{chain_type}")


def first_prompt(
    question: str, docs: Sequence[Document], pb: PromptBuilder, chain_type: str
) -> tuple[str, list[Document], list[str]]:
    """The first prompt a chain would send (what ``--dry-run`` shows), the chunks the chain uses,
    and the context-budget notes."""
    if chain_type == "stuff":
        return build_stuff_prompt(question, docs, pb)
    if not docs:
        return "", [], ["no chunks were retrieved"]
    prompt, notes = _refine_prompt(question, docs[0], None, pb)
    return prompt, list(docs), notes


# -- summarization ------------------------------------------------------------------------------

SUMMARY_CHAINS = ("auto", "stuff", "refine", "map_reduce")


@dataclass
class SummaryResult:
    summary: str
    chain: str  # the chain actually used (auto resolves to stuff or map_reduce)
    llm_calls: int
    notes: list[str]


def _summary_prompt(name: str, lang: str, pb: PromptBuilder, text: str, **extra: str) -> tuple[str, str]:
    """The prompt with as much of ``text`` as fits; -> (prompt, the text that went in)."""
    return pb.fit_text(lambda t: pb.render(fill_prompt(name, lang, text=t, **extra)), text)


def summarize_chunks(
    llm: Runnable, chunks: Sequence[str], pb: PromptBuilder, chain_type: str = "auto", lang: str = "zh",
    on_step: Callable[[str], None] | None = None,
) -> SummaryResult:
    """Summarize one document given as ordered chunks.

    - ``stuff``: the whole text in one prompt (cut, with a note, if it does not fit).
    - ``refine``: summarize the first chunk, then improve the summary with each next chunk.
    - ``map_reduce``: summarize each chunk, then combine the summaries; groups of summaries that
      still do not fit one prompt are combined first, level by level, until one prompt holds all.
    - ``auto``: stuff when the whole text fits the context budget, else map_reduce.
    """
    if chain_type not in SUMMARY_CHAINS:
        raise InputError(f"unknown summary chain {chain_type!r}; choose one of: {', '.join(SUMMARY_CHAINS)}")
    chunks = [c for c in chunks if c.strip()]
    if not chunks:
        raise InputError("nothing to summarize: the document has no text")
    notes: list[str] = []
    calls = 0
    step = on_step or (lambda _: None)

    def call(prompt: str) -> str:
        nonlocal calls
        calls += 1
        return _text(llm.invoke(prompt)).strip()

    def fitted(name: str, text: str, **extra: str) -> str:
        prompt, used = _summary_prompt(name, lang, pb, text, **extra)
        if len(used) < len(text):
            notes.append(f"context budget: {name} input cut to {len(used)} of {len(text)} characters")
        return prompt

    full = "\n\n".join(chunks)
    if chain_type == "auto":
        chain_type = "stuff" if pb.fits(pb.render(fill_prompt("sum_stuff", lang, text=full))) else "map_reduce"
    if chain_type == "stuff":
        step("stuff")
        return SummaryResult(call(fitted("sum_stuff", full)), "stuff", calls, notes)
    if chain_type == "refine":
        summary = ""
        for i, chunk in enumerate(chunks):
            step(f"refine {i + 1}/{len(chunks)}")
            if i == 0:
                summary = call(fitted("sum_stuff", chunk))
            else:
                summary = call(fitted("sum_refine", chunk, existing_answer=summary)) or summary
        return SummaryResult(summary, "refine", calls, notes)

    summaries = []
    for i, chunk in enumerate(chunks):
        step(f"map {i + 1}/{len(chunks)}")
        summaries.append(call(fitted("sum_stuff", chunk)))
    level = 0
    while True:
        level += 1
        groups = _group_to_fit(summaries, lambda t: pb.fits(pb.render(fill_prompt("sum_reduce", lang, text=t))))
        if len(groups) == 1:
            step("reduce")
            return SummaryResult(call(fitted("sum_reduce", groups[0])), "map_reduce", calls, notes)
        step(f"reduce level {level}: {len(summaries)} summaries in {len(groups)} groups")
        summaries = [call(fitted("sum_reduce", g)) for g in groups]


def _group_to_fit(parts: Sequence[str], fits: Callable[[str], bool]) -> list[str]:
    """Join consecutive parts into as few groups as fit; a part too big alone is its own group.

    >>> _group_to_fit(["aa", "bb", "cc"], lambda t: len(t) <= 6)
    ['aa\\n\\nbb', 'cc']
    """
    groups: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}\n\n{part}" if current else part
        if current and not fits(candidate):
            groups.append(current)
            current = part
        else:
            current = candidate
    if current:
        groups.append(current)
    if len(groups) == len(parts) and len(parts) > 1:
        # no two parts fit together: pair them anyway so every level halves the count (the
        # reduce prompt then cuts each group's tail, with a note)
        groups = [f"{a}\n\n{b}" for a, b in zip(groups[::2], groups[1::2])] + ([groups[-1]] if len(groups) % 2 else [])
    return groups


def make_summarize_chain(llm: Runnable, pb: PromptBuilder, chain_type: str = "auto", lang: str = "auto") -> Runnable:
    """A Runnable: ``{"chunks": [str, ...]}`` or a str -> ``{"summary", "chain", "llm_calls", "notes"}``."""
    if chain_type not in SUMMARY_CHAINS:
        raise InputError(f"unknown summary chain {chain_type!r}; choose one of: {', '.join(SUMMARY_CHAINS)}")

    def run(inputs: Any) -> dict[str, Any]:
        chunks = [inputs] if isinstance(inputs, str) else list(inputs["chunks"])
        language = detect_lang("".join(chunks)[:2000]) if lang == "auto" else lang
        result = summarize_chunks(llm, chunks, pb, chain_type, language)
        return {"summary": result.summary, "chain": result.chain, "llm_calls": result.llm_calls, "notes": result.notes}

    return RunnableLambda(run, name=f"ragqa_summarize_{chain_type}")
