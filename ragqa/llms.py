"""LLM backends, registered by name. llama.cpp (GGUF, CPU or GPU offload) is the first.

A backend loads a model once and offers: token counting with the model's own tokenizer, its
context size, the chat format (``auto`` resolved from the model file), and streamed generation.
``RagqaLLM`` wraps one as a LangChain LLM so chains accept it like any other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk

from ragqa.chat_formats import AUTO, ChatFormat, get_chat_format, template_chat_format
from ragqa.config import Settings
from ragqa.errors import ConfigError, MissingDependencyError, ModelError
from ragqa.models import resolve_llm_path

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    """What the last generation cost; decode speed excludes prompt processing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0  # request -> first token
    decode_seconds: float = 0.0  # first token -> last token

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
    name: str
    notes: list[str]

    def count_tokens(self, text: str) -> int: ...
    def context_size(self) -> int: ...
    def chat_format(self, name: str) -> ChatFormat: ...
    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]: ...


@dataclass
class GenerationParams:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float

    @classmethod
    def from_settings(cls, s: Settings) -> "GenerationParams":
        return cls(s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.repeat_penalty)


class LlamaCppBackend:
    """A GGUF model through llama-cpp-python. ``vocab_only`` loads just the tokenizer."""

    name = "llama.cpp"

    def __init__(self, model_path: Path, settings: Settings, *, vocab_only: bool = False) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingDependencyError("llama-cpp-python") from None
        self.path = Path(model_path)
        self.settings = settings
        self.vocab_only = vocab_only
        self.notes: list[str] = []
        self.stats = GenerationStats()
        self._lock = threading.Lock()  # llama.cpp contexts are not thread-safe
        kwargs: dict[str, Any] = dict(
            model_path=str(self.path),
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads or _physical_cores(),
            n_gpu_layers=settings.n_gpu_layers,
            n_batch=min(settings.n_batch, settings.n_ctx),
            rope_freq_base=settings.rope_freq_base,
            rope_freq_scale=settings.rope_freq_scale,
            seed=settings.seed,
            vocab_only=vocab_only,
            verbose=False,
        )
        try:
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):
                self.llm = Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp cannot load {self.path}: {exc}") from None
        self.metadata: dict[str, str] = dict(getattr(self.llm, "metadata", {}) or {})
        self._warn_context()

    def _warn_context(self) -> None:
        arch = self.metadata.get("general.architecture", "")
        trained = int(self.metadata.get(f"{arch}.context_length", 0) or 0)
        s = self.settings
        if trained and s.n_ctx > trained and not (s.rope_freq_base or s.rope_freq_scale):
            self.notes.append(
                f"n_ctx {s.n_ctx} is over the model's trained context ({trained}) with no RoPE "
                "scaling: quality may drop (set rope_freq_base, NTK-style, or a smaller n_ctx)"
            )

    def context_size(self) -> int:
        return self.settings.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def token_text(self, token_id: int) -> str:
        """The text of one token ("" for an id outside the vocabulary, e.g. -1 for 'none')."""
        if not 0 <= token_id < self.llm.n_vocab():
            return ""
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    def chat_format(self, name: str) -> ChatFormat:
        """Resolve a format name or file; ``auto`` uses the GGUF's chat template, else alpaca-2.

        Token ids in a format file (``<FLM_FIX_TOKEN_n>``) become this model's text for them.
        """
        if name.strip().lower() != AUTO:
            return get_chat_format(name, token_text=self.token_text)
        template = self.metadata.get("tokenizer.chat_template")
        bos, eos = self.token_text(self.llm.token_bos()), self.token_text(self.llm.token_eos())
        fmt, notes = template_chat_format(self.path.name, template, bos, eos)
        self.notes.extend(notes)
        return fmt

    def stream(self, prompt: str, stop: list[str] | None = None, **params: Any) -> Iterator[str]:
        if self.vocab_only:
            raise ModelError("this model was loaded without weights (dry run); it cannot generate")
        prompt_tokens = self.count_tokens(prompt)
        if prompt_tokens + params.get("max_tokens", 0) > self.context_size():
            raise ModelError(
                f"the prompt ({prompt_tokens} tokens) plus max_new_tokens does not fit n_ctx {self.context_size()}"
            )
        with self._lock:
            self.llm.reset()
            stats = GenerationStats(prompt_tokens=prompt_tokens)
            t0 = time.perf_counter()
            first = last = None
            for part in self.llm.create_completion(prompt, stop=stop or [], stream=True, **params):
                choice = part["choices"][0]
                if choice.get("finish_reason") is None:  # one chunk per token; the last says why it ended
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    stats.completion_tokens += 1
                if choice["text"]:
                    yield choice["text"]
            if first is not None:
                stats.prompt_seconds = first - t0
                stats.decode_seconds = (last or first) - first
            self.stats = stats


def _physical_cores() -> int:
    """llama.cpp is fastest with one thread per physical core; os.cpu_count() counts SMT twins."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as fh:
            phys = core = None
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


BackendFactory = Callable[[Settings, bool], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def decorator(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return decorator


@register_backend("llama.cpp")
def _load_llama_cpp(settings: Settings, vocab_only: bool) -> Backend:
    return LlamaCppBackend(resolve_llm_path(settings.model), settings, vocab_only=vocab_only)


def load_backend(settings: Settings, *, backend: str = "llama.cpp", vocab_only: bool = False) -> Backend:
    """Load the model named in settings with the named backend."""
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[backend](settings, vocab_only)


class RagqaLLM(LLM):
    """Any ragqa backend as a LangChain LLM (invoke, stream, batch; tokens counted by the model)."""

    backend: Any
    params: dict[str, Any] = {}
    stop_default: list[str] = []

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
        for text in self.backend.stream(prompt, stop=(stop or []) + self.stop_default, **{**self.params, **kwargs}):
            chunk = GenerationChunk(text=text)
            if run_manager:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
