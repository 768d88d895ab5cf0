"""Retrievers over a ChunkIndex, as LangChain BaseRetrievers."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever


class VectorRetriever(BaseRetriever):
    """Top-k chunks by cosine similarity; each result carries ``metadata["score"]``."""

    index: Any  # ragqa.store.ChunkIndex
    embeddings: Any  # a LangChain Embeddings
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        vector = self.embeddings.embed_query(query)
        return [
            Document(page_content=doc.page_content, metadata={**doc.metadata, "score": score})
            for doc, score in self.index.search(vector, self.k)
        ]
