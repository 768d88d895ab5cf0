"""What every backend shares: the ``Backend`` protocol, generation params and stats, stop-string
cutting, the context check, and ``RagqaLLM``, the LangChain LLM over any backend."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk
from pydantic import Field, PrivateAttr

from ragqa.chat_formats import ChatFormat
from ragqa.config import Settings
from ragqa.errors import ModelError


@dataclass
class GenerationStats:
    """What the last generation cost; decode speed excludes prompt processing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0  # request -> first token
    decode_seconds: float = 0.0  # first token -> last token

    def begin(self, prompt_tokens: int) -> None:
        """Start counting a new generation (a sink handed to ``Backend.stream`` may be reused)."""
        self.prompt_tokens, self.completion_tokens, self.prompt_seconds, self.decode_seconds = prompt_tokens, 0, 0.0, 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        if self.completion_tokens < 2 or self.decode_seconds <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_seconds

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_s": round(self.prompt_seconds, 4),
            "decode_s": round(self.decode_seconds, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
        }


class Backend(Protocol):
    """What every backend offers. ``stream`` fills ``stats`` (when given) with what that
    generation cost, so concurrent generations each get their own figures; ``self.stats`` holds the
    last one's."""

    name: str
    notes: list[str]

    def count_tokens(self, text: str) -> int: ...
    def context_size(self) -> int: ...
    def chat_format(self, name: str) -> ChatFormat: ...
    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: GenerationStats | None = None,
               **params: Any) -> Iterator[str]: ...


@dataclass
class GenerationParams:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float
    seed: int

    @classmethod
    def from_settings(cls, s: Settings) -> "GenerationParams":
        return cls(s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.repeat_penalty, s.seed)


class StopCutter:
    """Cuts streamed text at the first stop string, holding back only what could start one.

    >>> cut = StopCutter(["</s>"])
    >>> cut.feed("Hello</"), cut.feed("s> never shown"), cut.stopped
    ('Hello', '', True)
    """

    def __init__(self, stop: list[str] | None) -> None:
        self.stop = [s for s in stop or [] if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return buf[: min(hits)]
        hold = max((n for s in self.stop for n in range(1, len(s)) if buf.endswith(s[:n])), default=0)
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """What was held back, once the stream ended without a stop string."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def cut(self, pieces: Iterable[str]) -> Iterator[str]:
        """``pieces`` up to the first stop string; stops reading them once one is seen."""
        for piece in pieces:
            text = self.feed(piece)
            if text:
                yield text
            if self.stopped:
                return
        if tail := self.flush():
            yield tail


def check_fits(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """Refuse a generation whose prompt plus answer cannot fit the context window."""
    if prompt_tokens + max_tokens > n_ctx:
        raise ModelError(f"the prompt ({prompt_tokens} tokens) plus max_new_tokens does not fit n_ctx {n_ctx}")


class RagqaLLM(LLM):
    """Any ragqa backend as a LangChain LLM (invoke, stream, batch; tokens counted by the model).

    ``stats`` is this object's own: what its last generation cost (one RagqaLLM per question when
    questions run concurrently)."""

    backend: Any
    params: dict[str, Any] = {}
    stop_default: list[str] = []
    stats: GenerationStats = Field(default_factory=GenerationStats)
    _open: list[Any] = PrivateAttr(default_factory=list)  # the backend generations now streaming

    @property
    def _llm_type(self) -> str:
        return f"ragqa-{self.backend.name}"

    def get_num_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(c.text for c in self._stream(prompt, stop, run_manager, **kwargs))

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        pieces = self.backend.stream(prompt, stop=(stop or []) + self.stop_default, stats=self.stats,
                                     **{**self.params, **kwargs})
        self._open.append(pieces)
        try:
            for text in pieces:
                chunk = GenerationChunk(text=text)
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            self._forget(pieces)

    def _forget(self, pieces: Any) -> None:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
        if pieces in self._open:
            self._open.remove(pieces)

    def close(self) -> None:
        """Stop any generation of this LLM still streaming (its consumer went away): the backend's
        stream is closed now, not whenever LangChain's wrappers are collected, so the model (or the
        model server's request) stops at once."""
        for pieces in list(self._open):
            try:
                self._forget(pieces)
            except ValueError:  # "generator already executing": its own thread closes it
                pass
