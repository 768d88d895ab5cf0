"""LLM backends, registered by name: llama.cpp (GGUF), transformers (HF folders and hub ids, CPU or
GPU, 4/8-bit) and openai (any OpenAI-compatible server: vLLM, llama.cpp's servers, ...).

A backend loads a model once and offers: token counting with the model's own tokenizer, its
context size, the chat format (``auto`` resolved from the model's own template), and streamed
generation of an already chat-formatted prompt. ``RagqaLLM`` wraps one as a LangChain LLM so
chains accept it like any other. ``load_backend`` picks the backend from the settings.

- ``base``: what every backend shares: ``Backend``, ``GenerationParams``, ``GenerationStats``,
  ``StopCutter``, ``check_fits``, ``RagqaLLM``.
- ``llamacpp``: ``LlamaCppBackend``.
- ``hf``: ``TransformersBackend``.
- ``openai_api``: ``OpenAIBackend``.
- here: the registry (``register_backend``, ``resolve_backend``, ``load_backend``).
"""

from __future__ import annotations

from collections.abc import Callable

from ragqa.config import TRANSFORMERS_ONLY, Settings
from ragqa.errors import ConfigError
from ragqa.llms.base import (
    Backend,
    GenerationParams,
    GenerationStats,
    RagqaLLM,
    StopCutter,
    check_fits,
)
from ragqa.llms.hf import TransformersBackend
from ragqa.llms.llamacpp import LlamaCppBackend
from ragqa.llms.openai_api import OpenAIBackend
from ragqa.models import guess_backend, resolve_llm_path

__all__ = [
    "Backend", "GenerationParams", "GenerationStats", "LlamaCppBackend", "OpenAIBackend", "RagqaLLM", "StopCutter",
    "TransformersBackend", "check_fits", "load_backend", "register_backend", "resolve_backend",
]


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


@register_backend("transformers")
def _load_transformers(settings: Settings, vocab_only: bool) -> Backend:
    return TransformersBackend(settings, vocab_only=vocab_only)


@register_backend("openai")
def _load_openai(settings: Settings, vocab_only: bool) -> Backend:
    return OpenAIBackend(settings)  # no weights here either way: a dry run costs the same


def resolve_backend(settings: Settings) -> str:
    """The backend name for these settings: as set, or picked from the model (``auto``)."""
    name = settings.backend if settings.backend != "auto" else guess_backend(settings.model, settings.base_url)
    if name != "transformers":
        for option in TRANSFORMERS_ONLY:
            if getattr(settings, option):
                raise ConfigError(
                    f"{option} needs the transformers backend, but model {settings.model!r} runs on {name} "
                    "(give a model folder or hub id, or set backend = transformers)"
                )
    return name


def load_backend(settings: Settings, *, backend: str | None = None, vocab_only: bool = False) -> Backend:
    """Load the model named in settings with the named backend (default: ``resolve_backend``)."""
    backend = backend or resolve_backend(settings)
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[backend](settings, vocab_only)
