"""Files into a knowledge base: read, split, embed, store; unchanged files skipped, changed ones replaced.

``Indexer`` is the indexing half of the pipeline. It owns no model: the embeddings come from the
pipeline, on first need, so a run where every file is unchanged loads none.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import InputError, NoReadableDocumentsError
from ragqa.loaders import check_supported, expand_paths, load_file, loader_id, read_bytes
from ragqa.paths import is_under, kb_path
from ragqa.pipeline.results import IndexReport
from ragqa.progress import PageProgress, file_bar, progress_bar, stderr_is_tty
from ragqa.store import FileRecord, KBView, KnowledgeBase, SyncReport, content_hash
from ragqa.words import tokenize

if TYPE_CHECKING:
    from ragqa.config import Settings
    from ragqa.isolation import ReaderPool
    from ragqa.splitting import ChineseTextSplitter

log = logging.getLogger(__name__)

EMBED_BATCH = 32  # chunks per embedding call: progress updates often, batches stay efficient


class Indexer:
    """Brings a KB up to date with files on disk, with the settings' splitter and OCR options."""

    def __init__(self, settings: "Settings", splitter: "ChineseTextSplitter", embeddings: Callable[[], Any]) -> None:
        from ragqa.caps import Caps

        self.settings = settings
        self.splitter = splitter
        self._embeddings = embeddings  # -> a LangChain Embeddings, loaded by the pipeline on first call
        self.caps = Caps.of(settings)
        self._readers: "ReaderPool | None" = None
        self._readers_lock = threading.Lock()

    def readers(self) -> "ReaderPool | None":
        """The parsing workers (``ragqa.isolation``), started on the first file; None when
        ``parse_isolation`` is off."""
        if self.settings.parse_isolation == "off":
            return None
        with self._readers_lock:
            if self._readers is None:
                from ragqa.isolation import ReaderPool, WorkerLimits

                self._readers = ReaderPool(self.settings.ingest_concurrency, WorkerLimits.of(self.settings))
            return self._readers

    def close(self) -> None:
        """Stop the parsing workers (a new one starts if a file comes after)."""
        with self._readers_lock:
            readers, self._readers = self._readers, None
        if readers is not None:
            readers.close()

    def index_paths(
        self, kb: KnowledgeBase, paths: Sequence[str | Path], *, sync: bool = False, strict: bool = False,
        progress: bool | None = None, on_file: Callable[[str, str, str], None] | None = None,
        on_wait: Callable[[str], None] | None = None, files: list[Path] | None = None,
        on_page: Callable[[str, int, int], None] | None = None, retry_failed: bool = False,
        on_chunks: Callable[[str, int, int], None] | None = None,
    ) -> SyncReport:
        """Bring ``kb`` up to date with the files at ``paths``: add new files, re-index changed ones,
        skip unchanged ones (same size and mtime, or same content), record unreadable ones.

        ``sync`` also removes the KB's files under the given folders that are gone from disk.
        ``strict`` raises on an unreadable file named directly (``ask``); otherwise it is recorded
        as failed and the run goes on. ``on_file(path, status, detail)`` hears about every file,
        ``on_page(path, done, total)`` about every page OCR reads, ``on_chunks(path, done, total)``
        about every batch of chunks embedded. ``retry_failed`` reads a file that
        failed before again even when its size and mtime are the same (a watched file whose
        permission was fixed: chmod changes neither).
        """
        t = time.perf_counter()
        given = list(paths)
        files = expand_paths(given) if files is None else files
        named = {kb_path(p) for p in given if not Path(p).expanduser().is_dir()}
        report = SyncReport()
        show = stderr_is_tty() if progress is None else progress
        with kb.writing(on_wait=on_wait):
            existing = {r.path: r for r in kb.files()}
            bar = file_bar(files, f"indexing into {kb.name}"[:40], enabled=show and len(files) >= 2)
            for path in bar:
                bar.set_postfix_str(path.name[:30], refresh=False)
                try:
                    # OCR's page lines also go to a log (a long scan must show it moves) unless told not to
                    status, record = self.sync_file(kb, path, existing, progress is not False, on_page, retry_failed,
                                                    on_chunks)
                except InputError as exc:
                    if strict and kb_path(path) in named:
                        raise
                    report.failed.append(str(exc))
                    if on_file:
                        on_file(str(path), "failed", str(exc))
                    continue
                setattr(report, status, getattr(report, status) + 1)
                if status != "unchanged":
                    report.chunks += record.chunks
                if record.id is not None:
                    report.file_ids.append(record.id)
                    report.sources[record.path] = str(path)
                if on_file:
                    on_file(str(path), status, f"{record.chunks} chunks")
            if sync:
                # gone = no longer on disk; not "missed by the folder walk" (a hidden file named directly
                # when it was indexed is still there, and stays)
                roots = [Path(kb_path(p)) for p in given if Path(p).expanduser().is_dir()]
                gone = [r.path for r in existing.values()
                        if any(is_under(Path(r.path), root) for root in roots) and not os.path.lexists(r.path)]
                report.removed = kb.remove_files(gone)
                for path in gone:
                    if on_file:
                        on_file(path, "removed", "")
        report.seconds = time.perf_counter() - t
        return report

    def sync_file(self, kb: KnowledgeBase, path: Path, existing: dict[str, FileRecord], show: bool = False,
                  on_page: Callable[[str, int, int], None] | None = None,
                  retry_failed: bool = False,
                  on_chunks: Callable[[str, int, int], None] | None = None) -> tuple[str, FileRecord]:
        """One file into the KB; -> (added | updated | unchanged, its record). InputError if unreadable."""
        check_supported(path)
        real = kb_path(path)
        old = existing.get(real)
        parser = loader_id(path, self.settings.ocr, self.settings.ocr_languages)
        try:
            st = path.stat()
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        same_stat = old is not None and (old.size, old.mtime_ns, old.parser) == (st.st_size, st.st_mtime_ns, parser)
        if same_stat and old.status == "ok":
            return "unchanged", old
        if same_stat and old.status == "failed" and not retry_failed:
            raise InputError(old.error)  # unchanged since it failed: the same reason, without re-reading
        record = FileRecord(real, st.st_size, st.st_mtime_ns, "", parser)
        try:
            data = read_bytes(path, self.settings.max_file_mb)
            record.hash = content_hash(data)
            if old is not None and old.status == "ok" and (old.hash, old.parser) == (record.hash, parser):
                kb.update_record(record)  # touched, not changed
                record.id, record.chunks = old.id, old.chunks
                existing[real] = record
                return "unchanged", record
            status = "updated" if old is not None else "added"
            twin = kb.find_by_hash(record.hash, parser)
            if twin is not None:  # the same bytes under another name: copy, do not re-embed
                existing[real] = kb.copy_file(twin, record)
                return status, record
            pages = (lambda done, total: on_page(str(path), done, total)) if on_page else None
            chunks = self.splitter.split_documents(self.load_file(path, data, show=show, on_page=pages))
            if not chunks:
                raise InputError(f"{path}: no text to index")
        except InputError as exc:
            record.error = str(exc)
            kb.mark_failed(record)
            existing[real] = record
            raise
        done = (lambda n, total: on_chunks(str(path), n, total)) if on_chunks else None
        vectors, tokens = self.embed_chunks(chunks, path.name, done)
        existing[real] = kb.put_file(record, chunks, vectors, tokens)
        log.info("indexed %s: %d chunks", path, len(chunks))
        return status, record

    def load_file(self, path: Path, data: bytes, *, show: bool = True,
                  on_page: Callable[[int, int], None] | None = None) -> list[Document]:
        """One file's Documents, read with the OCR settings. OCR shows a progress bar per page on
        stderr when ``show``, and tells ``on_page(done, total)``."""
        readers = self.readers()
        with PageProgress(path.name, show, on_page) as pages:
            if readers is not None:  # a worker process with limits: a hostile file fails alone
                return readers.read(path, data, ocr=self.settings.ocr, ocr_languages=self.settings.ocr_languages,
                                    caps=self.caps, on_page=pages)
            return load_file(path, data, ocr=self.settings.ocr, ocr_languages=self.settings.ocr_languages,
                             on_page=pages, caps=self.caps)

    def embed_chunks(self, chunks: list[Document], name: str,
                     on_done: Callable[[int, int], None] | None = None) -> tuple[Any, list[list[str]]]:
        """Chunks -> (their vectors, their BM25 words): what a KB stores per chunk. ``on_done(done,
        total)`` hears the chunks embedded so far."""
        import numpy as np

        texts = [c.page_content for c in chunks]
        vectors = np.asarray(self._embed_with_progress(texts, name, on_done), dtype="float32")
        return vectors, [tokenize(t) for t in texts]

    def _embed_with_progress(self, texts: list[str], name: str,
                             on_done: Callable[[int, int], None] | None = None) -> list[list[float]]:
        """Embed in batches under one progress bar (a long file takes minutes on a CPU)."""
        vectors: list[list[float]] = []
        embeddings = self._embeddings()
        with progress_bar(len(texts), f"embedding {name[:30]}", "chunk", enabled=len(texts) > EMBED_BATCH) as bar:
            count = [0]

            def step(n: int) -> None:
                bar.update(n)
                count[0] += n
                if on_done is not None:
                    on_done(count[0], len(texts))

            if hasattr(embeddings, "embed_many"):  # a server: its own batches, several in flight
                return embeddings.embed_many(texts, step)
            for i in range(0, len(texts), EMBED_BATCH):
                batch = texts[i:i + EMBED_BATCH]
                vectors.extend(embeddings.embed_documents(batch))
                step(len(batch))
        return vectors

    def view_of(self, kb: KnowledgeBase, paths: Sequence[str | Path], files: list[Path], *,
                skip_unreadable: bool = False) -> tuple[KBView, IndexReport]:
        """The files at ``paths`` (``files``: them expanded), synced into ``kb`` and seen through a
        filter (only those files).

        A file named directly must be readable (unless ``skip_unreadable``); an unreadable file
        found inside a named folder (empty, binary, a scan without text) is skipped and reported.
        Unchanged files cost a stat each, so a large cached folder is ready in milliseconds."""
        t = time.perf_counter()
        sync = self.index_paths(kb, paths, strict=not skip_unreadable, files=files)
        report = IndexReport(files=sync.added + sync.updated + sync.unchanged + len(sync.failed),
                             cached=sync.unchanged, skipped=list(sync.failed))
        if not sync.file_ids:
            raise NoReadableDocumentsError("no readable documents: " + "; ".join(sync.failed))
        records = {r.id: r for r in kb.files()}
        ok_ids = {i for i, r in records.items() if r.status == "ok"}
        wanted = sorted(set(sync.file_ids))
        report.chunks = sum(records[i].chunks for i in wanted if i in records)
        view = KBView(kb, None if set(wanted) == ok_ids else wanted, sync.sources)
        report.seconds = time.perf_counter() - t
        return view, report
