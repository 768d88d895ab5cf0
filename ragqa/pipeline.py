"""The only place that wires the steps: files -> chunks -> index -> retrieval -> chain -> answer.

``Pipeline`` keeps the loaded embedding model and LLM, so a web page or a batch loads each once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from ragqa.config import Settings
from ragqa.errors import InputError, NoReadableDocumentsError, RagqaError
from ragqa.loaders import expand_paths, load_file, read_bytes
from ragqa.models import resolve_embedding
from ragqa.splitting import ChineseTextSplitter
from ragqa.store import FileRecord, KBView, KnowledgeBase, Manifest, SyncReport, content_hash

log = logging.getLogger(__name__)

EMBED_BATCH = 32  # chunks per embedding call: progress updates often, batches stay efficient


@dataclass
class Source:
    """One retrieved chunk: where it is and how well it matched."""

    source: str
    text: str
    start: int
    score: float
    page: int | None = None  # PDF page, slide, or sheet number
    page_label: str | None = None  # "slide 3", "sheet Prices": where ``page`` is not a PDF page

    @classmethod
    def from_document(cls, doc: Document) -> "Source":
        m = doc.metadata
        return cls(m.get("source", ""), doc.page_content, int(m.get("start", 0)), float(m.get("score", 0.0)),
                   m.get("page"), m.get("page_label"))

    def where(self) -> str:
        """'p.3', 'slide 3', 'sheet Prices', or '' for a document without pages."""
        if self.page_label:
            return self.page_label
        return f"p.{self.page}" if self.page is not None else ""

    def location(self) -> str:
        where = self.where()
        return f"{self.source}{' ' + where if where else ''} @{self.start}"


@dataclass
class Answer:
    answer: str
    sources: list[Source]
    timings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {"answer": self.answer, "sources": [asdict(s) for s in self.sources], "timings": self.timings}
        for s in d["sources"]:
            for key in ("page", "page_label"):
                if s[key] is None:
                    del s[key]
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class IndexReport:
    files: int = 0
    cached: int = 0
    chunks: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # "path: reason" for unreadable files in folders


class Pipeline:
    """Holds settings and the lazily loaded models; ``ask`` answers one question."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.splitter = ChineseTextSplitter(settings.chunk_size, settings.chunk_overlap)
        self.embedding_spec = resolve_embedding(settings.embedding_model)
        self._embeddings: Any = None
        self._reranker: Any = None
        self._language_model: Any = None
        self._backends: dict[bool, Any] = {}
        self._backend_name: str | None = None
        self._files_kb: KnowledgeBase | None = None
        self._kbs: dict[str, KnowledgeBase] = {}
        self.timings: dict[str, float] = {}

    # -- models, loaded on first use
    @property
    def embeddings(self) -> Any:
        if self._embeddings is None:
            from ragqa.embeddings import make_embeddings

            t = time.perf_counter()
            self._embeddings = make_embeddings(self.embedding_spec)  # progress: see _embed_with_progress
            self.timings["embedding_load_s"] = round(time.perf_counter() - t, 3)
        return self._embeddings

    @property
    def backend_name(self) -> str:
        """llama.cpp, transformers or openai: as set, or picked from the model name (auto)."""
        if self._backend_name is None:
            from ragqa.llms import resolve_backend

            self._backend_name = resolve_backend(self.settings)
        return self._backend_name

    def backend(self, *, vocab_only: bool = False) -> Any:
        """The LLM backend; a full model also serves where only the tokenizer is needed."""
        if False in self._backends:
            return self._backends[False]
        if vocab_only not in self._backends:
            from ragqa.llms import load_backend

            t = time.perf_counter()
            self._backends[vocab_only] = load_backend(self.settings, backend=self.backend_name, vocab_only=vocab_only)
            self.timings["llm_load_s"] = round(time.perf_counter() - t, 3)
        return self._backends[vocab_only]

    def check_models(self) -> None:
        """Fail on a bad model, server, chat format name or format file before any slow work starts."""
        from ragqa.chat_formats import check_chat_format
        from ragqa.models import resolve_hf_model, resolve_llm_path

        name = self.backend_name
        if name == "llama.cpp":
            resolve_llm_path(self.settings.model)
        elif name == "transformers":
            resolve_hf_model(self.settings.model)
        elif name == "openai" and not self._backends:
            self.backend()  # reaches the server: a wrong URL, key or model fails now, not after indexing
        check_chat_format(self.settings.chat_format)

    # -- indexing
    def splitter_settings(self) -> dict[str, Any]:
        return {"kind": "zh-sentence", "chunk_size": self.settings.chunk_size, "overlap": self.settings.chunk_overlap}

    def manifest(self) -> Manifest:
        """What a knowledge base's chunks depend on: this run's embeddings and splitter."""
        return Manifest(self.embedding_spec.cache_id, self.splitter_settings())

    def open_kb(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name``, checked against this run's embeddings and splitter."""
        from ragqa.store import open_kb

        return open_kb(self.settings, name, self.manifest(), create=create)

    def files_kb(self) -> KnowledgeBase:
        """The internal KB that ``ask PATH...`` keeps the files it was given in (under cache_dir)."""
        if self._files_kb is None:
            from ragqa.store import open_cache_kb

            self._files_kb = open_cache_kb(self.settings, self.manifest())
        return self._files_kb

    def index_paths(
        self, kb: KnowledgeBase, paths: Sequence[str | Path], *, sync: bool = False, strict: bool = False,
        progress: bool | None = None, on_file: Callable[[str, str, str], None] | None = None,
        on_wait: Callable[[str], None] | None = None, files: list[Path] | None = None,
        on_page: Callable[[str, int, int], None] | None = None,
    ) -> SyncReport:
        """Bring ``kb`` up to date with the files at ``paths``: add new files, re-index changed ones,
        skip unchanged ones (same size and mtime, or same content), record unreadable ones.

        ``sync`` also removes the KB's files under the given folders that are gone from disk.
        ``strict`` raises on an unreadable file named directly (``ask``); otherwise it is recorded
        as failed and the run goes on. ``on_file(path, status, detail)`` hears about every file,
        ``on_page(path, done, total)`` about every page OCR reads.
        """
        from tqdm import tqdm

        t = time.perf_counter()
        given = list(paths)
        files = expand_paths(given) if files is None else files
        named = {Path(p).expanduser().resolve() for p in given if not Path(p).expanduser().is_dir()}
        report = SyncReport()
        show = _stderr_is_tty() if progress is None else progress
        with kb.writing(on_wait=on_wait):
            existing = {r.path: r for r in kb.files()}
            bar = tqdm(files, desc=f"indexing into {kb.name}"[:40], unit="file", disable=not show or len(files) < 2)
            for path in bar:
                bar.set_postfix_str(path.name[:30], refresh=False)
                try:
                    # OCR's page lines also go to a log (a long scan must show it moves) unless told not to
                    status, record = self._sync_file(kb, path, existing, progress is not False, on_page)
                except InputError as exc:
                    if strict and path.resolve() in named:
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
                roots = [Path(p).expanduser().resolve() for p in given if Path(p).expanduser().is_dir()]
                on_disk = {str(p.resolve()) for p in files}
                gone = [r.path for r in existing.values()
                        if r.path not in on_disk and any(_is_under(Path(r.path), root) for root in roots)]
                report.removed = kb.remove_files(gone)
                for path in gone:
                    if on_file:
                        on_file(path, "removed", "")
        report.seconds = time.perf_counter() - t
        return report

    def _sync_file(self, kb: KnowledgeBase, path: Path, existing: dict[str, FileRecord], show: bool = False,
                   on_page: Callable[[str, int, int], None] | None = None) -> tuple[str, FileRecord]:
        """One file into the KB; -> (added | updated | unchanged, its record). InputError if unreadable."""
        from ragqa.loaders import check_supported, loader_id

        check_supported(path)
        real = str(path.resolve())
        old = existing.get(real)
        parser = loader_id(path, self.settings.ocr, self.settings.ocr_languages)
        try:
            st = path.stat()
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        same_stat = old is not None and (old.size, old.mtime_ns, old.parser) == (st.st_size, st.st_mtime_ns, parser)
        if same_stat and old.status == "ok":
            return "unchanged", old
        if same_stat and old.status == "failed":
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
        vectors, tokens = self.embed_chunks(chunks, path.name)
        existing[real] = kb.put_file(record, chunks, vectors, tokens)
        log.info("indexed %s: %d chunks", path, len(chunks))
        return status, record

    def load_file(self, path: Path, data: bytes, *, show: bool = True,
                  on_page: Callable[[int, int], None] | None = None) -> list[Document]:
        """One file's Documents, read with the OCR settings. OCR shows a progress bar per page on
        stderr when ``show``, and tells ``on_page(done, total)``."""
        with _PageProgress(path.name, show, on_page) as pages:
            return load_file(path, data, ocr=self.settings.ocr, ocr_languages=self.settings.ocr_languages,
                             on_page=pages)

    def embed_chunks(self, chunks: list[Document], name: str) -> tuple[Any, list[list[str]]]:
        """Chunks -> (their vectors, their BM25 words): what a KB stores per chunk."""
        import numpy as np

        from ragqa.retrieval import tokenize

        texts = [c.page_content for c in chunks]
        vectors = np.asarray(self._embed_with_progress(texts, name), dtype="float32")
        return vectors, [tokenize(t) for t in texts]

    def _embed_with_progress(self, texts: list[str], name: str) -> list[list[float]]:
        """Embed in batches under one progress bar (a long file takes minutes on a CPU)."""
        vectors: list[list[float]] = []
        with progress_bar(len(texts), f"embedding {name[:30]}", "chunk", enabled=len(texts) > EMBED_BATCH) as bar:
            for i in range(0, len(texts), EMBED_BATCH):
                batch = texts[i:i + EMBED_BATCH]
                vectors.extend(self.embeddings.embed_documents(batch))
                bar.update(len(batch))
        return vectors

    def build_index(self, paths: Iterable[str | Path], *, skip_unreadable: bool = False) -> tuple[KBView, IndexReport]:
        """The files at ``paths``, synced into the internal files KB and seen through a filter.

        A file named directly must be readable (unless ``skip_unreadable``); an unreadable file
        found inside a named folder (empty, binary, a scan without text) is skipped and reported.
        Unchanged files cost a stat each, so a large cached folder is ready in milliseconds."""
        from ragqa.store import KBView

        t = time.perf_counter()
        paths = list(paths)
        files = expand_paths(paths)  # a missing path fails before anything is created
        kb = self.files_kb()
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

    def kb(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name``, opened once per pipeline and kept open (a web page asks,
        uploads and lists through one object)."""
        kb = self._kbs.get(name)
        if kb is None:
            kb = self._kbs[name] = self.open_kb(name, create=create)
        return kb

    def forget_kb(self, name: str) -> None:
        """Close a kept-open KB (it was dropped, or is about to be)."""
        kb = self._kbs.pop(name, None)
        if kb is not None:
            kb.close()

    def kb_index(self, name: str) -> tuple[KBView, IndexReport]:
        """A knowledge base to search (opened once per pipeline); refused when it has no chunks."""
        t = time.perf_counter()
        kb = self.kb(name)
        n = kb.count()
        if not n:
            raise InputError(f"knowledge base {name!r} is empty: add files with ragqa index PATH... --kb {name}")
        files = sum(1 for r in kb.files() if r.status == "ok") if kb.engine == "local" else 0
        report = IndexReport(files=files, cached=files, chunks=n, seconds=time.perf_counter() - t)
        return kb.view(None), report

    def kb_paths(self, name: str) -> list[str]:
        """The files of a knowledge base (what ``summarize --kb`` summarizes)."""
        kb = self.open_kb(name)
        try:
            from ragqa.retrieval import TEXT_PARSER

            # files only: texts added through the LangChain store have no file to summarize
            paths = [r.path for r in kb.files() if r.status == "ok" and r.parser != TEXT_PARSER]
        finally:
            kb.close()
        if not paths:
            raise InputError(f"knowledge base {name!r} is empty: add files with ragqa index PATH... --kb {name}")
        return paths

    def retriever(self, index: Any, settings: Settings | None = None) -> Any:
        from ragqa.retrieval import make_retriever

        s = settings or self.settings
        embeddings = None if s.retriever == "bm25" else self.embeddings  # BM25 needs no model
        return make_retriever(s.retriever, index, embeddings, s.k, reranker=self.reranker,
                              candidates=s.rerank_candidates, fusion=s.fusion)

    @property
    def reranker(self) -> Any:
        if self.settings.reranker and self._reranker is None:
            from ragqa.retrieval import CrossEncoderReranker

            self._reranker = CrossEncoderReranker(self.settings.reranker)
        return self._reranker

    # -- answering
    def summarize_file(self, path: str | Path, *, on_step: Callable[[str], None] | None = None,
                       data: bytes | None = None) -> dict[str, Any]:
        """Summarize one document; -> a record {source, summary, chain, chunks, seconds, status, key, lang}."""
        from ragqa.chains import summarize_chunks
        from ragqa.prompts import detect_lang

        t = time.perf_counter()
        path = Path(path)
        if data is None:
            data = read_bytes(path, self.settings.max_file_mb)
        text = "\n\n".join(d.page_content for d in self.load_file(path, data))
        sm = self.language_model()
        lang = detect_lang(text[:3000]) if self.settings.lang == "auto" else self.settings.lang
        chunks = self.summary_chunks(text, sm, lang)
        result = summarize_chunks(sm.llm, chunks, sm.pb, self.settings.summary_chain, lang, on_step)
        return {
            "source": str(path), "summary": result.summary, "chain": result.chain, "chunks": len(chunks),
            "seconds": round(time.perf_counter() - t, 2), "status": "ok", "lang": lang,
            "key": _summary_key(content_hash(data), self.settings), **({"notes": result.notes} if result.notes else {}),
        }

    def language_model(self) -> "LanguageModel":
        """The LLM, loaded once: the backend, it as a LangChain LLM, and its prompt builder."""
        if self._language_model is None:
            self._language_model = LanguageModel(self)
        return self._language_model

    def summary_chunks(self, text: str, sm: Any, lang: str) -> list[str]:
        """Chunks as large as a summary prompt can hold, measured with the model's tokenizer.

        A document that fits whole is one chunk. Otherwise the room left for text in a refine prompt
        (budget - instructions - an existing summary of up to max_new_tokens) is converted to
        characters with this document's own characters-per-token ratio.
        """
        from ragqa.prompts import fill_prompt

        pb = sm.pb
        if pb.fits(pb.render(fill_prompt("sum_stuff", lang, text=text))):
            return [text]
        overhead = sm.backend.count_tokens(pb.render(fill_prompt("sum_refine", lang, text="", existing_answer="")))
        room = pb.budget - overhead - self.settings.max_new_tokens
        if room < 64:
            raise InputError(
                f"n_ctx {self.settings.n_ctx} leaves {room} tokens for text after the instructions and "
                f"max_new_tokens; raise n_ctx or lower max_new_tokens"
            )
        sample = text[:8000]
        chars_per_token = len(sample) / max(1, sm.backend.count_tokens(sample))
        size = max(100, int(room * chars_per_token * 0.9))
        return ChineseTextSplitter(size, 0).split_text(text)

    def summarize_batch(
        self, paths: Sequence[str | Path], out: str | Path, *, force: bool = False,
        on_file: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
    ) -> SummaryReport:
        """Summarize many documents into ``out`` (.jsonl or a folder), resuming where a run stopped.

        Each result is recorded the moment it is done. A document that fails is recorded with its
        error and the batch goes on. The model is loaded once, before the first document.
        """
        from tqdm import tqdm

        from ragqa.outputs import SummaryStore

        t0 = time.perf_counter()
        store = SummaryStore.open(out)
        files = expand_paths(expand_globs(paths))
        self.check_models()
        report = SummaryReport()
        bar = tqdm(files, desc="summarizing", unit="file", disable=not progress)
        for path in bar:
            source = str(path)
            bar.set_postfix_str(path.name[:30])
            try:
                data = read_bytes(path, self.settings.max_file_mb)
                key = _summary_key(content_hash(data), self.settings)
                if not force and store.done(source, key):
                    report.skipped += 1
                    if on_file:
                        on_file({"source": source, "status": "skipped"})
                    continue
                step = (lambda s: bar.set_postfix_str(f"{path.name[:20]} {s}")) if progress else None
                record = self.summarize_file(path, on_step=step, data=data)
                report.summarized += 1
            except InputError as exc:
                record = {"source": source, "summary": "", "chain": None, "chunks": 0, "seconds": 0.0,
                          "status": "failed", "error": str(exc)}
                report.failed += 1
            except RagqaError:
                raise  # a model or output problem: every further document would fail the same way
            store.put(record)
            if on_file:
                on_file(record)
        report.seconds = time.perf_counter() - t0
        return report

    def prompt_builder(self, backend: Any) -> Any:
        from ragqa.chains import PromptBuilder

        s = self.settings
        fmt = backend.chat_format(s.chat_format)
        return PromptBuilder(
            chat_format=fmt,
            count_tokens=backend.count_tokens,
            budget=backend.context_size() - s.max_new_tokens,
            system_prompt=s.system_prompt,
            lang=s.lang,
        )

    def ask(
        self,
        paths: Sequence[str | Path],
        question: str,
        *,
        on_token: Callable[[str], None] | None = None,
        dry_run: bool = False,
        history: Sequence[Any] = (),
        kb: str | None = None,
        **overrides: Any,
    ) -> Answer:
        """Answer ``question`` from the files; ``on_token`` sees the answer as it streams.

        With ``dry_run`` the model's weights are not loaded: the answer is empty and
        ``prompts[0]`` is the exact first prompt the model would get. ``history`` holds earlier
        turns of a conversation; ``overrides`` (chain, k, retriever) apply to this question only.
        """
        answer: Answer | None = None
        for item in self.ask_stream(paths, question, dry_run=dry_run, history=history, kb=kb, **overrides):
            if isinstance(item, Answer):
                answer = item
            elif on_token:
                on_token(item)
        assert answer is not None
        return answer

    def ask_stream(
        self,
        paths: Sequence[str | Path],
        question: str,
        *,
        dry_run: bool = False,
        history: Sequence[Any] = (),
        skip_unreadable: bool = False,
        kb: str | None = None,
        **overrides: Any,
    ) -> Iterator[str | Answer]:
        """Like ``ask``, as a generator: the answer's pieces (str) as they stream, then the Answer.

        The documents are the files at ``paths`` or, with ``kb``, that knowledge base.
        ``skip_unreadable`` treats named files like files found in a folder: an unreadable one is
        left out with a note (the web page, where one bad upload must not block the rest).
        """
        question = (question or "").strip()
        if not question:
            raise InputError("the question is empty")
        if kb is not None and paths:
            raise InputError("give either PATH... or --kb NAME, not both (add files to a KB with: ragqa index PATH --kb NAME)")
        if not paths and kb is None:
            raise InputError("no documents given")
        settings = self._settings_for(overrides)
        self.check_models()
        self.timings = {}
        if kb is not None:
            index, report = self.kb_index(kb)
        else:
            index, report = self.build_index(paths, skip_unreadable=skip_unreadable)
        timings: dict[str, Any] = {
            "index_s": round(report.seconds, 3),
            "files": report.files,
            "files_cached": report.cached,
            "chunks": report.chunks,
        }
        skipped = [f"skipped {reason}" for reason in report.skipped]
        retriever = self.retriever(index, settings)
        if dry_run:
            from ragqa.chains import first_prompt, retrieval_query

            backend = self.backend(vocab_only=True)
            pb, history_notes = self.prompt_builder(backend).with_history(history)
            notes = skipped + list(getattr(backend, "notes", [])) + history_notes
            t = time.perf_counter()
            docs = retriever.invoke(retrieval_query(question, history))
            timings["retrieve_s"] = round(time.perf_counter() - t, 3)
            prompt, used, fit_notes = first_prompt(question, docs, pb, settings.chain)
            timings.update(self.timings)
            yield Answer("", [Source.from_document(d) for d in used], timings, notes + fit_notes, [prompt])
            return

        from ragqa.chains import make_qa_chain

        lm = self.language_model()
        backend = lm.backend
        notes = skipped + list(getattr(backend, "notes", []))
        chain = make_qa_chain(lm.llm, retriever, lm.pb, settings.chain)
        t = time.perf_counter()
        result: dict[str, Any] = {}
        for part in chain.stream({"question": question, "history": list(history)}):
            if part.get("answer"):
                yield part["answer"]
            result = part if not result else result + part
        timings["answer_s"] = round(time.perf_counter() - t, 3)
        timings.update(self.timings)
        timings.update(backend.stats.as_dict())
        yield Answer(
            answer=result.get("answer", "").strip(),
            sources=[Source.from_document(d) for d in result.get("source_documents", [])],
            timings=timings,
            notes=notes + result.get("notes", []),
            prompts=result.get("prompts", []),
        )

    PER_QUESTION = ("chain", "k", "retriever", "fusion")

    def _settings_for(self, overrides: dict[str, Any]) -> Settings:
        """The settings with per-question overrides (chain, k, retriever, fusion), validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - set(self.PER_QUESTION)
        if unknown:
            raise TypeError(f"not a per-question setting: {', '.join(sorted(unknown))}")
        if not given:
            return self.settings
        from pydantic import ValidationError

        from ragqa.config import _one_line

        try:
            return Settings.model_validate({**self.settings.model_dump(), **given})
        except ValidationError as exc:
            raise InputError(_one_line(exc)) from None


# -- summarization ------------------------------------------------------------------------------

SUMMARY_SETTINGS = ("model", "chat_format", "system_prompt", "summary_chain", "lang", "n_ctx", "max_new_tokens",
                    "temperature", "top_k", "top_p", "repeat_penalty", "seed", "rope_freq_base", "rope_freq_scale")
# part of the key only when changed from their defaults, so summaries made before they existed still match
SUMMARY_SETTINGS_IF_SET = ("backend", "base_url", "api_model", "torch_dtype", "load_in_4bit", "load_in_8bit", "rope_scaling")


@dataclass
class SummaryReport:
    summarized: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def _summary_key(file_hash: str, settings: Settings) -> str:
    """Same bytes + same generation settings -> same summary; anything else is redone.

    A chat format file counts by its content, so editing it redoes the summaries too.
    """
    import hashlib
    import json

    from ragqa.chat_formats import format_file_digest

    fields = {k: getattr(settings, k) for k in SUMMARY_SETTINGS}
    fields.update({k: getattr(settings, k) for k in SUMMARY_SETTINGS_IF_SET
                   if getattr(settings, k) != Settings.model_fields[k].default})
    if digest := format_file_digest(settings.chat_format):
        fields["chat_format_file"] = digest
    blob = json.dumps({"file": file_hash, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def expand_globs(paths: Iterable[str | Path]) -> list[str]:
    """Shell-style patterns ('docs/**/*.pdf') expanded here too, for shells and callers that do not."""
    import glob

    out: list[str] = []
    for p in paths:
        p = str(p)
        if not Path(p).exists() and any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputError(f"{p}: no files match this pattern")
            out.extend(matches)
        else:
            out.append(p)
    return out


class LanguageModel:
    """What every chain needs from the LLM: the backend, a LangChain LLM over it, the prompt builder."""

    def __init__(self, pipeline: "Pipeline") -> None:
        from ragqa.llms import GenerationParams, RagqaLLM

        self.backend = pipeline.backend()  # load_backend with pipeline.backend_name
        self.pb = pipeline.prompt_builder(self.backend)
        self.llm = RagqaLLM(backend=self.backend, params=asdict(GenerationParams.from_settings(pipeline.settings)),
                            stop_default=list(self.pb.chat_format.stop))


LOG_PROGRESS_EVERY_S = 10.0


class _LineProgress:
    """Progress for a stderr that is not a terminal (a log file, CI): a plain line every
    ``LOG_PROGRESS_EVERY_S`` seconds, so a file that takes hours still shows it is moving."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        import sys

        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_PROGRESS_EVERY_S and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            sys.stderr.write(f"{self.desc}: {self.done}/{self.total} {self.unit}s "
                             f"({100 * self.done // max(self.total, 1)}%, about {left:.0f}s left)\n")
            sys.stderr.flush()

    def __enter__(self) -> "_LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _PageProgress:
    """OCR's per-page progress as a bar, opened at the first page (most files need no OCR)."""

    def __init__(self, name: str, show: bool = True, also: Callable[[int, int], None] | None = None) -> None:
        self.name, self.show, self.also, self.bar = name, show, also, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, f"OCR {self.name[:30]}", "page", enabled=self.show and total > 1).__enter__()
        self.bar.update(1)
        if self.also is not None:
            self.also(done, total)

    def __enter__(self) -> "_PageProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True) -> Any:
    """tqdm on a terminal; timed plain lines when stderr is a log; nothing when not ``enabled``."""
    from tqdm import tqdm

    if enabled and _stderr_is_tty():
        return tqdm(total=total, desc=desc, unit=unit)
    if enabled:
        return _LineProgress(total, desc, unit)
    return tqdm(total=total, disable=True)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
