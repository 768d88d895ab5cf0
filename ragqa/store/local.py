"""The embedded engine: SQLite is the truth, FAISS and tantivy are indexes derived from it.

Layout of a KB folder::

    kb.sqlite        files, chunks (text, metadata, BM25 words, vector), a generation counter
    vectors/         base-<n>.faiss + state.json: FAISS over the chunks up to ``max_id`` (store/vectors.py)
    keywords/        a tantivy index of the chunks' jieba words + keywords.json (its generation;
                     store/keywords.py)
    write.lock       one writer at a time (readers never wait)

Every change to a file is one SQLite transaction (WAL), so a crash (``kill -9``, a full disk)
leaves the KB as it was before that file or after it, never half. The derived indexes may then be
behind the truth; they are repaired from SQLite, never by re-embedding:

- vectors: the base FAISS file holds chunks up to ``max_id``. Newer chunks (the *delta*) are read
  from SQLite when the KB opens and searched in memory; deleted chunks are left in the base and
  filtered out by id (a trigger records them in ``dead_chunks``). When the delta or the dead grow
  past a tenth of the base, the writer rebuilds the base (flat up to ``HNSW_MIN`` chunks, exact;
  HNSW above, approximate). So adding one file costs that file's work only.
- keywords: each file row carries the generation that last changed it. Bringing tantivy up to
  date deletes and re-adds the documents of the files changed since its stamp, in one tantivy
  commit, then moves the stamp. Re-running that after a crash is harmless.
- words: each chunk's BM25 words are stored beside its text, made by the tokenizer named in
  ``meta.tokenizer`` (``ragqa.words.tokenizer_id``). A KB opened under another tokenizer has
  them made again from the stored text (no re-embedding), in transactions of whole files; the
  first change drops tantivy's stamp, so it is rebuilt from SQLite, and the new tokenizer is
  stamped last: a killed run is finished on the next open. A KB from before the stamp is
  checked on a sample of its chunks first, and only stamped when they come out the same.

No pickle anywhere: SQLite, FAISS's own format, tantivy's own format, JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import DiskFull, InputError, RagqaError, is_disk_full
from ragqa.paths import atomic_path
from ragqa.store.base import (
    DamagedKBError, FileRecord, KBStats, KnowledgeBase, Manifest,
    batches, chunk_document, chunk_meta, unit_rows,
)
from ragqa.store.keywords import KeywordIndex
from ragqa.store.vectors import WIDE_SCOPE, ChunkScope, VectorIndex
from ragqa.words import tokenize, tokenizer_id

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
DB_NAME = "kb.sqlite"
LOCK_WAIT_NOTE_S = 0.5
WORDS_SAMPLE = 256  # chunks re-tokenized to check a KB whose tokenizer is not recorded
RETOKENIZE_BATCH = 2000  # chunks per transaction when the words are made again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    hash TEXT NOT NULL DEFAULT '',
    parser TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'ok',
    error TEXT NOT NULL DEFAULT '',
    chunks INTEGER NOT NULL DEFAULT 0,
    gen INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash, parser);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    words TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (file_id, ord);
CREATE TABLE IF NOT EXISTS dead_chunks (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS removed_files (file_id INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS chunk_deleted AFTER DELETE ON chunks
    BEGIN INSERT OR IGNORE INTO dead_chunks (id) VALUES (old.id); END;
"""


def _storage_error(exc: BaseException, where: Path) -> RagqaError:
    """sqlite3/OSError -> one line: a read-only folder, a full disk, a damaged database."""
    text = str(getattr(exc, "strerror", None) or exc)
    if "readonly" in text or "read-only" in text.lower() or isinstance(exc, PermissionError):
        return RagqaError(f"cannot write the knowledge base in {where}: the folder is read-only")
    if is_disk_full(exc):
        return DiskFull(f"cannot write the knowledge base in {where}: the disk is full (nothing was half-written)")
    if "not a database" in text or "malformed" in text:
        return DamagedKBError(f"the knowledge base in {where} is damaged ({text}); drop and rebuild it")
    return RagqaError(f"cannot use the knowledge base folder {where}: {text}")


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MB left on the folder's file system."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


