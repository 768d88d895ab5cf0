"""ragqa's indexes as LangChain VectorStores: a front end, like the CLI and the web page.

- ``RagqaVectorStore``: an in-memory index (FAISS-style cosine + jieba BM25 words) built from
  texts or documents.
- ``KnowledgeBaseStore``: a persistent knowledge base (what ``ragqa index`` fills) as one;
  ``KnowledgeBaseStore.open(name)`` goes through the pipeline, as every ragqa run does.

Both hand out ragqa's retrievers (``as_hybrid_retriever``, ``as_bm25_retriever``) over themselves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ragqa.errors import InputError
from ragqa.fusion import DEFAULT_FUSION, make_fusion
from ragqa.retrieval import DEFAULT_CANDIDATES, BM25Retriever, HybridRetriever, chunks_by_id
from ragqa.store import (
    DEFAULT_KB,
    TEXT_PARSER,
    TEXT_PREFIX,
    ChunkIndex,
    FileIndex,
    FileRecord,
    KBView,
    KnowledgeBase,
    content_hash,
)
from ragqa.store.base import unit_rows
from ragqa.words import tokenize

if TYPE_CHECKING:
    import numpy as np

    from ragqa.config import Settings


class RagqaVectorStore(VectorStore):
    """ragqa's index (FAISS cosine + jieba BM25 words) as a LangChain VectorStore.

    Texts are embedded with ``embedding`` and their vectors normalised, so every score is a cosine.
    Adding a text under an id that is already stored replaces it. Besides the usual
    ``as_retriever()`` (vector search), ``as_hybrid_retriever()`` gives ragqa's hybrid retrieval
    over the same index, which finds exact names and numbers an embedding model blurs, and
    ``as_bm25_retriever()`` the keyword ranking alone.

    ``index`` is an in-memory ``ChunkIndex`` (a new empty one by default). Given a knowledge base or
    a view of one (``Pipeline.build_index`` / ``kb_index`` return views), the store is a
    ``KnowledgeBaseStore`` over it.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> store = RagqaVectorStore.from_texts(["熊猫吃竹子。", "The ferry runs daily."],
    ...                                     DeterministicFakeEmbedding(size=8), ids=["a", "b"])
    >>> [d.id for d in store.as_hybrid_retriever(k=1).invoke("熊猫吃什么？")]
    ['a']
    """

    index: Any  # a ChunkIndex here; a KB view in KnowledgeBaseStore

    def __new__(cls, embedding: Any = None, index: Any = None, *args: Any, **kwargs: Any) -> "RagqaVectorStore":
        if cls is RagqaVectorStore and isinstance(index, (KnowledgeBase, KBView)):
            cls = KnowledgeBaseStore
        return super().__new__(cls)

    def __init__(self, embedding: Embeddings, index: ChunkIndex | None = None) -> None:
        self.embedding = embedding
        self.index = index if index is not None else ChunkIndex([], allow_empty=True)
        for i, chunk in enumerate(self.index.chunks):  # chunks from ragqa's file cache carry no id
            if chunk.id is None:
                self.index.chunks[i] = chunk.model_copy(update={"id": str(uuid.uuid4())})
        self._positions: dict[str, int] | None = None

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def _position(self) -> dict[str, int]:
        if self._positions is None:
            self._positions = {c.id: i for i, c in enumerate(self.index.chunks) if c.id is not None}
        return self._positions

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store the texts; -> their ids (given ones kept, missing ones made up)."""
        texts, new_ids, keep = _check_texts(texts, metadatas, ids)
        if not texts:
            return []
        docs = [
            Document(id=new_ids[n], page_content=texts[n], metadata=dict(metadatas[n]) if metadatas else {})
            for n in keep
        ]
        import numpy as np

        vectors = unit_rows(np.asarray(self.embedding.embed_documents([d.page_content for d in docs]), dtype="float32"))
        self.delete([new_ids[n] for n in keep])
        self.index.add(FileIndex(docs, vectors, [tokenize(d.page_content) for d in docs]))
        self._positions = None
        return new_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove these ids (unknown ones are ignored); ``None`` removes everything."""
        if ids is None:
            self.index.remove(range(len(self.index)))
        else:
            where = self._position()
            self.index.remove(where[i] for i in ids if i in where)
        self._positions = None
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        where = self._position()
        return [_copy(self.index.chunks[where[i]]) for i in ids if i in where]

    def scoped(self, documents: Sequence[str] | None) -> Any:
        """The index searched for ``documents`` (``--doc`` patterns): only a knowledge base's
        store (``KnowledgeBaseStore``) has documents to pick; here it is the whole index."""
        if documents:
            raise InputError("documents= picks documents of a knowledge base (KnowledgeBaseStore); "
                             "in this in-memory store use filter= on the chunks' metadata")
        return self.index

    def _hits(self, vector: Sequence[float], k: int, filter: Any = None,
              documents: Sequence[str] | None = None) -> list[tuple[int, Document, float]]:
        """[(chunk position, a copy of the chunk, cosine)] best first, of the chunks ``filter`` keeps."""
        self.scoped(documents)
        keep = _metadata_filter(filter)
        if keep is None:
            return [(i, _copy(self.index.chunks[i]), s) for i, s in self.index.search_ids(vector, k)]
        hits = self.index.search_ids(vector, len(self.index))  # a flat index scores every chunk anyway
        return [(i, _copy(self.index.chunks[i]), s) for i, s in hits if keep(self.index.chunks[i])][:k]

    def _stored_vectors(self, hits: list[tuple[int, Document, float]]) -> "np.ndarray":
        return self.index.vectors([i for i, _, _ in hits])

    # -- the same on every ragqa store
    def similarity_search_with_score(
        self, query: str, k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        documents: Sequence[str] | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """[(document, cosine)] best first; ``filter`` is a metadata dict to match or a predicate;
        ``documents`` (a knowledge base's store): ``--doc`` patterns, searched inside the engine."""
        return [(d, s) for _, d, s in self._hits(self.embedding.embed_query(query), k, filter, documents)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, *, filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        documents: Sequence[str] | None = None, **kwargs: Any,
    ) -> list[Document]:
        return [d for _, d, _ in self._hits(embedding, k, filter, documents)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: min(1.0, max(0.0, cosine))  # opposite directions are simply irrelevant

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, *,
        filter: Callable[[Document], bool] | dict[str, Any] | None = None,
        documents: Sequence[str] | None = None, **kwargs: Any,
    ) -> list[Document]:
        import numpy as np
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        hits = self._hits(embedding, max(fetch_k, k), filter, documents)
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype="float32"), self._stored_vectors(hits), lambda_mult=lambda_mult, k=k
        )
        return [hits[j][1] for j in chosen]

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
        ids: list[str] | None = None, **kwargs: Any,
    ) -> "RagqaVectorStore":
        store = cls(embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    fusion: str = DEFAULT_FUSION  # what as_hybrid_retriever fuses with (KnowledgeBaseStore.open: the settings')

    def as_hybrid_retriever(self, k: int = 4, *, candidates: int = DEFAULT_CANDIDATES,
                            fusion: str | None = None, documents: Sequence[str] | None = None) -> HybridRetriever:
        """ragqa's hybrid retrieval (vector + BM25 fused) over this store, as ``ask`` does it.

        ``fusion``: a spec such as ``"zscore:w=0.6"`` or ``"rrf"`` (README "Retrieval"); default the
        store's ``fusion`` (for ``KnowledgeBaseStore.open``: the settings' ``fusion``). Results carry
        ``metadata["score"]`` (the fusion score), ``vector_score`` and ``bm25_score``.
        ``documents`` (a knowledge base's store): only the documents these ``--doc`` patterns match.
        """
        spec = make_fusion(fusion or self.fusion).spec  # a bad spec fails here, not at the first query
        return HybridRetriever(index=self.scoped(documents), embeddings=self.embedding, k=k, candidates=candidates,
                               fusion=spec)

    def as_bm25_retriever(self, k: int = 4, *, documents: Sequence[str] | None = None) -> BM25Retriever:
        """ragqa's keyword retrieval (BM25 over jieba words) over this store; needs no embedding model.

        Results carry ``metadata["score"]`` (BM25); a chunk sharing no word with the query is never
        returned. ``documents``: as for ``as_hybrid_retriever``.
        """
        return BM25Retriever(index=self.scoped(documents), k=k)


_KB_KEYS = ("source", "score", "chunk_id")  # the KB sets these on every chunk it returns
_GIVEN = "ragqa_given"  # a text's own values for those keys, kept aside in its chunk's metadata


class KnowledgeBaseStore(RagqaVectorStore):
    """A knowledge base (what ``ragqa index`` fills, ``ragqa ask --kb`` searches) as a LangChain
    VectorStore, with ragqa's vector, BM25 and hybrid retrievers over it.

    ``KnowledgeBaseStore.open(name)`` opens one with the settings' embedding model and splitter
    (the KB refuses others); ``KnowledgeBaseStore(embedding, kb_or_view)`` wraps one already open.

    Each text added through the store is one KB record, path ``text:<id>``, holding one chunk:
    the text as given (split it first, e.g. with ``ChineseTextSplitter``, as for any VectorStore),
    its vector, its BM25 words and its metadata (JSON). Its ``Document.id`` is that id, given or
    made up (a uuid4); adding a text under an id already stored replaces it, in one transaction.
    Files indexed by ``ragqa index`` / ``Pipeline.index_paths`` are searched alongside: their
    chunks come back as the KB gives them (``metadata["source"]`` the file, ``start``, ``chunk_id``)
    with ``Document.id`` the chunk's number in the KB. ``get_by_ids`` takes both kinds of id (a
    text's id wins over a chunk number that reads the same); ``delete`` removes texts, and refuses a
    file's chunk: a file's chunks go together (``ragqa kb remove NAME PATH``).

    Over a view (``Pipeline.build_index`` returns one) searches see the view's files and the texts
    added through this store.
    """

    def __init__(self, embedding: Embeddings | None, index: KnowledgeBase | KBView) -> None:
        if isinstance(index, KBView):
            kb, file_ids, sources = index.kb, index.file_ids, index.sources
        elif isinstance(index, KnowledgeBase):
            kb, file_ids, sources = index, None, {}
        else:
            raise TypeError(f"KnowledgeBaseStore wraps a KnowledgeBase or a KBView, not {type(index).__name__}")
        self.kb = kb
        self.index = _StoreView(kb, file_ids, sources)
        self._embedding = embedding
        self._make_embedding: Callable[[], Embeddings] | None = None
        self._owns_kb = False

    @classmethod
    def open(
        cls, name: str = DEFAULT_KB, settings: "Settings | None" = None, embedding: Embeddings | None = None,
        create: bool = False,
    ) -> "KnowledgeBaseStore":
        """The knowledge base ``name`` of ``settings`` (default: ``load_settings()``: flags aside, the
        same env and config file as the CLI), checked against their embedding model and splitter as
        every ragqa run is; ``create`` makes it when missing. ``embedding`` defaults to the settings'
        model, loaded on first use (a BM25 retriever never loads it)."""
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        pipeline = Pipeline(settings if settings is not None else load_settings())
        store = cls(embedding, pipeline.open_kb(name, create=create))
        store.fusion = pipeline.settings.fusion
        if embedding is None:
            store._make_embedding = lambda: pipeline.embeddings
        store._owns_kb = True
        return store

    @property
    def embedding(self) -> Embeddings:  # type: ignore[override]
        if self._embedding is None:
            if self._make_embedding is None:
                raise InputError("this knowledge base store has no embedding model: pass embedding=, or use "
                                 "KnowledgeBaseStore.open(name), which uses the settings' model")
            self._embedding = self._make_embedding()
        return self._embedding

    def close(self) -> None:
        """Close the KB if ``open`` opened it (a KB handed in stays its owner's to close)."""
        if self._owns_kb:
            self.kb.close()

    def __enter__(self) -> "KnowledgeBaseStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing
    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store each text as a KB record of its own; -> their ids (given ones kept,
        missing ones made up). Metadata must be JSON (str, numbers, bools, None, lists, dicts)."""
        import numpy as np

        texts, new_ids, keep = _check_texts(texts, metadatas, ids)
        if not texts:
            return []
        docs = []
        for n in keep:
            metadata = dict(metadatas[n]) if metadatas else {}
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as exc:
                raise InputError(f"the metadata of text {n} cannot be stored in a knowledge base ({exc}); "
                                 "use JSON values: str, numbers, bools, None, lists, dicts") from None
            docs.append(Document(page_content=texts[n], metadata=_to_stored(metadata)))
        vectors = np.asarray(self.embedding.embed_documents([d.page_content for d in docs]), dtype="float32")
        with self.kb.writing():
            for n, doc, vector in zip(keep, docs, vectors):
                data = doc.page_content.encode("utf-8")
                record = FileRecord(TEXT_PREFIX + new_ids[n], size=len(data), hash=content_hash(data),
                                    parser=TEXT_PARSER)
                self.kb.put_file(record, [doc], vector[None, :], [tokenize(doc.page_content)])
                self.index.include(record.id)
        return new_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove the texts with these ids (unknown ids are ignored). A chunk of an indexed file is
        refused: remove the file (``ragqa kb remove NAME PATH``). ``None`` is refused too: emptying a
        knowledge base is ``ragqa kb drop NAME``."""
        if ids is None:
            raise InputError(f"name the ids to delete; to empty knowledge base {self.kb.name!r}: "
                             f"ragqa kb drop {self.kb.name}")
        ids = [str(i) for i in ids]
        records = self._records()
        paths = [TEXT_PREFIX + i for i in dict.fromkeys(ids) if TEXT_PREFIX + i in records]
        chunks = self._file_chunks([i for i in ids if TEXT_PREFIX + i not in records], records)
        if chunks:
            doc = chunks[0]
            raise InputError(f"chunk {doc.id} is part of the indexed file {doc.metadata.get('source')}; a file's "
                             f"chunks go together: ragqa kb remove {self.kb.name} {doc.metadata.get('source')}")
        if paths:
            with self.kb.writing():
                self.kb.remove_files(paths)
        return True

    # -- reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The texts and chunks with these ids, in this order; unknown ids are left out."""
        ids = [str(i) for i in ids]
        records = self._records()
        found: dict[str, Document] = {}
        texts = [records[TEXT_PREFIX + i].id for i in dict.fromkeys(ids) if TEXT_PREFIX + i in records]
        if texts:
            for doc in self.kb.iter_chunks(texts):
                doc = self.index.seen(doc)
                found[str(doc.id)] = doc
        for doc in self._file_chunks([i for i in ids if i not in found], records):
            found[str(doc.id)] = self.index.seen(doc)
        return [found[i] for i in ids if i in found]

    def _records(self) -> dict[str, FileRecord]:
        """The KB's ok records this store sees, by path."""
        return {r.path: r for r in self.kb.files() if r.status == "ok" and self.index.allows(r.id)}

    def _file_chunks(self, ids: Sequence[str], records: dict[str, FileRecord]) -> list[Document]:
        """The chunks of indexed files (not texts) these ids number, as the KB returns them."""
        numbers = [int(i) for i in dict.fromkeys(ids) if i.isascii() and i.isdigit()]
        if not numbers:
            return []
        return [d for d in self.kb.get_chunks(numbers)
                if d.metadata.get("source", "") in records and not d.metadata["source"].startswith(TEXT_PREFIX)]

    def scoped(self, documents: Sequence[str] | None) -> "_StoreView":
        """This store's view narrowed to the documents ``documents`` (``--doc`` patterns,
        ``ragqa.store.scope``) match: a file filter the engine applies inside its search."""
        if not documents:
            return self.index
        ids = self.kb.scope_ids(documents)
        if self.index.file_ids is not None:
            inside = set(self.index.file_ids)
            ids = [i for i in ids if i in inside]
            if not ids:
                raise InputError(f"documents {list(documents)!r}: none of the documents they match is in this "
                                 "store's view")
        return _StoreView(self.kb, ids, self.index.sources)

    def _hits(self, vector: Sequence[float], k: int, filter: Any = None,
              documents: Sequence[str] | None = None) -> list[tuple[int, Document, float]]:
        """[(chunk id, chunk, cosine)] best first; with ``filter``, fetched in widening rounds
        (4k, 16k, ...) until k chunks pass it or the KB has no more."""
        keep = _metadata_filter(filter)
        index = self.scoped(documents)
        n = k if keep is None else max(4 * k, 20)
        while True:
            hits = index.search_ids(vector, n)
            docs = chunks_by_id(index, [i for i, _ in hits])
            out = [(i, docs[i], s) for i, s in hits if i in docs and (keep is None or keep(docs[i]))]
            if keep is None or len(out) >= k or len(hits) < n:
                return out[:k]
            n *= 4

    def _stored_vectors(self, hits: list[tuple[int, Document, float]]) -> "np.ndarray":
        # the KB interface hands out chunks, not vectors: the candidates are embedded again
        import numpy as np

        return np.asarray(self.embedding.embed_documents([d.page_content for _, d, _ in hits]), dtype="float32")

    @classmethod
    def from_texts(
        cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
        ids: list[str] | None = None, name: str = DEFAULT_KB, settings: "Settings | None" = None, **kwargs: Any,
    ) -> "KnowledgeBaseStore":
        """Add the texts to knowledge base ``name`` (made if missing) of ``settings``; -> its store."""
        store = cls.open(name, settings, embedding, create=True)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class _StoreView(KBView):
    """A KB as a KnowledgeBaseStore searches it: texts added through the store come back with their
    own ids and metadata, and join the view's file filter (if it has one)."""

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        return [self.seen(d) for d in self.kb.get_chunks(ids)]

    def seen(self, doc: Document) -> Document:
        """A KB chunk as the store's user sees it: a text as it was added; a file's chunk under
        the path the user gave for the file (a view from ``build_index``)."""
        path = doc.metadata.get("source", "")
        if not path.startswith(TEXT_PREFIX):
            if self.sources:
                doc.metadata["source"] = self.sources.get(path, path)
            return doc
        metadata = {k: v for k, v in doc.metadata.items() if k not in ("source", "chunk_id", _GIVEN)}
        metadata.update(doc.metadata.get(_GIVEN, {}))
        return Document(id=path[len(TEXT_PREFIX):], page_content=doc.page_content, metadata=metadata)

    def include(self, file_id: int | None) -> None:
        if self.file_ids is not None and file_id is not None and file_id not in self.file_ids:
            self.file_ids.append(file_id)

    def allows(self, file_id: int | None) -> bool:
        return self.file_ids is None or file_id in self.file_ids


def _to_stored(metadata: dict[str, Any]) -> dict[str, Any]:
    """A text's metadata as its KB chunk keeps it: the KB's own keys (source, score, chunk_id) aside.

    >>> _to_stored({"source": "news.md", "page": 2})
    {'page': 2, 'ragqa_given': {'source': 'news.md'}}
    """
    stored = {k: v for k, v in metadata.items() if k not in _KB_KEYS}
    given = {k: metadata[k] for k in _KB_KEYS if k in metadata}
    if given:
        stored[_GIVEN] = given
    return stored


def _check_texts(
    texts: Iterable[str], metadatas: list[dict] | None, ids: Sequence[str | None] | None,
) -> tuple[list[str], list[str], list[int]]:
    """-> (the texts, an id for each, the positions to store): the same id twice in one call keeps
    the later text, as two calls would."""
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    new_ids = [str(i) if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
    last = {doc_id: n for n, doc_id in enumerate(new_ids)}
    return texts, new_ids, sorted(last.values())


def _metadata_filter(filter: Callable[[Document], bool] | dict[str, Any] | None) -> Callable[[Document], bool] | None:
    if filter is None or callable(filter):
        return filter
    return lambda d: all(d.metadata.get(m) == v for m, v in filter.items())


def _copy(doc: Document) -> Document:
    """A caller's copy: editing a search result must not edit the stored chunk."""
    return Document(id=doc.id, page_content=doc.page_content, metadata=dict(doc.metadata))
