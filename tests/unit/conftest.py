"""Shared fakes for the unit tests: no embedding model, no llama.cpp weights, no network.

Every test runs with the RAGQA_* environment cleared and XDG_CACHE_HOME pointed into its own
tmp_path, so neither the developer's settings nor ~/.cache can leak in or be written to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever

from ragqa.chat_formats import ChatFormat, get_chat_format
from ragqa.config import Settings
from ragqa.llms import GenerationStats

EMBED_DIM = 16


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RAGQA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from ragqa import words

    monkeypatch.setattr(words, "_fold_name", words.DEFAULT_KEYWORD_FOLD)  # a Pipeline sets it process-wide


# --------------------------------------------------------------------------- embeddings


class CountingEmbeddings:
    """DeterministicFakeEmbedding that counts how many texts it was asked to embed.

    The probe texts a new KB's fingerprint is taken from (ragqa.store.base.PROBE_TEXTS) are not
    counted: the counts are of the user's chunks.
    """

    def __init__(self, size: int = EMBED_DIM) -> None:
        self.inner = DeterministicFakeEmbedding(size=size)
        self.document_calls = 0
        self.documents_embedded = 0
        self.query_calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from ragqa.store.base import PROBE_TEXTS

        if list(texts) != list(PROBE_TEXTS):
            self.document_calls += 1
            self.documents_embedded += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.query_calls += 1
        return self.inner.embed_query(text)


# --------------------------------------------------------------------------- LLM backend


def char_tokens(text: str) -> int:
    """A stand-in tokenizer: one token per character (keeps budget arithmetic exact)."""
    return len(text)


class FakeBackend:
    """Implements ragqa.llms.Backend; 'generates' canned answers word by word."""

    name = "fake"

    def __init__(
        self,
        answers: Sequence[str] = ("熊猫 主要 吃 竹子。",),
        *,
        n_ctx: int = 4096,
        count_tokens: Callable[[str], int] = char_tokens,
    ) -> None:
        self.answers = list(answers)
        self.n_ctx = n_ctx
        self._count = count_tokens
        self.notes: list[str] = []
        self.stats = GenerationStats()
        self.calls: list[dict[str, Any]] = []  # one per generation: prompt, stop, params

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def context_size(self) -> int:
        return self.n_ctx

    def chat_format(self, name: str) -> ChatFormat:
        return get_chat_format("chatml" if name.strip().lower() == "auto" else name)

    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: GenerationStats | None = None,
               **params: Any) -> Iterator[str]:
        answer = self.answers[min(len(self.calls), len(self.answers) - 1)]
        self.calls.append({"prompt": prompt, "stop": list(stop or []), "params": dict(params)})
        words = answer.split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word
        self.stats = GenerationStats(
            prompt_tokens=self.count_tokens(prompt), completion_tokens=len(words),
            prompt_seconds=0.01, decode_seconds=0.02,
        )
        if stats is not None:  # the caller's own sink (one per question)
            stats.__dict__.update(self.stats.__dict__)


# --------------------------------------------------------------------------- retriever


class FixedRetriever(BaseRetriever):
    """Returns the same documents, in the same order, for every question; records the questions."""

    docs: list[Document]
    questions: list[str] = []

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.questions.append(query)
        return list(self.docs)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_settings(cache_dir: Path, data_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("cache_dir", cache_dir)
        overrides.setdefault("data_dir", data_dir)
        # unit tests parse in process (fakes, tiny files); worker isolation has tests of its own
        overrides.setdefault("parse_isolation", "off")
        return Settings(**overrides)

    return make


@pytest.fixture
def make_pipeline(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """A Pipeline whose embedding model is a CountingEmbeddings and whose LLM is a FakeBackend."""
    from ragqa.pipeline import Pipeline

    def make(
        *, embeddings: CountingEmbeddings | None = None, backend: FakeBackend | None = None, **overrides: Any
    ) -> Pipeline:
        pipeline = Pipeline(make_settings(**overrides))
        pipeline._embeddings = embeddings if embeddings is not None else CountingEmbeddings()
        pipeline._backends[False] = backend if backend is not None else FakeBackend()
        return pipeline

    return make


@pytest.fixture
def fake_backend_cls() -> type[FakeBackend]:
    return FakeBackend


@pytest.fixture
def counting_embeddings_cls() -> type[CountingEmbeddings]:
    return CountingEmbeddings


@pytest.fixture
def fixed_retriever() -> Callable[[Sequence[Document]], FixedRetriever]:
    def make(docs: Sequence[Document]) -> FixedRetriever:
        return FixedRetriever(docs=list(docs), questions=[])

    return make


@pytest.fixture
def indexed_paths(cache_dir: Path, data_dir: Path) -> Callable[[], list[str]]:
    """Files indexed so far, in the internal files KB (ask PATH) and in every knowledge base."""
    return lambda: indexed_files(cache_dir) + indexed_files(data_dir)


def indexed_files(root: Path) -> list[str]:
    """Paths of the files indexed (status ok) in every knowledge base under ``root``."""
    import sqlite3

    out: list[str] = []
    for db in sorted(root.rglob("kb.sqlite")):
        con = sqlite3.connect(db)
        try:
            out += [r[0] for r in con.execute("SELECT path FROM files WHERE status = 'ok' ORDER BY path")]
        finally:
            con.close()
    return out
