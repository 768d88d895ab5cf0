"""Summaries of whole documents: one file, or a batch into an output that resumes where it stopped.

``Summarizer`` is the summarizing half of the pipeline: it reads a document, cuts it into pieces
as large as the model's prompt can hold, and runs the summary chain; ``summarize_batch`` records
each result the moment it is done (``ragqa.outputs``), keyed by the document's bytes and the
generation settings, so a rerun skips what is already summarized.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import InputError
from ragqa.loaders import expand_paths, read_bytes
from ragqa.paths import is_under, kb_path
from ragqa.pipeline.results import SummaryReport
from ragqa.progress import file_bar
from ragqa.splitting import ChineseTextSplitter
from ragqa.store import content_hash

if TYPE_CHECKING:
    from ragqa.config import Settings

SUMMARY_SETTINGS = ("model", "chat_format", "system_prompt", "summary_chain", "lang", "n_ctx", "max_new_tokens",
                    "temperature", "top_k", "top_p", "repeat_penalty", "seed", "rope_freq_base", "rope_freq_scale")
# part of the key only when changed from their defaults, so summaries made before they existed still match
SUMMARY_SETTINGS_IF_SET = ("backend", "base_url", "api_model", "torch_dtype", "load_in_4bit", "load_in_8bit", "rope_scaling")


class Summarizer:
    """Summaries with the pipeline's model (``language_model()``: loaded on first use) and reader."""

    def __init__(self, settings: "Settings", language_model: Callable[[], Any],
                 load_file: Callable[[Path, bytes], list[Document]], check_models: Callable[[], None]) -> None:
        self.settings = settings
        self._language_model = language_model
        self._load_file = load_file
        self._check_models = check_models

    def summarize_file(self, path: str | Path, *, on_step: Callable[[str], None] | None = None,
                       data: bytes | None = None) -> dict[str, Any]:
        """Summarize one document; -> a record {source, summary, chain, chunks, seconds, status, key, lang}."""
        from ragqa.chains import summarize_chunks
        from ragqa.prompts import detect_lang

        t = time.perf_counter()
        path = Path(path)
        if data is None:
            data = read_bytes(path, self.settings.max_file_mb)
        text = "\n\n".join(d.page_content for d in self._load_file(path, data))
        sm = self._language_model()
        lang = detect_lang(text[:3000]) if self.settings.lang == "auto" else self.settings.lang
        chunks = self.summary_chunks(text, sm, lang)
        result = summarize_chunks(sm.llm, chunks, sm.pb, self.settings.summary_chain, lang, on_step)
        return {
            "source": str(path), "summary": result.summary, "chain": result.chain, "chunks": len(chunks),
            "seconds": round(time.perf_counter() - t, 2), "status": "ok", "lang": lang,
            "key": _summary_key(content_hash(data), self.settings), **({"notes": result.notes} if result.notes else {}),
        }

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
        on_file: Callable[[dict[str, Any]], None] | None = None, progress: bool = True, parallel: int = 1,
        missing_ok: bool = False,
    ) -> SummaryReport:
        """Summarize many documents into ``out`` (.jsonl or a folder), resuming where a run stopped.

        Each result is recorded the moment it is done. A document that fails is recorded with its
        error and the batch goes on. The model is loaded once, before the first document.
        ``parallel`` documents are in flight at once (worth it on a server backend, which batches
        them); records are written one at a time, in the order they finish. ``missing_ok``: a file
        gone from disk (a KB's) is a failed record, not the end of the batch. Files of the output
        itself (``out`` inside a summarized folder) are never summarized.
        """
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        from ragqa.outputs import SummaryStore

        if parallel < 1:
            raise InputError(f"--parallel must be at least 1 (got {parallel})")
        t0 = time.perf_counter()
        store = SummaryStore.open(out)
        files = [f for f in expand_paths(expand_globs(paths), missing_ok=missing_ok) if not _is_output(f, Path(out))]
        self._check_models()
        report = SummaryReport()
        bar = file_bar(files, "summarizing", enabled=progress)

        def finish(record: dict[str, Any]) -> None:
            if record["status"] == "skipped":
                report.skipped += 1
            else:
                report.summarized += record["status"] == "ok"
                report.failed += record["status"] == "failed"
                store.put(record)
            if on_file:
                on_file(record)

        if parallel == 1:
            for path in bar:
                bar.set_postfix_str(path.name[:30])
                step = (lambda s, path=path: bar.set_postfix_str(f"{path.name[:20]} {s}")) if progress else None
                finish(self._one(path, store, force, step))
        else:
            with ThreadPoolExecutor(parallel, thread_name_prefix="summarize") as pool:
                pending: set[Future[dict[str, Any]]] = set()
                todo = iter(bar)
                try:
                    while True:
                        for path in todo:  # keep `parallel` documents in flight
                            pending.add(pool.submit(self._one, path, store, force, None))
                            if len(pending) >= parallel:
                                break
                        if not pending:
                            break
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            finish(future.result())  # a model or output problem stops the batch here
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
        report.seconds = time.perf_counter() - t0
        return report

    def _one(self, path: Path, store: Any, force: bool, step: Callable[[str], None] | None) -> dict[str, Any]:
        """One document's record: skipped (already summarized), ok or failed (an unreadable file).
        A RagqaError that is not about the document (the model, the output) is raised."""
        source = str(path)
        try:
            data = read_bytes(path, self.settings.max_file_mb)
            key = _summary_key(content_hash(data), self.settings)
            if not force and store.done(source, key):
                return {"source": source, "status": "skipped"}
            return self.summarize_file(path, on_step=step, data=data)
        except InputError as exc:
            return {"source": source, "summary": "", "chain": None, "chunks": 0, "seconds": 0.0,
                    "status": "failed", "error": str(exc)}

def _is_output(path: Path, out: Path) -> bool:
    """A file of the batch's own output (``--out`` inside the folder being summarized): never an input."""
    target, name = Path(kb_path(out)), Path(kb_path(path))
    return name == target or (out.suffix.lower() != ".jsonl" and is_under(name, target))


def _summary_key(file_hash: str, settings: "Settings") -> str:
    """Same bytes + same generation settings -> same summary; anything else is redone.

    A chat format file counts by its content, so editing it redoes the summaries too.
    """
    import hashlib
    import json

    from ragqa.chat_formats import format_file_digest
    from ragqa.config import Settings

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
