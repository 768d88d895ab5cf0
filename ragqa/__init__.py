"""ragqa: local question answering and summarization over your own documents.

Importing ragqa loads no heavy library (torch, faiss, llama_cpp, gradio); they load on first use.
The parts are LangChain components (README "Python API"): ``load_documents``,
``ChineseTextSplitter``, ``make_embeddings``, ``RagqaVectorStore``, ``KnowledgeBaseStore`` (a
persistent knowledge base as a VectorStore), ``get_prompt``, ``make_qa_chain``, ``make_summarize_chain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "ChineseTextSplitter",
    "KnowledgeBaseStore",
    "Pipeline",
    "PromptBuilder",
    "RagqaError",
    "RagqaVectorStore",
    "Settings",
    "Source",
    "get_chat_format",
    "get_prompt",
    "load_documents",
    "load_settings",
    "make_embeddings",
    "make_qa_chain",
    "make_summarize_chain",
]

_LAZY = {
    "Answer": "ragqa.pipeline",
    "Pipeline": "ragqa.pipeline",
    "Source": "ragqa.pipeline",
    "ChineseTextSplitter": "ragqa.splitting",
    "RagqaError": "ragqa.errors",
    "Settings": "ragqa.config",
    "load_settings": "ragqa.config",
    "get_chat_format": "ragqa.chat_formats",
    "load_documents": "ragqa.loaders",
    "make_embeddings": "ragqa.embeddings",
    "make_qa_chain": "ragqa.chains",
    "make_summarize_chain": "ragqa.chains",
    "PromptBuilder": "ragqa.chains",
    "RagqaVectorStore": "ragqa.vectorstores",
    "KnowledgeBaseStore": "ragqa.vectorstores",
    "get_prompt": "ragqa.prompts",
}

if TYPE_CHECKING:
    from ragqa.chains import PromptBuilder, make_qa_chain, make_summarize_chain
    from ragqa.chat_formats import get_chat_format
    from ragqa.config import Settings, load_settings
    from ragqa.embeddings import make_embeddings
    from ragqa.errors import RagqaError
    from ragqa.loaders import load_documents
    from ragqa.pipeline import Answer, Pipeline, Source
    from ragqa.prompts import get_prompt
    from ragqa.vectorstores import KnowledgeBaseStore, RagqaVectorStore
    from ragqa.splitting import ChineseTextSplitter


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ragqa' has no attribute {name!r}")
