"""Sentence-transformers embeddings (text2vec, MiniLM, any local folder) as a LangChain Embeddings."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ragqa.errors import MissingDependencyError, ModelError
from ragqa.models import EmbeddingSpec, resolve_embedding

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


def make_embeddings(
    name: str, *, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
) -> "Embeddings":
    """Load a sentence-transformers model by starter name, local folder or hub id.

    Vectors are L2-normalised, so inner product in the index is cosine similarity.
    """
    spec = name if isinstance(name, EmbeddingSpec) else resolve_embedding(name)
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
