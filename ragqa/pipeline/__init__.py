"""The only place that wires the steps: files -> chunks -> index -> retrieval -> chain -> answer.

``Pipeline`` keeps the loaded embedding model and LLM, so a web page or a batch loads each once,
and is what every front end calls (the CLI, the web page, the LangChain stores): asking, indexing
(``indexing.Indexer``), summarizing (``summaries.Summarizer``) and knowledge-base admin. The
results it hands back are in ``results``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ragqa.config import Settings
from ragqa.errors import InputError, RagqaError
from ragqa.loaders import expand_paths
from ragqa.models import EmbeddingSpec, resolve_embedding
from ragqa.paths import is_under, kb_path
from ragqa.pipeline.indexing import EMBED_BATCH, Indexer
from ragqa.pipeline.results import Answer, IndexReport, Source, SummaryReport
from ragqa.pipeline.uploads import Uploads
from ragqa.pipeline.summaries import SUMMARY_SETTINGS, SUMMARY_SETTINGS_IF_SET, Summarizer, _summary_key, expand_globs
from ragqa.splitting import ChineseTextSplitter
from ragqa.store import TEXT_PARSER, TEXT_PREFIX, FileRecord, KBStats, KBView, KnowledgeBase, Manifest, SyncReport
from ragqa.store.scope import select_documents
from ragqa.words import use_keyword_fold

if TYPE_CHECKING:
    from ragqa.gate import Gate

log = logging.getLogger(__name__)

__all__ = [  # what callers and tests import from ragqa.pipeline, wherever it is defined
    "EMBED_BATCH", "SUMMARY_SETTINGS", "SUMMARY_SETTINGS_IF_SET", "Answer", "IndexReport", "LanguageModel",
    "Pipeline", "Source", "SummaryReport", "_summary_key", "expand_globs",
]


def check_question_length(question: str, settings: Settings) -> None:
    """A question over ``max_question_chars`` is refused before any work (one line, with the limit)."""
    limit = settings.max_question_chars
    if len(question) > limit:
        raise InputError(f"the question is {len(question):,} characters long; this server takes at most "
                         f"{limit:,} (max_question_chars)")


class Pipeline:
    """Holds settings and the lazily loaded models; ``ask`` answers one question."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        use_keyword_fold(settings.keyword_fold)  # process-wide: tokenize has no settings of its own
        self.splitter = ChineseTextSplitter(settings.chunk_size, settings.chunk_overlap)
        self._embeddings: Any = None
        self._remembered: Any = None  # RememberedPassages over _embeddings, for citations
        self._reranker: Any = None
        self._language_model: Any = None
        self._backends: dict[bool, Any] = {}
        self._backend_name: str | None = None
        self._files_kb: KnowledgeBase | None = None
        self._kbs: dict[str, KnowledgeBase] = {}
        self._calibrations: dict[tuple[str, str], Any] = {}  # (KB, collection key) -> abstain.Calibration
        self._too_small: set[tuple[str, str, int]] = set()
        self._load_lock = threading.RLock()  # concurrent first questions load each model once
        self.timings: dict[str, float] = {}
        self.indexer = Indexer(settings, self.splitter, lambda: self.embeddings)
        self.uploads = Uploads(settings)
        self.summarizer = Summarizer(settings, self.language_model, self.load_file, self.check_models)

    @functools.cached_property
    def embedding_spec(self) -> Any:
        """The embedding model the settings name, resolved (a name, a folder, a hub id); with
        ``embedding_base_url``, the server's model (asking the server which, when not named)."""
        if self.settings.embedding_base_url:
            model = self.embeddings.model  # reaches the server: a wrong URL or model fails now, in one line
            return EmbeddingSpec(model, self.settings.embedding_base_url, False, f"server:{model}", "server")
        return resolve_embedding(self.settings.embedding_model)

    # -- models, loaded on first use
    @property
    def embeddings(self) -> Any:
        if self._embeddings is None:
            with self._load_lock:
                if self._embeddings is None:
                    t = time.perf_counter()
                    if self.settings.embedding_base_url:
                        from ragqa.server_embeddings import ServerEmbeddings

                        self._embeddings = ServerEmbeddings(self.settings)
                    else:
                        from ragqa.embeddings import make_embeddings

                        self._embeddings = make_embeddings(self.embedding_spec)  # progress: see Indexer.embed_chunks
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
        with self._load_lock:
            if False in self._backends:
                return self._backends[False]
            if vocab_only not in self._backends:
                from ragqa.llms import load_backend

                t = time.perf_counter()
                self._backends[vocab_only] = load_backend(self.settings, backend=self.backend_name,
                                                          vocab_only=vocab_only)
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
        return Manifest(self.embedding_spec.cache_id, self.splitter_settings(), probe=self.fingerprint)

    def fingerprint(self) -> list[list[float]]:
        """This run's embedding model's vectors of the probe texts (what a KB remembers of its model)."""
        from ragqa.store.base import PROBE_TEXTS

        return [[round(float(x), 5) for x in v] for v in self.embeddings.embed_documents(list(PROBE_TEXTS))]

    def open_kb(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name``, checked against this run's embeddings and splitter."""
        from ragqa.store import open_kb

        return open_kb(self.settings, name, self.manifest(), create=create)

    def _adopt_moved_uploads(self, kb: KnowledgeBase) -> None:
        """A KB whose data folder was copied or moved names its uploads under the old folder's path:
        before a write they are renamed to this folder's (one transaction; nothing re-embedded), so
        deleting in the copy never touches the original and re-uploading a file finds it unchanged."""
        if getattr(kb, "engine", "") != "local":  # a Milvus KB is shared by replicas, each with its own folder
            return
        moved = self.uploads.moved(kb.name, [r.path for r in kb.files()])
        if not moved:
            return
        try:
            with kb.writing():
                done = kb.rename_files(moved)
        except (RagqaError, NotImplementedError) as exc:  # read-only, or an engine that cannot rename
            log.warning("knowledge base %s: uploads under another data folder's path were not renamed: %s",
                        kb.name, exc)
            return
        if done:
            log.warning("knowledge base %s: %d upload(s) renamed to this data folder (%s)", kb.name, done,
                        self.uploads.folder(kb.name))

    def files_kb(self) -> KnowledgeBase:
        """The internal KB that ``ask PATH...`` keeps the files it was given in (under cache_dir)."""
        if self._files_kb is None:
            from ragqa.store import open_cache_kb

            self._files_kb = open_cache_kb(self.settings, self.manifest())
        return self._files_kb
    def index_paths(self, kb: KnowledgeBase, paths: Sequence[str | Path], **options: Any) -> SyncReport:
        """Bring ``kb`` up to date with the files at ``paths``: new files added, changed ones
        re-indexed, unchanged ones skipped, unreadable ones recorded; ``sync=True`` also removes the
        KB's files under the given folders that are gone from disk. Options: ``Indexer.index_paths``."""
        return self.indexer.index_paths(kb, paths, **options)

    def load_file(self, path: Path, data: bytes, *, show: bool = True,
                  on_page: Callable[[int, int], None] | None = None) -> list[Document]:
        """One file's Documents, read with the OCR settings (``Indexer.load_file``)."""
        return self.indexer.load_file(path, data, show=show, on_page=on_page)

    def embed_chunks(self, chunks: list[Document], name: str) -> tuple[Any, list[list[str]]]:
        """Chunks -> (their vectors, their BM25 words): what a KB stores per chunk."""
        return self.indexer.embed_chunks(chunks, name)

    def build_index(self, paths: Iterable[str | Path], *, skip_unreadable: bool = False) -> tuple[KBView, IndexReport]:
        """The files at ``paths``, synced into the internal files KB and seen through a filter.

        A file named directly must be readable (unless ``skip_unreadable``); an unreadable file
        found inside a named folder (empty, binary, a scan without text) is skipped and reported.
        Unchanged files cost a stat each, so a large cached folder is ready in milliseconds."""
        paths = list(paths)
        files = expand_paths(paths)  # a missing path fails before anything is created
        return self.indexer.view_of(self.files_kb(), paths, files, skip_unreadable=skip_unreadable)

    def kb(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name``, opened once per pipeline and kept open (a web page asks,
        uploads and lists through one object)."""
        with self._load_lock:
            kb = self._kbs.get(name)
            if kb is None:
                kb = self._kbs[name] = self.open_kb(name, create=create)
        return kb

    def forget_kb(self, name: str) -> None:
        """Close a kept-open KB (it was dropped, or is about to be)."""
        with self._load_lock:
            kb = self._kbs.pop(name, None)
        if kb is not None:
            kb.close()

    def kb_index(self, name: str, documents: Sequence[str] | None = None) -> tuple[KBView, IndexReport]:
        """A knowledge base to search (opened once per pipeline); refused when it has no chunks.
        ``documents`` (``--doc`` patterns, ``ragqa.store.scope``) limits the search to the
        documents they match; a pattern matching none is an InputError."""
        t = time.perf_counter()
        kb = self.kb(name)
        n = kb.count()
        if not n:
            raise InputError(f"knowledge base {name!r} is empty: add files with ragqa index PATH... --kb {name}")
        file_ids = None
        if documents:
            file_ids = kb.scope_ids(documents)
            files, n = len(file_ids), kb.scope_chunks(file_ids)
        else:
            files = len(kb.documents()) if kb.engine == "local" else 0
        report = IndexReport(files=files, cached=files, chunks=n, seconds=time.perf_counter() - t)
        return kb.view(file_ids), report

    def kb_paths(self, name: str, documents: Sequence[str] | None = None) -> list[str]:
        """The files of a knowledge base (what ``summarize --kb`` summarizes); with ``documents``
        (``--doc`` patterns) those they match."""
        kb = self.open_kb(name)
        try:
            # files only: texts added through the LangChain store have no file to summarize
            records = [r for r in kb.files() if r.status == "ok" and r.parser != TEXT_PARSER]
            if documents and records:
                picked = set(select_documents([(r.id, r.path) for r in records], documents, name))
                records = [r for r in records if r.id in picked]
        finally:
            kb.close()
        if not records:
            raise InputError(f"knowledge base {name!r} is empty: add files with ragqa index PATH... --kb {name}")
        return [r.path for r in records]

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

    # -- answering    # -- knowledge-base admin (``ragqa kb``, the web page's list): opened as they are, whatever
    # embedding model this run is set to, so a KB built with another one can still be listed or dropped
    def kb_names(self) -> list[str]:
        """The KBs' names, sorted, without opening any (a page that must start in seconds)."""
        from ragqa.store import kb_names

        return kb_names(self.settings)

    def kb_exists(self, name: str) -> bool:
        from ragqa.store import kb_exists

        return kb_exists(self.settings, name)

    def list_kbs(self) -> list[KBStats]:
        """Every KB of the configured engine, by name, with its counts and size."""
        from ragqa.store import list_kbs

        return list_kbs(self.settings)

    def kb_details(self, name: str) -> tuple[KBStats, Manifest, list[FileRecord]]:
        """A KB's counts, what it was built with, and every file record (``ragqa kb show``)."""
        from ragqa.store import open_kb

        kb = open_kb(self.settings, name)
        try:
            return kb.stats(), kb.manifest, kb.files()
        finally:
            kb.close()

    def remove_from_kb(self, name: str, paths: Sequence[str], *,
                       on_wait: Callable[[str], None] | None = None) -> int:
        """Remove these documents from a KB: files, every file under a folder, or texts added
        through the LangChain store (``text:<id>``); -> how many. The files on disk are not touched."""
        from ragqa.store import open_kb

        texts = {p for p in paths if p.startswith(TEXT_PREFIX)}
        roots = [Path(kb_path(p)) for p in paths if p not in texts]
        self.forget_kb(name)
        kb = open_kb(self.settings, name)
        try:
            with kb.writing(on_wait=on_wait):
                gone = [r.path for r in kb.files()
                        if r.path in texts or any(is_under(Path(r.path), root) for root in roots)]
                return kb.remove_files(gone)
        finally:
            kb.close()

    def drop_kb(self, name: str) -> None:
        """Delete a KB, its indexes and the copies of documents uploaded to it (never files indexed
        from elsewhere)."""
        from ragqa.store import drop_kb

        self.forget_kb(name)
        drop_kb(self.settings, name)
        self.uploads.drop(name)

    def ingest(self, name: str, paths: Sequence[str | Path], **options: Any) -> SyncReport:
        """Index files into KB ``name`` (made if missing) through a handle of its own, as another
        process would: questions read through the kept-open handle and see each file as it commits.
        ``options``: on_file, on_wait, on_page as ``Indexer.index_paths`` takes them."""
        kb = self.open_kb(name, create=True)
        try:
            self._adopt_moved_uploads(kb)  # writers only: a read never changes the KB
            return self.index_paths(kb, paths, progress=False, **options)
        finally:
            kb.close()

    def remove_document(self, name: str, label: str) -> bool:
        """Remove the document a user names by its label (``Uploads.label``) from KB ``name``, and
        its uploaded copy; False when the KB holds no such document."""
        from ragqa.store import open_kb

        kb = open_kb(self.settings, name)
        try:
            self._adopt_moved_uploads(kb)
            with kb.writing():
                paths = [r.path for r in kb.files() if self.uploads.label(name, r.path) == label]
                removed = kb.remove_files(paths)
        finally:
            kb.close()
        for path in paths:
            self.uploads.discard(name, path)
        return bool(removed)

    def summarize_file(self, path: str | Path, *, on_step: Callable[[str], None] | None = None,
                       data: bytes | None = None) -> dict[str, Any]:
        """Summarize one document; -> a record {source, summary, chain, chunks, seconds, status, key, lang}.
        Its model calls hold one slot of the ``gate`` (the web page summarizes beside questions)."""
        with self.gate.enter() as ticket:
            ticket.wait()
            return self.summarizer.summarize_file(path, on_step=on_step, data=data)

    def summarize_batch(
        self, paths: Sequence[str | Path], out: str | Path, *, force: bool = False, **options: Any,
    ) -> SummaryReport:
        """Summarize many documents into ``out`` (.jsonl or a folder), resuming where a run stopped
        (options: ``Summarizer.summarize_batch``: on_file, progress, parallel, missing_ok)."""
        return self.summarizer.summarize_batch(paths, out, force=force, **options)

    def language_model(self) -> "LanguageModel":
        """The LLM, loaded once: the backend, it as a LangChain LLM, and its prompt builder."""
        with self._load_lock:
            if self._language_model is None:
                self._language_model = LanguageModel(self)
        return self._language_model

    def prompt_builder(self, backend: Any, settings: Settings | None = None) -> Any:
        from ragqa.chains import PromptBuilder

        s = settings or self.settings
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
        left out with a note (the web page, where one bad upload must not block the rest). The
        question is admitted by the pipeline's ``gate`` before anything (``QueueFullError`` when its
        queue is full); indexing and retrieval then go on at once, the model part waits for a slot.
        """
        # admitted first, as the API admits a question: retrieval and embedding count against the
        # same gate as generation, so no front end's questions can crowd out the others'
        with self.gate.enter() as ticket:
            prepared = self.prepare(question, paths=paths, kb=kb, history=history, skip_unreadable=skip_unreadable,
                                    **overrides)
            if dry_run:
                yield self._dry_run(prepared)
                return
            if not prepared.abstained:  # an abstention calls no model, so it needs no generation slot
                ticket.wait()
            yield from self.generate(prepared)

    @functools.cached_property
    def gate(self) -> "Gate":
        """Admission to the model, shared by every front end of this process: ``max_concurrency``
        generations at once (default: 1 for an in-process model, 8 for a server), ``max_queue`` waiting."""
        from ragqa.gate import Gate

        slots = self.settings.max_concurrency or (8 if self.backend_name == "openai" else 1)
        return Gate(slots, self.settings.max_queue)

    def prepare(
        self, question: str, *, paths: Sequence[str | Path] = (), kb: str | None = None,
        history: Sequence[Any] = (), skip_unreadable: bool = False, documents: Sequence[str] | None = None,
        **overrides: Any,
    ) -> "Prepared":
        """Everything before the model: the question checked, the documents indexed (``paths``) or
        opened (``kb``; ``documents``: only those these ``--doc`` patterns match), the chunks
        retrieved. Needs no generation slot."""
        from ragqa.cancel import check_cancelled
        from ragqa.chains import recent_turns, retrieval_query

        question = (question or "").strip()
        if not question:
            raise InputError("the question is empty")
        check_question_length(question, self.settings)
        # what a conversation may cost is bounded before any of it is embedded or put in a prompt
        history = recent_turns(history, 4 * self.settings.max_question_chars)
        if kb is not None and paths:
            raise InputError("give either PATH... or --kb NAME, not both (add files to a KB with: ragqa index PATH --kb NAME)")
        if not paths and kb is None:
            raise InputError("no documents given")
        if documents and kb is None:
            raise InputError("--doc picks documents of a knowledge base: use it with --kb NAME "
                             "(with PATH... name just the files you mean)")
        settings = self._settings_for(overrides)
        self.check_models()
        self.timings = {}
        if kb is not None:
            index, report = self.kb_index(kb, documents)
        else:
            index, report = self.build_index(paths, skip_unreadable=skip_unreadable)
        timings: dict[str, Any] = {
            "index_s": round(report.seconds, 3),
            "files": report.files,
            "files_cached": report.cached,
            "chunks": report.chunks,
        }
        retriever = self.retriever(index, settings)
        check_cancelled()  # a client that left stops here, before the question is embedded
        t = time.perf_counter()
        docs = retriever.invoke(retrieval_query(question, history))
        timings["retrieve_s"] = round(time.perf_counter() - t, 3)
        check_cancelled()
        notes = [f"skipped {reason}" for reason in report.skipped]
        abstain = self._abstention(index, question, settings, docs, notes, timings) if docs or report.chunks else None
        if self.backend_name == "openai" and not (abstain and not abstain["answerable"]):
            self._count_ahead(question, history, settings, docs)
        return Prepared(question, list(history), settings, docs, timings, notes, abstain)

    def _abstention(self, index: Any, question: str, settings: Settings, docs: list[Document], notes: list[str],
                    timings: dict[str, Any]) -> dict[str, Any] | None:
        """Whether the documents can answer ``question`` (``ragqa.abstain``): the decision with its
        signals, or None (``abstain = off``, the refine chain, or too few chunks to calibrate: noted)."""
        from ragqa.abstain import MIN_CHUNKS, search_signals

        if settings.abstain == "off" or settings.chain != "stuff":
            return None
        t = time.perf_counter()
        cal = self.calibration(index)
        if cal is None:
            notes.append(f"abstain: too few chunks to calibrate on ({MIN_CHUNKS} needed); answering as with "
                         "--abstain off")
            return None
        decision = cal.decide(search_signals(index, self.embeddings, question), settings.abstain_strictness)
        timings["abstain_s"] = round(time.perf_counter() - t, 3)
        if not decision["answerable"] and decision["coverage"] == 0:
            from ragqa.prompts import detect_lang

            asked = detect_lang(question)
            found = {detect_lang(d.page_content) for d in docs[:3]}  # the passages it did find
            if found and asked not in found:
                names = {"zh": "Chinese", "en": "English"}
                notes.append(f"abstain: the question is in {names[asked]} and the documents look "
                             f"{'/'.join(names[x] for x in sorted(found))}: no word of it is in them; ask in "
                             "their language")
        return decision

    def calibration(self, index: Any) -> Any:
        """The abstention calibration of a KB view (the whole KB, or the files ``ask PATH...`` or
        ``--doc`` picked): the stored one, or made now and stored when missing or stale; None
        when the view is too small to calibrate."""
        from ragqa.abstain import Calibration, calibrate, collection_key

        kb, ids = index.kb, index.file_ids
        key = collection_key(ids)
        docs = kb.documents()
        if ids is not None:
            wanted = set(ids)
            docs = [d for d in docs if d[0] in wanted]
        chunks, embedding = sum(n for _, _, n in docs), self.embedding_spec.cache_id
        with self._load_lock:
            cal = self._calibrations.get((kb.name, key)) or Calibration.from_json(kb.read_note(key))
            if cal is not None and not cal.stale(chunks, len(docs), embedding):
                self._calibrations[(kb.name, key)] = cal
                return cal
            if (kb.name, key, chunks) in self._too_small:
                return None
            cal = calibrate(index, self.embeddings, chunk_size=self.settings.chunk_size, embedding=embedding,
                            records=len(docs), document_of=getattr(index, "document_of", None))
            if cal is None:
                self._too_small.add((kb.name, key, chunks))
                return None
            self._calibrations[(kb.name, key)] = cal
            try:
                kb.write_note(key, cal.to_json())
            except RagqaError as exc:  # a read-only KB still answers, recalibrating next time
                log.info("abstain: calibration not stored: %s", exc)
            return cal

    def _count_ahead(self, question: str, history: Sequence[Any], settings: Settings, docs: list[Document]) -> None:
        """Fit the first prompt now, before the question waits for a generation slot: on a server
        backend each token count is a /tokenize round trip, and the server answers those on the
        HTTP threads its streams hold, so counted inside the slot they wait behind other answers
        while the slot stays idle. The counts are cached; ``generate`` finds them there."""
        from ragqa.chains import first_prompt
        from ragqa.errors import RagqaError

        try:
            pb, _ = self.prompt_builder(self.backend(), settings).with_history(history)
            first_prompt(question, docs, pb, settings.chain, settings.context)
        except RagqaError:
            pass  # the same error comes back in generate, where it is reported

    def _dry_run(self, prepared: "Prepared") -> Answer:
        """The exact first prompt the model would get, with the tokenizer only (no weights)."""
        from ragqa.chains import first_prompt

        backend = self.backend(vocab_only=True)
        pb, history_notes = self.prompt_builder(backend, prepared.settings).with_history(prepared.history)
        notes = prepared.notes + list(getattr(backend, "notes", [])) + history_notes
        prompt, used, fit_notes = first_prompt(prepared.question, prepared.docs, pb, prepared.settings.chain,
                                               prepared.settings.context)
        timings = {**prepared.timings, **self.timings}
        if prepared.settings.chain == "stuff":
            from ragqa.words import estimate_tokens

            timings["context_tokens"] = estimate_tokens(self._context_text(prepared, used))
            timings["prompt_tokens"] = backend.count_tokens(prompt)
        if prepared.abstained:
            notes.append("abstain: the documents do not answer this (README \"Abstention\"): the model would not "
                         "be asked; this is the prompt it would get with --abstain off")
        return Answer("", [Source.from_document(d) for d in used], timings, notes + fit_notes, [prompt],
                      answerable=not prepared.abstained, abstain=prepared.abstain)

    def _citation_embeddings(self) -> Any:
        """The embedding model as citations use it: passage vectors remembered across answers."""
        from ragqa.citations import RememberedPassages

        if self._embeddings is None:
            return None
        if self._remembered is None or self._remembered.embeddings is not self._embeddings:
            self._remembered = RememberedPassages(self._embeddings)
        return self._remembered

    def generate(self, prepared: "Prepared") -> Iterator[str | Answer]:
        """The model part of a question: the answer's pieces as they stream, then the Answer. The
        caller holds a generation slot (``gate``); closing this generator stops the model."""
        import contextlib

        from ragqa.chains import make_qa_chain

        if prepared.abstained:
            yield from self._abstain_answer(prepared)
            return
        lm = self.language_model()
        llm, pb = lm.for_settings(prepared.settings)
        chain = make_qa_chain(llm, _NoRetriever(), pb, prepared.settings.chain, context=prepared.settings.context,
                              citations=prepared.settings.citations == "on", embeddings=self._citation_embeddings())
        notes = prepared.notes + list(getattr(lm.backend, "notes", []))
        timings = dict(prepared.timings)
        t = time.perf_counter()
        result: dict[str, Any] = {}
        inputs = {"question": prepared.question, "history": prepared.history, "documents": prepared.docs}
        try:
            with contextlib.closing(iter(chain.stream(inputs))) as parts:
                for part in parts:
                    if part.get("answer"):
                        yield part["answer"]
                    result = part if not result else result + part
        finally:
            llm.close()  # a consumer that stopped reading stops the model now
        timings["answer_s"] = round(time.perf_counter() - t, 3)
        timings.update(self.timings)
        timings.update(llm.stats.as_dict())
        sources = result.get("source_documents", [])
        prompts = result.get("prompts", [])
        if prompts and prepared.settings.chain == "stuff":  # what the model read of the passages
            from ragqa.words import estimate_tokens

            timings["context_tokens"] = estimate_tokens(self._context_text(prepared, sources))
        yield Answer(
            answer=result.get("answer", "").strip(),
            sources=[Source.from_document(d) for d in sources],
            timings=timings,
            notes=notes + result.get("notes", []),
            prompts=prompts,
            citations=result.get("citations"),
            unsupported=result.get("unsupported"),
        )

    @staticmethod
    def _context_text(prepared: "Prepared", used: list[Document]) -> str:
        from ragqa.chains import format_context
        from ragqa.context import compact_chunks

        docs = compact_chunks(prepared.question, used) if prepared.settings.context == "sentences" else used
        return format_context(docs)

    def _abstain_answer(self, prepared: "Prepared") -> Iterator[str | Answer]:
        """The fixed "the documents do not say" in the question's language, and the best sources found."""
        from ragqa.abstain import message

        text = message(prepared.question)
        a = prepared.abstain or {}
        note = (f"abstain: no passage matches the question well enough (score {a.get('score')} below "
                f"{a.get('threshold')}); the model was not asked (--abstain off answers anyway)")
        yield text
        yield Answer(text, [Source.from_document(d) for d in prepared.docs], dict(prepared.timings),
                     prepared.notes + [note], [], answerable=False, abstain=prepared.abstain)

    # what one question may set for itself (the web page's options, the API's request fields)
    PER_QUESTION = ("chain", "k", "retriever", "fusion", "temperature", "top_p", "seed", "max_new_tokens",
                    "system_prompt", "abstain", "abstain_strictness", "citations")

    def _settings_for(self, overrides: dict[str, Any]) -> Settings:
        """The settings with per-question overrides (``PER_QUESTION``), validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - set(self.PER_QUESTION)
        if unknown:
            raise TypeError(f"not a per-question setting: {', '.join(sorted(unknown))}")
        if not given:
            return self.settings
        from pydantic import ValidationError

        from ragqa.config import settings_error

        try:
            return Settings.model_validate({**self.settings.model_dump(), **given})
        except ValidationError as exc:
            raise InputError(settings_error(exc)) from None


@dataclass
class Prepared:
    """A question ready for the model: its settings, the earlier turns and the retrieved chunks."""

    question: str
    history: list[Any]
    settings: Settings
    docs: list[Document]
    timings: dict[str, Any]
    notes: list[str]
    abstain: dict[str, Any] | None = None  # ragqa.abstain's decision; None: not decided (abstain off)

    @property
    def abstained(self) -> bool:
        return self.abstain is not None and not self.abstain["answerable"]


class _NoRetriever(BaseRetriever):
    """The QA chain's retriever when the pipeline hands it the chunks (``documents``): never asked."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        raise AssertionError("the pipeline retrieves before the chain runs")


class LanguageModel:
    """What every chain needs from the LLM: the backend, a LangChain LLM over it, the prompt builder."""

    def __init__(self, pipeline: "Pipeline") -> None:
        self.pipeline = pipeline
        self.backend = pipeline.backend()  # load_backend with pipeline.backend_name
        self.pb = pipeline.prompt_builder(self.backend)
        self.llm = self._llm(pipeline.settings)
        self._builders: dict[tuple[int, str | None], Any] = {}

    def _llm(self, settings: Settings) -> Any:
        from ragqa.llms import GenerationParams, RagqaLLM

        return RagqaLLM(backend=self.backend, params=asdict(GenerationParams.from_settings(settings)),
                        stop_default=list(self.pb.chat_format.stop))

    def for_settings(self, settings: Settings) -> tuple[Any, Any]:
        """A LangChain LLM of this question's own (its generation settings, its own stats) and the
        prompt builder for its budget and system prompt."""
        key = (settings.max_new_tokens, settings.system_prompt)
        if key == (self.pipeline.settings.max_new_tokens, self.pipeline.settings.system_prompt):
            return self._llm(settings), self.pb
        if key not in self._builders:
            import dataclasses

            self._builders[key] = dataclasses.replace(
                self.pb, budget=self.backend.context_size() - settings.max_new_tokens,
                system_prompt=settings.system_prompt if settings.system_prompt is not None else self.pb.system_prompt)
        return self._llm(settings), self._builders[key]