class LocalKB(KnowledgeBase):
    """A KB in a folder on this machine (see the module docstring)."""

    engine = "local"

    def __init__(self, folder: Path, name: str, manifest: Manifest, *, create: bool = False) -> None:
        self.folder = Path(folder)
        self.name = name
        db = self.folder / DB_NAME
        if not db.is_file():
            if not create:
                raise InputError(f"no knowledge base named {name!r} (see: ragqa kb list)")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _storage_error(exc, self.folder) from None
        self._lock_path = self.folder / "write.lock"
        try:
            if create and not db.is_file():
                self._create(db, manifest)
            self.db = self._connect(db)
            fmt = self._meta("format")
            stored = self._meta("manifest")
            if fmt == str(FORMAT) and stored and self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.folder) from None
        if fmt != str(FORMAT) or not stored:
            self.db.close()
            raise DamagedKBError(f"the knowledge base in {self.folder} is damaged or not ragqa's (no format {FORMAT} "
                             f"record); drop and rebuild it")
        self.manifest = Manifest.from_json(stored)
        if manifest.embedding:
            self.manifest.check(manifest, name)
        self._vectors = VectorIndex(self.folder / "vectors", self.db)
        self._scopes: tuple[int, dict[Any, Any]] | None = None  # (generation, _scope_cache())
        self._keywords = KeywordIndex(self.folder / "keywords", self.db)
        self._writing = False
        self._repair_if_free()

    # -- sqlite helpers
    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        con = sqlite3.connect(db, timeout=60, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def _create(self, db: Path, manifest: Manifest) -> None:
        """Make the database under the write lock (two processes may create one KB at once)."""
        from filelock import FileLock

        with FileLock(str(self._lock_path)):
            if db.is_file():
                return
            for stale in self.folder.glob(f".{db.name}.*"):  # a creation that died half-way (a full disk)
                stale.unlink(missing_ok=True)
            # made in rollback-journal mode and closed before the rename, so it is one whole file then
            # (a WAL beside the temporary name would be lost); WAL is switched on when it is opened
            with atomic_path(db) as tmp:  # the KB exists whole or not at all
                con = self._connect(tmp)
                try:
                    con.executescript(_SCHEMA)
                    con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("format", str(FORMAT)), ("manifest", manifest.to_json()), ("generation", "0"),
                        ("created", str(time.time())), ("tokenizer", tokenizer_id())])
                finally:
                    con.close()

    def _meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; any error rolls back, and storage errors become one line."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise _storage_error(exc, self.folder) from None
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            if isinstance(exc, (sqlite3.DatabaseError, OSError)):
                raise _storage_error(exc, self.folder) from None
            raise

    def read_note(self, key: str) -> str | None:
        return self._meta(f"note:{key}")

    def write_note(self, key: str, value: str) -> None:
        """In the meta table, in a transaction of its own (a moment's wait behind a writer's commit)."""
        with self._transaction():
            self._set_meta(f"note:{key}", value)

    def generation(self) -> int:
        return int(self._meta("generation") or 0)

    def _next_generation(self) -> int:
        gen = self.generation() + 1
        self._set_meta("generation", str(gen))
        return gen

    # -- files
    def files(self) -> list[FileRecord]:
        rows = self.db.execute(
            "SELECT id, path, size, mtime_ns, hash, parser, status, error, chunks, updated FROM files ORDER BY path"
        ).fetchall()
        return [_record(r) for r in rows]

    def documents(self) -> list[tuple[int, str, int]]:
        return list(self._scope_cache()["documents"])

    def scope_ids(self, patterns: Sequence[str]) -> list[int]:
        cache = self._scope_cache()
        key = ("ids", tuple(patterns))
        if key not in cache:
            cache[key] = super().scope_ids(patterns)
        return list(cache[key])

    def scope_chunks(self, file_ids: Sequence[int]) -> int:
        cache = self._scope_cache()
        key = ("chunks", tuple(file_ids))
        if key not in cache:
            cache[key] = super().scope_chunks(file_ids)
        return int(cache[key])

    def _scope_cache(self) -> dict[Any, Any]:
        """What scoped searches reuse until the truth changes (a page or a server scopes many
        questions the same way): the readable files, the ids patterns picked, the chunk scopes."""
        gen = self.generation()
        if self._scopes is None or self._scopes[0] != gen:
            rows = self.db.execute("SELECT id, path, chunks FROM files WHERE status = 'ok'").fetchall()
            self._scopes = (gen, {"documents": tuple((int(i), p, int(n)) for i, p, n in rows)})
        cache = self._scopes[1]
        if len(cache) > 64:  # many different scopes: start over rather than grow (what they share stays)
            kept = {key: cache[key] for key in ("documents", "chunk_files") if key in cache}
            cache.clear()
            cache.update(kept)
        return cache

    def _chunk_files(self) -> "np.ndarray":
        """The file id of each chunk id (-1: no such chunk), read once per generation of the truth
        (one scan of the chunks' ids)."""
        import numpy as np

        cache = self._scope_cache()
        if "chunk_files" not in cache:
            rows = self.db.execute("SELECT id, file_id FROM chunks").fetchall()
            ids = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
            owners = np.fromiter((r[1] for r in rows), dtype="int64", count=len(rows))
            chunk_file = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype="int64")
            chunk_file[ids] = owners
            cache["chunk_files"] = chunk_file
        return cache["chunk_files"]

    def find_by_hash(self, file_hash: str, parser: str) -> FileRecord | None:
        row = self.db.execute(
            "SELECT id, path, size, mtime_ns, hash, parser, status, error, chunks, updated FROM files "
            "WHERE hash = ? AND parser = ? AND status = 'ok' AND chunks > 0 LIMIT 1", (file_hash, parser)).fetchone()
        return _record(row) if row else None

    # -- writing
    @contextlib.contextmanager
    def writing(self, on_wait: Callable[[str], None] | None = None) -> Iterator["LocalKB"]:
        """Hold the write lock; bring the derived indexes up to date on the way out."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self._lock_path))
        try:
            try:
                lock.acquire(timeout=LOCK_WAIT_NOTE_S)
            except Timeout:
                if on_wait:
                    on_wait(f"waiting for another ragqa process writing to knowledge base {self.name!r}…")
                lock.acquire()
        except OSError as exc:
            raise _storage_error(exc, self.folder) from None
        self._writing = True
        failed = True
        try:
            self._match_tokenizer()
            yield self
            failed = False
        finally:
            try:
                self.refresh_derived(compact=True)
            except RagqaError as exc:
                if not failed:
                    raise
                log.warning("%s", exc)  # the write's own error is the one to report
            finally:
                self._writing = False
                lock.release()

    def _require_writer(self) -> None:
        if not self._writing:
            raise RuntimeError("write to a knowledge base inside `with kb.writing():`")

    def put_file(self, record: FileRecord, chunks: Sequence[Document], vectors: "np.ndarray",
                 tokens: Sequence[Sequence[str]]) -> FileRecord:
        import numpy as np

        self._require_writer()
        vectors = unit_rows(np.asarray(vectors, dtype="float32"))
        if len(vectors) != len(chunks) or len(tokens) != len(chunks):
            raise RagqaError(f"{len(chunks)} chunks but {len(vectors)} vectors and {len(tokens)} word lists")
        with self._transaction():
            self._check_dimension(vectors.shape[1] if len(vectors) else 0)
            record.chunks, record.status, record.error = len(chunks), "ok", ""
            file_id = self._upsert(record)
            self.db.executemany(
                "INSERT INTO chunks (file_id, ord, text, meta, words, vector) VALUES (?, ?, ?, ?, ?, ?)",
                ((file_id, i, d.page_content, json.dumps(chunk_meta(d), ensure_ascii=False), " ".join(t),
                  v.tobytes()) for i, (d, t, v) in enumerate(zip(chunks, tokens, vectors))),
            )
        return record

    def copy_file(self, source: FileRecord, record: FileRecord) -> FileRecord:
        self._require_writer()
        with self._transaction():
            record.chunks, record.status, record.error = source.chunks, "ok", ""
            file_id = self._upsert(record)
            self.db.execute(
                "INSERT INTO chunks (file_id, ord, text, meta, words, vector) "
                "SELECT ?, ord, text, meta, words, vector FROM chunks WHERE file_id = ? ORDER BY ord",
                (file_id, source.id))
        return record

    def update_record(self, record: FileRecord) -> None:
        self._require_writer()
        with self._transaction():
            self.db.execute("UPDATE files SET size = ?, mtime_ns = ?, updated = ? WHERE path = ?",
                            (record.size, record.mtime_ns, time.time(), record.path))

    def rename_files(self, renames: dict[str, str]) -> int:
        """Give files new paths (their chunks, vectors and words stay): a data folder that moved.
        One transaction; a new path a file already has is skipped. -> how many were renamed."""
        self._require_writer()
        done = 0
        with self._transaction():
            gen = self._next_generation()  # cached path -> id maps (scopes) are read anew
            for old, new in renames.items():
                if self.db.execute("SELECT 1 FROM files WHERE path = ?", (new,)).fetchone():
                    continue
                done += self.db.execute("UPDATE files SET path = ?, gen = ? WHERE path = ?", (new, gen, old)).rowcount
        return done

    def mark_failed(self, record: FileRecord) -> None:
        self._require_writer()
        with self._transaction():
            record.status, record.chunks = "failed", 0
            self._upsert(record)

    def remove_files(self, paths: Iterable[str]) -> int:
        self._require_writer()
        ids = [row[0] for path in paths
               if (row := self.db.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone())]
        if not ids:
            return 0  # nothing to do: the KB is not touched
        with self._transaction():
            gen = self._next_generation()
            for file_id in ids:
                self.db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
                self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
                self.db.execute("INSERT INTO removed_files (file_id, gen) VALUES (?, ?)", (file_id, gen))
        return len(ids)

    def _upsert(self, record: FileRecord) -> int:
        """Insert or replace a file row (its old chunks go); inside a transaction."""
        gen = self._next_generation()
        record.updated = time.time()
        row = self.db.execute("SELECT id FROM files WHERE path = ?", (record.path,)).fetchone()
        values = (record.size, record.mtime_ns, record.hash, record.parser, record.status, record.error,
                  record.chunks, gen, record.updated)
        if row:
            self.db.execute("DELETE FROM chunks WHERE file_id = ?", (row[0],))
            self.db.execute("UPDATE files SET size=?, mtime_ns=?, hash=?, parser=?, status=?, error=?, chunks=?, "
                            "gen=?, updated=? WHERE id = ?", (*values, row[0]))
            record.id = int(row[0])
        else:
            cur = self.db.execute("INSERT INTO files (size, mtime_ns, hash, parser, status, error, chunks, gen, "
                                  "updated, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, record.path))
            record.id = int(cur.lastrowid)
        return record.id

    def _check_dimension(self, dimension: int) -> None:
        if not dimension:
            return
        if self.manifest.dimension and dimension != self.manifest.dimension:
            raise RagqaError(f"vectors have {dimension} dimensions but knowledge base {self.name!r} has "
                             f"{self.manifest.dimension}")
        if self.manifest.record_vectors(dimension):
            self._set_meta("manifest", self.manifest.to_json())

    # -- derived indexes
    def refresh_derived(self, *, compact: bool = False) -> None:
        """Bring tantivy up to the truth's generation; with ``compact``, rebuild the vector base
        when its delta or dead chunks have grown too large. Needs the write lock."""
        try:
            self._keywords.sync(self.generation())
            if compact:
                self._vectors.compact_if_needed()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _storage_error(exc, self.folder) from None
        except ValueError as exc:  # tantivy reports its I/O errors (a full disk) as ValueError
            if is_disk_full(exc) or _nearly_full(self.folder):  # a writer "killed" by I/O says no more
                raise _storage_error(OSError(28, "No space left on device"), self.folder) from None
            raise

    def _repair_if_free(self) -> None:
        """On open: a keyword index behind the truth (a writer was killed), or words made by
        another tokenizer, are repaired now, if no writer holds the lock; otherwise the writer
        will, and searches filter stale hits."""
        if (self._keywords.generation() >= self.generation() and self._keywords.healthy()
                and self._meta("tokenizer") == tokenizer_id()):
            return
        from filelock import FileLock, Timeout

        lock = FileLock(str(self._lock_path))
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            return
        try:
            self._match_tokenizer()
            if self._keywords.generation() < self.generation() or not self._keywords.healthy():
                log.info("knowledge base %s: bringing the keyword index up to date", self.name)
            self.refresh_derived()
        except RagqaError as exc:
            log.warning("%s", exc)
        finally:
            lock.release()

    def _match_tokenizer(self) -> None:
        """Make the stored words this run's tokenizer's (under the write lock; no re-embedding).

        A KB stamped with another tokenizer has every chunk re-tokenized from its text; one from
        before the stamp is first checked on WORDS_SAMPLE chunks spread over it and only stamped
        when they all come out the same. Chunks whose words change are rewritten in transactions
        of about RETOKENIZE_BATCH chunks (whole files, each with a new generation); the first one
        drops tantivy's stamp, so the refresh that follows rebuilds it from SQLite. The new
        tokenizer is stamped last, so a killed run is finished by the next writer or open."""
        current = tokenizer_id()
        stored = self._meta("tokenizer")
        if stored == current:
            return
        try:
            if stored is None and self._sample_matches():
                with self._transaction():
                    self._set_meta("tokenizer", current)
                log.info("knowledge base %s: a sample of its words is what %s makes; recorded", self.name, current)
                return
            chunks = self.count()
            if chunks:
                log.warning("knowledge base %s: making the keyword words of its %d chunks again from the "
                            "stored text (they were made by %s; this run uses %s; nothing is re-embedded)",
                            self.name, chunks, stored or "an unrecorded tokenizer", current)
            changed = self._retokenize()
            with self._transaction():
                self._set_meta("tokenizer", current)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _storage_error(exc, self.folder) from None
        if chunks:
            log.info("knowledge base %s: words of %d files changed", self.name, changed)

    def _sample_matches(self) -> bool:
        """WORDS_SAMPLE chunks spread over the KB re-tokenize to the words stored for them."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks ORDER BY id")]
        sample = ids[::max(1, len(ids) // WORDS_SAMPLE)][:WORDS_SAMPLE]
        for part in batches(sample, 900):
            q = f"SELECT text, words FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            if any(" ".join(tokenize(text)) != words for text, words in self.db.execute(q, part)):
                return False
        return True

    def _retokenize(self) -> int:
        """Every chunk's words made again from its text; -> the files whose words changed."""
        files = [r[0] for r in self.db.execute("SELECT DISTINCT file_id FROM chunks ORDER BY file_id")]
        changed = 0
        pending: list[tuple[str, int]] = []
        pending_files: set[int] = set()
        for n, file_id in enumerate(files):
            for cid, text, words in self.db.execute(
                    "SELECT id, text, words FROM chunks WHERE file_id = ? ORDER BY ord", (file_id,)).fetchall():
                new = " ".join(tokenize(text))
                if new != words:
                    pending.append((new, cid))
                    pending_files.add(file_id)
            if pending and (len(pending) >= RETOKENIZE_BATCH or n == len(files) - 1):
                if not changed:  # before the first change: tantivy is then rebuilt from SQLite
                    self._keywords.invalidate()
                with self._transaction():
                    gen = self._next_generation()
                    self.db.executemany("UPDATE chunks SET words = ? WHERE id = ?", pending)
                    self.db.executemany("UPDATE files SET gen = ? WHERE id = ?", [(gen, f) for f in pending_files])
                changed += len(pending_files)
                pending, pending_files = [], set()
        return changed

    # -- searching
    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def _chunk_scope(self, file_ids: Sequence[int]) -> ChunkScope:
        """The chunks of ``file_ids``: a bool per chunk id (``.mask``), with what searches derive
        from it; kept until the truth changes, so a scoped search after the first costs a lookup."""
        import numpy as np

        key = ("mask", tuple(int(f) for f in file_ids))
        cache = self._scope_cache()
        if key in cache:
            return cache[key]
        chunk_file = self._chunk_files()
        wanted = np.asarray([int(f) for f in file_ids], dtype="int64")
        size = int(max(chunk_file.max(initial=-1), wanted.max(initial=-1))) + 2
        file_mask = np.zeros(size, dtype=bool)  # the last slot stands for "no chunk here" (-1)
        file_mask[wanted[wanted >= 0]] = True
        cache[key] = scope = ChunkScope(file_mask[chunk_file])
        return scope

    def search_batch_ids(self, query_vectors: Sequence[Sequence[float]], k: int,
                         file_ids: Sequence[int] | None = None) -> list[list[tuple[int, float]]]:
        import numpy as np

        q = np.array(query_vectors, dtype="float32")
        if k <= 0 or not len(q):
            return [[] for _ in range(len(q))]
        dim = self.manifest.dimension
        if dim and (q.ndim != 2 or q.shape[1] != dim):
            raise RagqaError(f"query vectors have {q.shape[-1]} dimensions but knowledge base {self.name!r} "
                             f"has {dim} (was it built with another embedding model?)")
        allowed = self._chunk_scope(file_ids) if file_ids is not None else None
        return self._vectors.search(unit_rows(q), k, allowed)

    def bm25_search(self, query: str, k: int, file_ids: Sequence[int] | None = None) -> list[tuple[int, float]]:
        words = list(dict.fromkeys(tokenize(query)))
        if not words or k <= 0:
            return []
        hits = self._wide_scope_bm25(words, k, file_ids) if file_ids is not None else None
        if hits is None:
            hits = self._keywords.search(words, k, file_ids)
        if not hits:
            return hits
        live = self._existing([i for i, _ in hits])  # a stale keyword index may name deleted chunks
        return [(i, s) for i, s in hits if i in live][:k]

    def _wide_scope_bm25(self, words: list[str], k: int, file_ids: Sequence[int]) -> list[tuple[int, float]] | None:
        """A scope holding a large share of the chunks: the unscoped ranking's head, kept where it is
        in scope, is exactly the scoped top k (a chunk's BM25 score does not depend on the scope),
        and cheaper than tantivy intersecting with a set of a thousand file ids. None: not wide,
        or the head held too few; the caller filters inside tantivy."""
        scope = self._chunk_scope(file_ids)
        mask = scope.mask
        share = scope.share(len(mask) - 1) if len(mask) else 0.0
        if share < WIDE_SCOPE:
            return None
        n = min(1000, int(1.5 * k / share) + 4)
        head = self._keywords.search(words, n, None)  # n + 16 hits at most
        kept = [(i, s) for i, s in head if i < len(mask) and mask[i]]
        return kept if len(kept) >= k + 4 or len(head) < n else None

    def _existing(self, ids: Sequence[int]) -> set[int]:
        out: set[int] = set()
        for part in batches(list(ids), 900):
            q = f"SELECT id FROM chunks WHERE id IN ({','.join('?' * len(part))})"
            out.update(r[0] for r in self.db.execute(q, part))
        return out

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        found: dict[int, Document] = {}
        for part in batches([int(i) for i in ids], 900):
            q = ("SELECT c.id, c.text, c.meta, f.path FROM chunks c JOIN files f ON f.id = c.file_id "
                 f"WHERE c.id IN ({','.join('?' * len(part))})")
            for cid, text, meta, path in self.db.execute(q, part):
                found[cid] = chunk_document(cid, text, meta, path)
        return [found[int(i)] for i in ids if int(i) in found]

    def iter_chunks(self, file_ids: Sequence[int] | None = None) -> Iterator[Document]:
        q = "SELECT c.id, c.text, c.meta, f.path FROM chunks c JOIN files f ON f.id = c.file_id"
        if file_ids is not None:
            for part in batches(list(file_ids), 900):
                rows = self.db.execute(q + f" WHERE c.file_id IN ({','.join('?' * len(part))}) "
                                       "ORDER BY c.file_id, c.ord", part).fetchall()
                yield from (chunk_document(*r) for r in rows)
            return
        for r in self.db.execute(q + " ORDER BY c.file_id, c.ord"):
            yield chunk_document(*r)

    # -- the KB as a whole
    def stats(self) -> KBStats:
        files, failed = self.db.execute(
            "SELECT count(*), coalesce(sum(status != 'ok'), 0) FROM files").fetchone()
        size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return KBStats(self.name, self.engine, int(files) - int(failed), int(failed), self.count(),
                       self.manifest.embedding, size, str(self.folder))

    def drop(self) -> None:
        self.close()
        drop_folder(self.folder)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()


# -- helpers ------------------------------------------------------------------------------------


def drop_folder(folder: Path) -> None:
    """Delete a KB's folder under its write lock (a writer in another process finishes first),
    whatever state its database is in."""
    from filelock import FileLock

    lock = folder / "write.lock"
    try:
        with FileLock(str(lock)):
            for child in folder.iterdir():
                if child != lock:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    except OSError as exc:
        raise _storage_error(exc, folder) from None
    shutil.rmtree(folder, ignore_errors=True)


def _record(row: Sequence[Any]) -> FileRecord:
    rid, path, size, mtime_ns, file_hash, parser, status, error, chunks, updated = row
    return FileRecord(path, size, mtime_ns, file_hash, parser, status, error, chunks, updated, rid)
