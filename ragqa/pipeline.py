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
from ragqa.store import ChunkIndex, FileIndex, IndexCache, content_hash, index_key

log = logging.getLogger(__name__)

EMBED_BATCH = 32  # chunks per embedding call: progress updates often, batches stay efficient


@dataclass
class Source:
    """One retrieved chunk: where it is and how well it matched."""

    source: str
    text: str
    start: int
    score: float
    page: int | None = None

    @classmethod
    def from_document(cls, doc: Document) -> "Source":
        m = doc.metadata
        return cls(m.get("source", ""), doc.page_content, int(m.get("start", 0)), float(m.get("score", 0.0)), m.get("page"))

    def location(self) -> str:
        page = f" p.{self.page}" if self.page is not None else ""
        return f"{self.source}{page} @{self.start}"


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
            if s["page"] is None:
                del s["page"]
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
        self.cache = IndexCache(settings.cache_dir)
        self.splitter = ChineseTextSplitter(settings.chunk_size, settings.chunk_overlap)
        self.embedding_spec = resolve_embedding(settings.embedding_model)
        self._embeddings: Any = None
        self._reranker: Any = None
        self._language_model: Any = None
        self._backends: dict[bool, Any] = {}
        self._backend_name: str | None = None
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

    def index_file(self, path: Path) -> tuple[FileIndex, bool]:
        """One file's index from the cache, or built and cached; -> (index, was_cached)."""
        data = read_bytes(path, self.settings.max_file_mb)
        key = index_key(content_hash(data), self.embedding_spec.cache_id, self.splitter_settings())
        cached = self.cache.load(key, str(path))
        if cached is not None:
            return cached, True
        chunks = self.splitter.split_documents(load_file(path, data))
        if not chunks:
            raise InputError(f"{path}: no text to index")
        index = self.index_chunks(chunks, path.name)
        self.cache.save(key, index, {"source": str(path), "embedding": self.embedding_spec.cache_id})
        log.info("indexed %s: %d chunks", path, len(chunks))
        return index, False

    def index_chunks(self, chunks: list[Document], name: str) -> FileIndex:
        """Chunks -> their vectors and BM25 words (what the cache stores for a file)."""
        import numpy as np

        from ragqa.retrieval import tokenize

        texts = [c.page_content for c in chunks]
        vectors = np.asarray(self._embed_with_progress(texts, name), dtype="float32")
        return FileIndex(chunks, vectors, [tokenize(t) for t in texts])

    def _embed_with_progress(self, texts: list[str], name: str) -> list[list[float]]:
        """Embed in batches under one progress bar (a long file takes minutes on a CPU)."""
        from tqdm import tqdm

        vectors: list[list[float]] = []
        with tqdm(total=len(texts), desc=f"embedding {name[:30]}", unit="chunk",
                  disable=len(texts) <= EMBED_BATCH or not _stderr_is_tty()) as bar:
            for i in range(0, len(texts), EMBED_BATCH):
                batch = texts[i:i + EMBED_BATCH]
                vectors.extend(self.embeddings.embed_documents(batch))
                bar.update(len(batch))
        return vectors

    def build_index(self, paths: Iterable[str | Path], *, skip_unreadable: bool = False) -> tuple[ChunkIndex, IndexReport]:
        """Index every file. A file named directly must be readable (unless ``skip_unreadable``);
        an unreadable file found inside a named folder (empty, binary, a scan without text) is
        skipped and reported."""
        t = time.perf_counter()
        paths = list(paths)
        named = set() if skip_unreadable else {
            Path(p).expanduser().resolve() for p in paths if not Path(p).expanduser().is_dir()}
        files = expand_paths(paths)
        report = IndexReport(files=len(files))
        indexes = []
        from tqdm import tqdm

        for path in tqdm(files, desc="indexing", unit="file", disable=len(files) < 2 or not _stderr_is_tty()):
            try:
                index, was_cached = self.index_file(path)
            except InputError as exc:
                if path.resolve() in named:
                    raise
                report.skipped.append(str(exc))
                log.info("skipping %s", exc)
                continue
            report.cached += was_cached
            report.chunks += len(index.chunks)
            indexes.append(index)
        report.seconds = time.perf_counter() - t
        if not indexes:
            raise NoReadableDocumentsError("no readable documents: " + "; ".join(report.skipped))
        return ChunkIndex(indexes), report

    def retriever(self, index: ChunkIndex, settings: Settings | None = None) -> Any:
        from ragqa.retrieval import make_retriever

        s = settings or self.settings
        embeddings = None if s.retriever == "bm25" else self.embeddings  # BM25 needs no model
        return make_retriever(s.retriever, index, embeddings, s.k, reranker=self.reranker,
                              candidates=s.rerank_candidates)

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
        text = "\n\n".join(d.page_content for d in load_file(path, data))
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
        **overrides: Any,
    ) -> Answer:
        """Answer ``question`` from the files; ``on_token`` sees the answer as it streams.

        With ``dry_run`` the model's weights are not loaded: the answer is empty and
        ``prompts[0]`` is the exact first prompt the model would get. ``history`` holds earlier
        turns of a conversation; ``overrides`` (chain, k, retriever) apply to this question only.
        """
        answer: Answer | None = None
        for item in self.ask_stream(paths, question, dry_run=dry_run, history=history, **overrides):
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
        **overrides: Any,
    ) -> Iterator[str | Answer]:
        """Like ``ask``, as a generator: the answer's pieces (str) as they stream, then the Answer.

        ``skip_unreadable`` treats named files like files found in a folder: an unreadable one is
        left out with a note (the web page, where one bad upload must not block the rest).
        """
        question = (question or "").strip()
        if not question:
            raise InputError("the question is empty")
        if not paths:
            raise InputError("no documents given")
        settings = self._settings_for(overrides)
        self.check_models()
        self.timings = {}
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

    PER_QUESTION = ("chain", "k", "retriever")

    def _settings_for(self, overrides: dict[str, Any]) -> Settings:
        """The settings with per-question overrides (chain, k, retriever), validated."""
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


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
