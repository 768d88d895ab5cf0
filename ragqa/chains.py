"""QA chains (stuff, refine) as LangChain Runnables, with prompts fitted to the context window.

``stuff`` puts the retrieved chunks into one prompt. ``refine`` answers from the first chunk, then
shows the model each further chunk with its answer so far and lets it improve the answer.

Every prompt is measured with the model's tokenizer before it is sent. Chunks that do not fit
``n_ctx - max_new_tokens`` are dropped (lowest-ranked first) or, if even the best one does not
fit, cut; each such change is reported in the result's ``notes``.

The chains take any LangChain model. A completion model (an ``LLM``) gets one string, the
instruction wrapped in a chat format; a chat model (``BaseChatModel``) gets messages and applies
its own template.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.config import run_in_executor
from langchain_core.runnables.utils import AddableDict

from ragqa.chat_formats import AUTO, ChatFormat, Message, get_chat_format
from ragqa.config import DEFAULT_MAX_NEW_TOKENS, DEFAULT_N_CTX
from ragqa.errors import ConfigError, InputError
from ragqa.prompts import detect_lang, fill_prompt
from ragqa.words import estimate_tokens  # one cautious estimate, shared with the backends

log = logging.getLogger(__name__)

CHAIN_TYPES = ("stuff", "refine")
DEFAULT_CHAT_FORMAT = "chatml"  # for a completion model that is not a ragqa model (those know their own)
DEFAULT_CONTEXT_WINDOW = DEFAULT_N_CTX  # tokens, for a model that brings no n_ctx of its own

Prompt = str | list[BaseMessage]  # a completion model's string, or a chat model's messages


@dataclass
class PromptBuilder:
    """Turns an instruction into the exact model prompt and keeps it inside the token budget.

    With a ``chat_format`` the prompt is one string for a completion model; with ``chat_format``
    None it is a list of messages for a chat model, and ``count_tokens`` counts messages.
    ``PromptBuilder.for_model(llm)`` picks both, and the budget, for any LangChain model.
    """

    chat_format: ChatFormat | None
    count_tokens: Callable[[Any], int]  # prompt (str, or messages) -> tokens
    budget: int  # tokens the prompt may use: n_ctx - max_new_tokens
    system_prompt: str | None = None
    lang: str = "auto"
    history: tuple[Message, ...] = ()  # earlier turns of a conversation, rendered before the instruction

    @classmethod
    def for_model(
        cls,
        llm: Any,
        *,
        chat_format: str | ChatFormat | None = None,
        context_window: int | None = None,
        max_new_tokens: int | None = None,
        system_prompt: str | None = None,
        lang: str = "auto",
    ) -> "PromptBuilder":
        """A builder that suits ``llm``.

        - a chat model: messages; tokens by its ``get_num_tokens_from_messages``.
        - a ragqa model (``RagqaLLM``): its own chat format (``auto``: the model file's template),
          tokenizer and context size, as ``ragqa ask`` uses them.
        - any other completion model: ``chat_format`` (default chatml); tokens by its
          ``get_num_tokens``.

        A model without a tokenizer of its own (LangChain would fetch GPT-2's) is measured with a
        cautious estimate instead. The budget is ``context_window - max_new_tokens`` (4096 - 400).
        """
        model = _unwrap(llm)
        backend = getattr(model, "backend", None)
        if not isinstance(model, BaseChatModel) and _is_ragqa_backend(backend):
            fmt = chat_format if isinstance(chat_format, ChatFormat) else backend.chat_format(chat_format or AUTO)
            new = max_new_tokens or (getattr(model, "params", None) or {}).get("max_tokens") or DEFAULT_MAX_NEW_TOKENS
            window = context_window or backend.context_size()
            return cls(fmt, backend.count_tokens, _budget(window, new), system_prompt, lang)
        window = context_window or DEFAULT_CONTEXT_WINDOW
        budget = _budget(window, max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        if isinstance(model, BaseChatModel):
            if chat_format is not None:
                raise ConfigError("a chat model applies its own chat template; leave chat_format out")
            return cls(None, _message_counter(model), budget, system_prompt, lang)
        if isinstance(chat_format, str) and chat_format.strip().lower() == AUTO:
            raise ConfigError(
                f"chat_format 'auto' needs a ragqa model (RagqaLLM) that carries its template; "
                f"name a format for {type(model).__name__} (e.g. {DEFAULT_CHAT_FORMAT})"
            )
        if not isinstance(chat_format, ChatFormat):
            chat_format = get_chat_format(chat_format or DEFAULT_CHAT_FORMAT)
        return cls(chat_format, _text_counter(model), budget, system_prompt, lang)

    @property
    def stop(self) -> list[str]:
        """Where a completion model's turn ends in this chat format (chat models stop by themselves)."""
        return list(self.chat_format.stop) if self.chat_format is not None else []

    def language(self, question: str) -> str:
        return detect_lang(question) if self.lang == "auto" else self.lang

    def render(self, instruction: str) -> Prompt:
        return self._render([*self.history, {"role": "user", "content": instruction}])

    def _render(self, msgs: Sequence[Message]) -> Prompt:
        if self.chat_format is None:
            return to_messages(msgs, self.system_prompt)
        return self.chat_format.render(msgs, self.system_prompt)

    def with_history(self, history: Sequence[Any], share: float = 0.5) -> tuple["PromptBuilder", list[str]]:
        """This builder with earlier turns, keeping the newest that fit ``share`` of the budget.

        ``history`` is OpenAI-style messages (``{"role", "content"}``, as Gradio's Chatbot keeps
        them) or ``(question, answer)`` pairs. Incomplete turns are dropped; whole turns are kept
        from the newest back, so the documents still get most of the context.
        """
        from ragqa.citations import strip_markers

        # an earlier answer's [n] markers point at that turn's passages, not this one's
        turns = [(q, strip_markers(a)) for q, a in _pair_turns(history)]
        kept: list[tuple[str, str]] = []
        for q, a in reversed(turns):
            candidate = [(q, a), *kept]
            msgs = _turn_messages(candidate)
            probe = self._render([*msgs, {"role": "user", "content": ""}])
            if self.count_tokens(probe) > self.budget * share:
                break
            kept = candidate
        notes = []
        if len(kept) < len(turns):
            notes.append(f"conversation: kept the last {len(kept)} of {len(turns)} earlier turns to fit the context")
        return replace(self, history=tuple(_turn_messages(kept))), notes

    def fits(self, prompt: Prompt) -> bool:
        return self.count_tokens(prompt) <= self.budget

    def most_that_fit(self, make_prompt: Callable[[int], Prompt], n: int) -> int:
        """The largest k <= n whose prompt ``make_prompt(k)`` fits (k chunks, k characters): all n
        with one count, else a binary search (a prompt only grows with k), never a count per k (on
        a server backend each count is a /tokenize round trip). 0 when none does."""
        if n == 0 or self.fits(make_prompt(n)):
            return n
        lo, hi = 0, n - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(make_prompt(mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fit_text(self, make_prompt: Callable[[str], Prompt], text: str) -> tuple[Prompt, str]:
        """Longest prefix of ``text`` whose prompt fits; -> (prompt, prefix)."""
        if self.fits(prompt := make_prompt(text)):
            return prompt, text
        lo = self.most_that_fit(lambda k: make_prompt(text[:k]), len(text) - 1) if text else 0
        if lo == 0:
            raise InputError(
                f"the question and instructions alone need more than the {self.budget}-token budget "
                "(shorten the question, raise n_ctx or lower max_new_tokens)"
            )
        return make_prompt(text[:lo]), text[:lo]


def to_messages(msgs: Sequence[Message], system_prompt: str | None = None) -> list[BaseMessage]:
    """ragqa's role/content turns as LangChain messages; a system prompt leads if there is one.

    >>> [type(m).__name__ for m in to_messages([{"role": "user", "content": "q"},
    ...     {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}], "Be brief.")]
    ['SystemMessage', 'HumanMessage', 'AIMessage', 'HumanMessage']
    """
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    out: list[BaseMessage] = [SystemMessage(system_prompt)] if system_prompt else []
    return out + [kinds[m["role"]](m["content"]) for m in msgs]


def _budget(context_window: int, max_new_tokens: int) -> int:
    if not 0 < max_new_tokens < context_window:
        raise ConfigError(
            f"max_new_tokens ({max_new_tokens}) must be positive and less than the context window ({context_window})"
        )
    return context_window - max_new_tokens


def _unwrap(llm: Any) -> Any:
    """The model inside ``llm.bind(...)`` / ``with_config`` wrappers."""
    while hasattr(llm, "bound") and isinstance(llm.bound, Runnable):
        llm = llm.bound
    return llm


def _is_ragqa_backend(backend: Any) -> bool:
    return all(callable(getattr(backend, name, None)) for name in ("chat_format", "context_size", "count_tokens"))


def _overrides(model: Any, name: str) -> bool:
    return getattr(type(model), name, None) is not getattr(BaseLanguageModel, name)


def _has_own_tokenizer(model: Any) -> bool:
    """LangChain's default ``get_num_tokens`` downloads GPT-2's tokenizer: not the model's own."""
    if not isinstance(model, BaseLanguageModel):
        return callable(getattr(model, "get_num_tokens", None))
    return bool(model.custom_get_token_ids) or _overrides(model, "get_num_tokens") or _overrides(model, "get_token_ids")


def _probe(count: Callable[[Any], int], sample: Any, model: Any) -> bool:
    """Whether the model's counter works here (offline, a tiktoken or hub tokenizer may not load)."""
    try:
        count(sample)
        return True
    except Exception as exc:  # any backend's own error type
        log.warning("%s cannot count tokens here (%s: %s); estimating instead",
                    type(model).__name__, type(exc).__name__, exc)
        return False


def _text_counter(model: Any) -> Callable[[str], int]:
    if _has_own_tokenizer(model) and _probe(model.get_num_tokens, "熊猫 panda", model):
        return model.get_num_tokens
    return estimate_tokens


def _message_counter(model: BaseChatModel) -> Callable[[list[BaseMessage]], int]:
    sample = [HumanMessage("熊猫 panda")]
    if _overrides(model, "get_num_tokens_from_messages") and _probe(model.get_num_tokens_from_messages, sample, model):
        return model.get_num_tokens_from_messages
    per_text = _text_counter(model)

    def count(messages: list[BaseMessage]) -> int:
        return sum(per_text(str(m.text)) + 4 for m in messages)  # + role markers around each turn

    return count


def format_context(docs: Sequence[Document]) -> str:
    """Numbered passages, so an answer can point at [1], [2], ..."""
    return "\n\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(docs, 1))


def build_stuff_prompt(
    question: str, docs: Sequence[Document], pb: PromptBuilder, context: str = "chunks",
) -> tuple[str, list[Document], list[str]]:
    """The stuff prompt with as many top-ranked chunks as fit; -> (prompt, used chunks, notes).
    ``context="sentences"`` puts only the chunks' sentences that bear on the question in the
    prompt (ragqa.context); the used chunks handed back are the retrieved ones, whole, so their
    text and offsets stay those of the file."""
    from ragqa.context import compact_chunks

    lang = pb.language(question)
    shown = compact_chunks(question, docs) if context == "sentences" else list(docs)

    def make(chunks: Sequence[Document]) -> str:
        return pb.render(fill_prompt("qa_stuff", lang, context=format_context(chunks), question=question))

    n = pb.most_that_fit(lambda k: make(shown[:k]), len(shown))  # top-ranked first
    notes = []
    if n:
        if n < len(docs):
            notes.append(
                f"context budget: used {n} of {len(docs)} retrieved chunks "
                f"({len(docs) - n} dropped to fit {pb.budget} prompt tokens)"
            )
        return make(shown[:n]), list(docs[:n]), notes
    if not docs:
        return make([]), [], ["no chunks were retrieved"]
    first = shown[0]
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
    """LLMs stream str; chat models stream message chunks (whose content may be a list of parts)."""
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, BaseMessage):
        return str(chunk.text)
    return str(getattr(chunk, "content", chunk))


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


def recent_turns(history: Sequence[Any], budget: int) -> list[tuple[str, str]]:
    """The latest (question, answer) turns of ``history`` whose text adds up to at most ``budget``
    characters, oldest first: what a conversation may cost is bounded before anything of it is
    embedded or put in a prompt.

    >>> recent_turns([("a" * 5, "b" * 5), ("c", "d")], budget=4)
    [('c', 'd')]
    """
    kept: list[tuple[str, str]] = []
    used = 0
    for q, a in reversed(_pair_turns(history)):
        used += len(q) + len(a)
        if used > budget:
            break
        kept.append((q, a))
    return kept[::-1]


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
    llm: Runnable,
    retriever: BaseRetriever,
    pb: PromptBuilder | None = None,
    chain_type: str = "stuff",
    *,
    chat_format: str | ChatFormat | None = None,
    context_window: int | None = None,
    max_new_tokens: int | None = None,
    system_prompt: str | None = None,
    lang: str = "auto",
    context: str = "chunks",
    citations: bool = True,
    embeddings: Any = None,
) -> Runnable:
    """A Runnable: ``{"question": str, "history"?: messages, "documents"?: [Document]}`` (or a
    str) -> ``{"answer", "source_documents", "prompts", "notes", "citations", "unsupported"}``.
    ``documents`` given: those chunks are used as they are and ``retriever`` is not asked.

    With ``citations`` (default) the answer carries ``[n]`` markers after the sentences its
    sources support, checked by ragqa (``ragqa.citations``; ``embeddings``, optional, picks among
    near ties): ``citations`` is a list of ``{"n", "source", "start", "end", "quote",
    "sentence"}`` (``quote`` the file's text at ``[start, end)``), ``unsupported`` the answer
    sentences no source supports. They come with the last part of a stream.

    ``llm`` is any LangChain LLM or chat model. Without a PromptBuilder ``pb``, one is made for
    it from the keyword options (see ``PromptBuilder.for_model``). ``stream`` yields the sources and
    prompt first, then the answer token by token. With a ``history`` (earlier turns), retrieval
    searches the previous question with this one and the prompt is a multi-turn conversation (the
    chat format's, or alternating Human/AI messages for a chat model), the newest turns that fit kept.
    """
    pb, chain_type = _resolve_builder(
        llm, pb, chain_type, "stuff", chat_format=chat_format, context_window=context_window,
        max_new_tokens=max_new_tokens, system_prompt=system_prompt, lang=lang,
    )
    if chain_type not in CHAIN_TYPES:
        raise InputError(f"unknown chain {chain_type!r}; choose one of: {', '.join(CHAIN_TYPES)}")
    base_pb = pb
    generate = _generator(llm, pb)

    def run(inputs: Any) -> Iterator[AddableDict]:
        if not citations:
            yield from answer(inputs)
            return
        from ragqa.citations import Cited, Citer

        sources: list[Document] = []
        cited = Cited("")
        held: list[AddableDict] = []  # the chain's other parts, passed on before the next answer text

        def pieces() -> Iterator[str]:
            for part in answer(inputs):
                if "source_documents" in part:
                    sources[:] = part["source_documents"]
                if part.get("answer"):
                    yield part["answer"]
                rest = {k: v for k, v in part.items() if k != "answer"}
                if rest:
                    held.append(AddableDict(rest))

        citer = Citer(lambda: sources, embeddings)
        for text in citer.stream(pieces(), cited):
            while held:
                yield held.pop(0)
            yield AddableDict(answer=text)
        while held:
            yield held.pop(0)
        last = AddableDict(citations=[c.to_dict() for c in cited.citations], unsupported=list(cited.unsupported))
        if not cited.answer:
            last["answer"] = ""  # (an answer-less run still has an answer)
        yield last

    def answer(inputs: Any) -> Iterator[AddableDict]:
        question = _question(inputs)
        history = [] if isinstance(inputs, str) else inputs.get("history") or []
        pb, history_notes = base_pb.with_history(history) if history else (base_pb, [])
        given = None if isinstance(inputs, str) else inputs.get("documents")
        docs = list(given) if given is not None else retriever.invoke(retrieval_query(question, history))
        if chain_type == "stuff":
            prompt, used, notes = build_stuff_prompt(question, docs, pb, context)
            yield AddableDict(source_documents=used, prompts=[prompt], notes=history_notes + notes)
            for piece in generate.stream(prompt):
                yield AddableDict(answer=piece)
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
                answer = generate.invoke(prompt).strip()
                continue
            for piece in generate.stream(prompt):
                yield AddableDict(answer=piece)

    return _streaming_runnable(run, f"ragqa_qa_{chain_type}")


def _streaming_runnable(run: Callable[[Any], Iterator[AddableDict]], name: str) -> Runnable:
    """A RunnableLambda over the generator ``run``, with an async twin that steps it in a worker
    thread, so ``astream`` works too (RunnableLambda cannot stream a plain generator async)."""

    async def arun(inputs: Any, config: RunnableConfig) -> AsyncIterator[AddableDict]:
        steps = run(inputs)
        done = AddableDict()
        while (part := await run_in_executor(config, next, steps, done)) is not done:
            yield part

    return RunnableLambda(run, afunc=arun, name=name)


def _resolve_builder(
    llm: Any, pb: PromptBuilder | str | None, chain_type: str, default_chain: str, **options: Any
) -> tuple[PromptBuilder, str]:
    """The caller's PromptBuilder, or one for ``llm``; a chain name in ``pb``'s place is taken as
    the chain type (``make_qa_chain(llm, retriever, "refine")``)."""
    if isinstance(pb, str):
        if chain_type != default_chain:
            raise TypeError(f"chain type given twice: {pb!r} and {chain_type!r}")
        pb, chain_type = None, pb
    if pb is None:
        return PromptBuilder.for_model(llm, **options), chain_type
    given = sorted(k for k, v in options.items() if v is not None and not (k == "lang" and v == "auto"))
    if given:
        raise TypeError(f"give either a PromptBuilder or {', '.join(given)}, not both")
    return pb, chain_type


@dataclass
class _Generator:
    """Calls the model with a prompt; passes the chat format's stop strings to a completion model."""

    llm: Any
    stop: list[str]

    def _kwargs(self) -> dict[str, Any]:
        return {"stop": self.stop} if self.stop else {}

    def invoke(self, prompt: Prompt) -> str:
        return _text(self.llm.invoke(prompt, **self._kwargs()))

    def stream(self, prompt: Prompt) -> Iterator[str]:
        for chunk in self.llm.stream(prompt, **self._kwargs()):
            yield _text(chunk)


def _generator(llm: Any, pb: PromptBuilder) -> _Generator:
    model = _unwrap(llm)
    if not isinstance(model, BaseLanguageModel):  # a plain Runnable takes no stop argument
        return _Generator(llm, [])
    own = set(getattr(model, "stop_default", None) or ())  # a RagqaLLM already stops at its format's
    return _Generator(llm, [s for s in pb.stop if s not in own])


def first_prompt(
    question: str, docs: Sequence[Document], pb: PromptBuilder, chain_type: str, context: str = "chunks",
) -> tuple[str, list[Document], list[str]]:
    """The first prompt a chain would send (what ``--dry-run`` shows), the chunks the chain uses,
    and the context-budget notes."""
    if chain_type == "stuff":
        return build_stuff_prompt(question, docs, pb, context)
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


def _summary_prompt(name: str, lang: str, pb: PromptBuilder, text: str, **extra: str) -> tuple[Prompt, str]:
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

    generate = _generator(llm, pb)

    def call(prompt: Prompt) -> str:
        nonlocal calls
        calls += 1
        return generate.invoke(prompt).strip()

    def fitted(name: str, text: str, **extra: str) -> Prompt:
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


def make_summarize_chain(
    llm: Runnable,
    pb: PromptBuilder | None = None,
    chain_type: str = "auto",
    lang: str = "auto",
    *,
    chat_format: str | ChatFormat | None = None,
    context_window: int | None = None,
    max_new_tokens: int | None = None,
    system_prompt: str | None = None,
) -> Runnable:
    """A Runnable: ``{"chunks": [str, ...]}`` or a str -> ``{"summary", "chain", "llm_calls", "notes"}``.

    ``llm`` is any LangChain LLM or chat model; without ``pb`` a PromptBuilder is made for it from
    the keyword options (see ``PromptBuilder.for_model``). ``lang`` picks the prompt language
    (``auto``: from the text).
    """
    pb, chain_type = _resolve_builder(
        llm, pb, chain_type, "auto", chat_format=chat_format, context_window=context_window,
        max_new_tokens=max_new_tokens, system_prompt=system_prompt,
    )
    if chain_type not in SUMMARY_CHAINS:
        raise InputError(f"unknown summary chain {chain_type!r}; choose one of: {', '.join(SUMMARY_CHAINS)}")

    def run(inputs: Any) -> dict[str, Any]:
        chunks = [inputs] if isinstance(inputs, str) else list(inputs["chunks"])
        language = detect_lang("".join(chunks)[:2000]) if lang == "auto" else lang
        result = summarize_chunks(llm, chunks, pb, chain_type, language)
        return {"summary": result.summary, "chain": result.chain, "llm_calls": result.llm_calls, "notes": result.notes}

    return RunnableLambda(run, name=f"ragqa_summarize_{chain_type}")
