"""The llama.cpp backend: a GGUF model through llama-cpp-python (imported when a model loads)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragqa.chat_formats import AUTO, ChatFormat, get_chat_format, template_chat_format
from ragqa.config import Settings
from ragqa.errors import MissingDependencyError, ModelError
from ragqa.llms.base import GenerationStats, check_fits


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

    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: GenerationStats | None = None,
               **params: Any) -> Iterator[str]:
        if self.vocab_only:
            raise ModelError("this model was loaded without weights (dry run); it cannot generate")
        prompt_tokens = self.count_tokens(prompt)
        check_fits(prompt_tokens, params.get("max_tokens", 0), self.context_size())
        with self._lock:
            self.llm.reset()
            stats = stats if stats is not None else GenerationStats()
            stats.begin(prompt_tokens)
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
