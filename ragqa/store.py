"""FAISS indexes on disk, one per file, cached by content hash; merged in memory for a question.

Layout: ``<cache_dir>/index/<key>/{index.faiss, chunks.json, meta.json}`` where ``key`` hashes
the file's bytes, the embedding model and the splitter settings. No pickle anywhere: FAISS's own
file format for vectors, JSON for texts and metadata. A folder is written under a temporary name
and renamed into place, so a crash leaves the old index or none, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import MissingDependencyError, RagqaError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu") from None
    return faiss


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_key(file_hash: str, embedding_id: str, splitter: dict[str, Any]) -> str:
    """Cache key: same bytes + same embedding model + same splitter settings -> same index."""
    blob = json.dumps(
        {"v": INDEX_FORMAT, "file": file_hash, "embedding": embedding_id, "splitter": splitter},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class FileIndex:
    """One file's chunks and their vectors (row i of ``vectors`` embeds ``chunks[i]``)."""

    chunks: list[Document]
    vectors: "np.ndarray"


class IndexCache:
    """Read and write per-file indexes under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "index"

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, source: str) -> FileIndex | None:
        """The cached index, with ``source`` set on each chunk; None if absent or unreadable."""
        folder = self.path(key)
        if not (folder / "meta.json").is_file():
            return None
        try:
            import numpy as np

            meta = json.loads((folder / "meta.json").read_text("utf-8"))
            if meta.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {meta.get('format')}")
            records = json.loads((folder / "chunks.json").read_text("utf-8"))
            index = _faiss().read_index(str(folder / "index.faiss"))
            vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), "float32")
            if len(records) != len(vectors):
                raise ValueError("chunk and vector counts differ")
            chunks = [
                Document(page_content=r["text"], metadata={"source": source, **r["metadata"]})
                for r in records
            ]
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable cached index %s (%s); rebuilding", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return FileIndex(chunks, vectors)

    def save(self, key: str, chunks: Sequence[Document], vectors: "np.ndarray", meta: dict[str, Any]) -> None:
        """Write atomically: a temp folder beside the target, renamed into place."""
        import numpy as np

        faiss = _faiss()
        final = self.path(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        except OSError as exc:
            raise RagqaError(f"cannot write the index cache in {self.root}: {exc.strerror or exc}") from None
        try:
            vectors = np.ascontiguousarray(vectors, dtype="float32")
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            faiss.write_index(index, str(tmp / "index.faiss"))
            records = [
                {"text": d.page_content, "metadata": {k: v for k, v in d.metadata.items() if k != "source"}}
                for d in chunks
            ]
            (tmp / "chunks.json").write_text(json.dumps(records, ensure_ascii=False), "utf-8")
            (tmp / "meta.json").write_text(
                json.dumps({"format": INDEX_FORMAT, "chunks": len(records), **meta}, ensure_ascii=False), "utf-8"
            )
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # not a concurrent twin: a real failure
                    raise
        except OSError as exc:
            raise RagqaError(f"cannot write the index cache in {self.root}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


    def _remove_stale_temps(self, max_age_s: float = 3600.0) -> None:
        """Temp folders of writers killed mid-save (kill -9) are never loaded; sweep old ones."""
        now = time.time()
        for entry in self.root.glob(".*"):
            try:
                if entry.is_dir() and now - entry.stat().st_mtime > max_age_s:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass


def _fsync_dir(folder: Path) -> None:
    for name in os.listdir(folder):
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())


class ChunkIndex:
    """Several files' chunks in one in-memory FAISS index (cosine on normalised vectors)."""

    def __init__(self, files: Sequence[FileIndex]) -> None:
        import numpy as np

        self.chunks: list[Document] = [c for f in files for c in f.chunks]
        arrays = [f.vectors for f in files if len(f.vectors)]
        if not arrays:
            raise RagqaError("nothing to search: the documents produced no chunks")
        vectors = np.ascontiguousarray(np.vstack(arrays), dtype="float32")
        self._index = _faiss().IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, query_vector: Sequence[float], k: int) -> list[tuple[Document, float]]:
        import numpy as np

        q = np.asarray([query_vector], dtype="float32")
        if q.shape[1] != self.dimension:
            raise RagqaError(
                f"query vector has {q.shape[1]} dimensions but the index has {self.dimension}"
            )
        scores, ids = self._index.search(q, min(k, len(self.chunks)))
        return [(self.chunks[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]
