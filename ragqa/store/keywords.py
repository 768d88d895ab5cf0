"""The local engine's keyword index, derived from the KB's SQLite truth: tantivy BM25 over each
chunk's jieba words (stored pre-tokenized in SQLite; tantivy splits them on whitespace).

Each file row carries the generation that last changed it; ``sync`` deletes and re-adds the
documents of the files changed since the index's stamp (``keywords.json``) in one tantivy commit,
then moves the stamp. Re-running it after a crash is harmless; a missing or damaged index is
rebuilt from SQLite.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragqa.errors import MissingDependencyError
from ragqa.store.base import batches, read_state, write_state

log = logging.getLogger(__name__)


def _tantivy() -> Any:
    try:
        import tantivy
    except ImportError:
        raise MissingDependencyError("tantivy") from None
    return tantivy


class KeywordIndex:
    """tantivy over each chunk's jieba words (pre-tokenized; whitespace-split), BM25 scoring."""

    ANALYZER = "ragqa_words"

    def __init__(self, folder: Path, db: sqlite3.Connection) -> None:
        self.folder = folder
        self.db = db
        self.state_path = folder.with_name("keywords.json")
        self._index: Any = None
        self._schema: Any = None
        self.damaged = False

    def generation(self) -> int:
        state = read_state(self.state_path)
        return int(state.get("generation", -1)) if state else -1

    def _schema_(self) -> Any:
        tantivy = _tantivy()
        sb = tantivy.SchemaBuilder()
        sb.add_unsigned_field("chunk_id", stored=True, indexed=True, fast=True)
        sb.add_unsigned_field("file_id", indexed=True, fast=True)
        sb.add_text_field("words", tokenizer_name=self.ANALYZER, index_option="freq")
        return sb.build()

    def _open(self, *, create: bool = False) -> Any:
        if self._index is not None:
            return self._index
        tantivy = _tantivy()
        analyzer = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build()
        if not (self.folder / "meta.json").is_file():
            if not create:
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
            index = tantivy.Index(self._schema_(), path=str(self.folder))
        else:
            try:
                index = tantivy.Index.open(str(self.folder))
            except ValueError as exc:  # tantivy's "Data corrupted" and the like
                if not create:
                    log.warning("keyword index %s is damaged (%s); it is rebuilt by the next writer",
                                self.folder, str(exc).splitlines()[0][:200])
                    self.damaged = True
                    return None
                raise
        index.register_tokenizer(self.ANALYZER, analyzer)
        self._index, self._schema = index, index.schema
        return index

    def healthy(self) -> bool:
        """Opens (or is not there yet, for an empty KB); a damaged index is not healthy."""
        if (self.folder / "meta.json").is_file():
            self._open()
        return not self.damaged

    def invalidate(self) -> None:
        """Have the next ``sync`` rebuild the index from scratch (every chunk's words change: a
        rebuilt index has the same BM25 statistics as one made fresh; deleted documents would
        otherwise count in them until tantivy merges its segments)."""
        self.state_path.unlink(missing_ok=True)
        self._index = None

    def sync(self, generation: int) -> None:
        """Re-index the files changed since this index's generation; one tantivy commit."""
        have = self.generation()
        if have >= generation and (self.folder / "meta.json").is_file() and not self.damaged:
            return
        tantivy = _tantivy()
        if have < 0 or not (self.folder / "meta.json").is_file() or self.damaged:
            shutil.rmtree(self.folder, ignore_errors=True)  # missing, damaged or unknown state: from scratch
            self._index, self.damaged = None, False
            have = -1
        try:
            index = self._open(create=True)
        except ValueError as exc:  # a damaged tantivy folder
            log.warning("keyword index %s is unreadable (%s); rebuilding it", self.folder, exc)
            shutil.rmtree(self.folder, ignore_errors=True)
            self._index, have = None, -1
            index = self._open(create=True)
        changed = [r[0] for r in self.db.execute("SELECT id FROM files WHERE gen > ?", (have,))]
        removed = [r[0] for r in self.db.execute("SELECT file_id FROM removed_files WHERE gen > ?", (have,))]
        writer = index.writer(64_000_000, 1)
        try:
            if have >= 0:
                for part in batches(changed + removed, 1000):
                    writer.delete_documents_by_query(tantivy.Query.term_set_query(self._schema, "file_id", part))
            for part in batches(changed, 500):
                q = f"SELECT id, file_id, words FROM chunks WHERE file_id IN ({','.join('?' * len(part))})"
                for cid, fid, words in self.db.execute(q, part):
                    writer.add_document(tantivy.Document.from_dict(
                        {"chunk_id": cid, "file_id": fid, "words": words}, self._schema))
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            with contextlib.suppress(Exception):
                writer.rollback()
            # tantivy frees the folder's writer lock when the writer goes: drop it now, not when the
            # traceback that holds this frame is collected (a full disk left it held, and every later
            # write failed with LockBusy until a restart)
            writer = None  # noqa: F841
            self._index = None
            raise
        index.reload()
        write_state(self.state_path, {"generation": generation})
        self.db.execute("DELETE FROM removed_files WHERE gen <= ?", (generation,))

    def search(self, words: Sequence[str], k: int, file_ids: Sequence[int] | None) -> list[tuple[int, float]]:
        index = self._open()
        if index is None:
            return []
        tantivy = _tantivy()
        index.reload()
        schema = self._schema
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "words", w)) for w in words])
        if file_ids is not None:
            query = tantivy.Query.boolean_query([
                (tantivy.Occur.Must, query),
                (tantivy.Occur.Must, tantivy.Query.term_set_query(schema, "file_id", list(file_ids))),
            ])
        searcher = index.searcher()
        hits = searcher.search(query, k + 16).hits  # a few spare for chunks deleted since the last sync
        if not hits:
            return []
        ids = searcher.fast_field_values("chunk_id", [addr for _, addr in hits])
        return [(int(i), float(score)) for (score, _), i in zip(hits, ids) if i is not None and score > 0]
