"""The web page: a thin Gradio shell over ``Pipeline`` and the knowledge bases (KBs).

The page works on one KB at a time (picked or created at the top). Uploads are copied into
``<data_dir>/uploads/<kb>/`` (Gradio's temp files vanish; these stay; ``pipeline.uploads``) and
indexed with ``Pipeline.ingest`` (a writer handle of its own), so the page, the HTTP API and
``ragqa index``/``ragqa ask --kb`` share the same KBs. Questions go through
``Pipeline.ask_stream(kb=...)``, summaries through ``Pipeline.summarize_file``. The models load on
the first request, not at start; building the page only lists the KBs' names.

Questions and summaries run as many at once as the pipeline's gate has slots (one for an
in-process llama.cpp or transformers model, which is not thread-safe; more for a model server),
in the same line as the API's; uploads and deletes have a queue of their own. Another process
(the CLI) may write the same KB meanwhile: the KB's write lock orders the writers, and searches
re-read what changed, so the page sees the CLI's files without a restart.

``serve`` puts the page (``/``) and the HTTP API (``/v1``, ``ragqa.api``) on one FastAPI app under uvicorn.
"""

from __future__ import annotations

import html
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.api.access import OPEN, Door, Principal
from ragqa.config import Settings
from ragqa.errors import ConfigError, InputError, RagqaError
from ragqa.paths import kb_path, write_atomic
from ragqa.pipeline import Answer, Pipeline
from ragqa.store import DEFAULT_KB, check_kb_name

if TYPE_CHECKING:
    from ragqa.api.guard import UploadRegistry
    from ragqa.store import FileRecord, KnowledgeBase

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
SNIPPET_CHARS = 400
MODEL_QUEUE = "model"  # questions and summaries: as many at once as the pipeline's gate has slots
KB_QUEUE = "kb"  # uploads and deletes: one at a time (each KB has one writer anyway); never behind the model
SUMMARIES = "web-summaries"  # <cache_dir>/web-summaries: the Summarize tab's downloads

# UI text in both languages; Gradio picks the browser's language (or the one set in the page's
# Settings panel), English otherwise.
UI_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "## ragqa: ask your documents",
        "intro": "Pick or create a knowledge base, upload documents into it, then ask questions about "
                 "them or summarize them. Everything runs and is kept on this machine.",
        "kb": "Knowledge base",
        "kb_new": "New knowledge base",
        "kb_new_ph": "name, e.g. contracts-2024",
        "kb_create": "Create",
        "files": "Upload documents (txt, md, pdf, Word, PowerPoint, Excel, csv, epub, html, e-mail, json; scans and images are OCR'd)",
        "status": "Indexing",
        "docs": "Documents in this knowledge base",
        "doc_pick": "Document",
        "delete": "Delete from the knowledge base",
        "tab_ask": "Ask",
        "tab_summarize": "Summarize",
        "chat": "Conversation",
        "question": "Question",
        "question_ph": "Ask about the documents of this knowledge base, then press Enter",
        "scope": "Ask only these documents (none picked = all)",
        "send": "Ask",
        "clear": "Clear chat",
        "sources": "Sources",
        "raw_sources": "Sources as data",
        "options": "Options",
        "chain": "Chain",
        "k": "Chunks retrieved (k)",
        "retriever": "Retriever",
        "fusion": "Hybrid fusion (zscore: default; rrf; minmax; parameters after colons)",
        "pick": "Documents to summarize (none picked = all)",
        "summarize": "Summarize",
        "summaries": "Summaries",
        "download": "Download summaries (Markdown)",
    },
    "zh": {
        "title": "## ragqa：向你的文档提问",
        "intro": "选择或新建一个知识库，把文档上传进去，然后提问或生成摘要。所有计算和数据都在本机。",
        "kb": "知识库",
        "kb_new": "新建知识库",
        "kb_new_ph": "名称，例如 合同-2024",
        "kb_create": "新建",
        "files": "上传文档（txt、md、pdf、Word、PPT、Excel、csv、epub、html、邮件、json；扫描件和图片自动 OCR）",
        "status": "索引",
        "docs": "本知识库中的文档",
        "doc_pick": "文档",
        "delete": "从知识库中删除",
        "tab_ask": "问答",
        "tab_summarize": "摘要",
        "chat": "对话",
        "question": "问题",
        "question_ph": "就本知识库中的文档提问，按回车发送",
        "scope": "只就这些文档提问（不选 = 全部）",
        "send": "提问",
        "clear": "清空对话",
        "sources": "出处",
        "raw_sources": "出处（数据）",
        "options": "选项",
        "chain": "链",
        "k": "检索片段数 (k)",
        "retriever": "检索方式",
        "fusion": "混合检索的融合方式（zscore 为默认；rrf；minmax；参数写在冒号后）",
        "pick": "要摘要的文档（不选 = 全部）",
        "summarize": "生成摘要",
        "summaries": "摘要",
        "download": "下载摘要（Markdown）",
    },
}

# Messages and texts made in Python (toasts, status lines, the table's headers) carry both
# languages: the browser's language is not known there.
MSG = {
    "no_files": "Upload a document to this knowledge base first. 请先向这个知识库上传文档。",
    "no_question": "Type a question. 请输入问题。",
    "no_doc": "Pick a document first. 请先选择文档。",
    "scope_gone": "No longer in this knowledge base: {names}. Pick the documents again. 这些文档已不在知识库中，请重新选择。",
}
DOC_HEADERS = ["document 文档", "chunks 片段", "status 状态"]


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # private by default: no phoning home
    try:
        import gradio as gr
    except ImportError:
        from ragqa.errors import MissingDependencyError

        raise MissingDependencyError("gradio") from None
    return gr


def _paths(files: Sequence[Any] | None) -> list[str]:
    """Gradio gives uploaded files as paths (str) or objects with a ``.path``/``["path"]``."""
    out = []
    for f in files or []:
        if isinstance(f, dict):
            f = f.get("path") or f.get("name")
        elif not isinstance(f, str):
            f = getattr(f, "path", None) or getattr(f, "name", None) or f
        out.append(str(f))
    return out


def _name(path: str) -> str:
    return Path(path).name


@dataclass
class DocRow:
    """One document of a KB as the page shows it."""

    label: str  # the file name for uploads; the full path for files indexed from elsewhere (CLI)
    path: str
    chunks: int
    status: str
    error: str = ""

    def row(self) -> list[Any]:
        return [self.label, self.chunks, "✓" if self.status == "ok" else f"✗ {self.error}"]


@dataclass
class KBPage:
    """What the page shows about one KB: a header line and its documents."""

    name: str
    info: str
    docs: list[DocRow] = field(default_factory=list)

    def rows(self) -> list[list[Any]]:
        return [d.row() for d in self.docs]

    def labels(self, *, ok_only: bool = False) -> list[str]:
        return [d.label for d in self.docs if d.status == "ok" or not ok_only]


# -- handlers: plain functions over a Pipeline (unit-tested without a browser) -------------------


class Handlers:
    """What each page event does. ``progress`` arguments are Gradio progress trackers."""

    def __init__(self, pipeline: Pipeline, uploads: "UploadRegistry | None" = None) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.uploads = uploads  # the files each principal uploaded through the page (None: not checked)

    # -- knowledge bases
    def kb_names(self, who: Principal = OPEN) -> list[str]:
        """The names of the KBs ``who`` may read, with the default one even before it exists (the
        first upload makes it)."""
        return sorted(n for n in {DEFAULT_KB, *self.pipeline.kb_names()} if who.can_read(n))

    def create_kb(self, name: str | None, who: Principal = OPEN) -> str:
        """Make the KB ``name`` (nothing happens if it exists); -> its checked name."""
        name = _checked(name)
        _require(who.can_write(name), f"you may not create or change knowledge base {name!r}. "
                                      f"你无权新建或修改知识库 {name!r}。")
        try:
            self._kb(name, create=True)
        except RagqaError as exc:
            raise _page_error(exc) from None
        return name

    def _kb(self, name: str, *, create: bool = False) -> "KnowledgeBase | None":
        """The KB as the pipeline keeps it open for questions (``Pipeline.kb_index`` caches one per
        name), so the page's uploads, listings and questions share one object; None if absent."""
        if not self.pipeline.kb_exists(name):
            self.pipeline.forget_kb(name)  # dropped meanwhile (ragqa kb drop)
            if not create:
                return None
        return self.pipeline.kb(name, create=create)

    def uploads_dir(self, name: str) -> Path:
        return self.pipeline.uploads.folder(name)

    def page(self, name: str | None, who: Principal = OPEN) -> KBPage:
        """The header line and the documents of KB ``name`` (a KB that cannot be opened, e.g. one
        built with another embedding model, is shown with the reason instead of failing). A KB
        ``who`` may not read is shown as nothing, whether it exists or not."""
        name = _checked(name)
        if not who.can_read(name):
            return KBPage(name, f"**{name}** · ✗ {_no_kb(name)}")
        try:
            kb = self._kb(name)
            records = kb.files() if kb is not None else []
        except RagqaError as exc:
            return KBPage(name, f"**{name}** · ✗ {html.escape(str(exc))}")
        if kb is None:
            return KBPage(name, f"**{name}** · new, empty: upload documents to fill it. "
                                "新知识库：上传文档即可。")
        docs = [self._row(r, self.pipeline.uploads.label(name, r.path)) for r in records]
        ok = [d for d in docs if d.status == "ok"]
        n, chunks = len(ok), sum(d.chunks for d in ok)
        info = (f"**{name}** · {n} document{'s' if n != 1 else ''} 文档 · "
                f"{chunks} chunk{'s' if chunks != 1 else ''} 片段")
        if len(docs) > n:
            info += f" · {len(docs) - n} unreadable 无法读取"
        return KBPage(name, info, docs)

    @staticmethod
    def _row(record: "FileRecord", label: str) -> DocRow:
        error = _strip_path(record.error, record.path) if record.error else ""
        return DocRow(label, record.path, record.chunks, record.status, error)

    # -- documents
    def index(self, kb_name: str | None, files: Sequence[Any] | None, progress: Any = None,
              who: Principal = OPEN) -> str:
        """Copy the uploads into the KB's uploads folder and index them; -> one status line each.

        An identical file already in the KB is ``(unchanged)``; a file with the name of one in the
        KB but other bytes replaces it (``updated``); an unreadable one is reported and the rest go on.
        Only files ``who`` uploaded through the page are taken: never a path a client names.
        """
        from ragqa.loaders import check_supported

        name = _checked(kb_name)
        uploads = _paths(files)
        if not uploads:
            return ""
        _require(who.can_write(name), f"you may not change knowledge base {name!r}. 你无权修改知识库 {name!r}。")
        if self.uploads is not None and not all(self.uploads.owns(who.name, u) for u in uploads):
            raise _page_error(InputError("only files uploaded through this page can be indexed. "
                                         "只能索引通过本页面上传的文件。"))
        lines: dict[str, str] = {}  # upload name -> its status line, in upload order
        wanted: dict[str, Path] = {}  # upload name -> the upload
        for upload in uploads:
            label = self.pipeline.uploads.safe_name(_name(upload))
            try:
                check_supported(Path(label))
            except InputError as exc:
                lines[label] = f"✗ **{label}**: {_strip_path(str(exc), label)}"
                continue
            lines[label], wanted[label] = "", Path(upload)
        if not wanted:
            return "\n\n".join(lines.values())
        try:
            kb = self._kb(name, create=True)  # before copying: a KB that cannot be opened keeps nothing
            assert kb is not None
            copies = [str(self.pipeline.uploads.keep(name, upload, label)) for label, upload in wanted.items()]
            times = self._index_copies(name, copies, progress)
        except RagqaError as exc:
            raise _page_error(exc) from None
        records = {r.path: r for r in kb.files()}
        for path, (status, detail, seconds) in times.items():
            label = _name(path)
            if status == "failed":
                lines[label] = f"✗ **{label}**: {_strip_path(detail, path)}"
                continue
            record = records.get(kb_path(path))
            n = record.chunks if record is not None else 0
            if status == "unchanged":
                lines[label] = f"✓ **{label}**: (unchanged)"
            else:
                how = f"{seconds:.1f}s" + (", updated" if status == "updated" else "")
                lines[label] = f"✓ **{label}**: {n} chunk{'s' if n != 1 else ''} ({how})"
        return "\n\n".join(line for line in lines.values() if line)

    def _index_copies(self, name: str, copies: list[str], progress: Any) -> dict[str, tuple[str, str, float]]:
        """Index the copied uploads (through a writer handle of their own: questions go on reading
        meanwhile); -> path -> (status, detail, seconds) as ``index_paths`` reported them."""
        results: dict[str, tuple[str, str, float]] = {}
        clock = [time.perf_counter()]

        def on_file(path: str, status: str, detail: str) -> None:
            now = time.perf_counter()
            results[path] = (status, detail, now - clock[0])
            clock[0] = now
            if progress is not None:
                progress((len(results), len(copies)), desc=f"{_name(path)}: {status}")

        def on_wait(message: str) -> None:
            log.info("%s", message)
            if progress is not None:
                progress((0, len(copies)), desc=message)

        if progress is not None:
            progress((0, len(copies)), desc=f"indexing {_name(copies[0])}")
        def on_page(path: str, done: int, total: int) -> None:  # a scan: OCR page by page
            if progress is not None:
                progress((done, total), desc=f"{_name(path)}: OCR page {done}/{total}")

        self.pipeline.ingest(name, copies, on_file=on_file, on_wait=on_wait, on_page=on_page)
        return results

    def delete(self, kb_name: str | None, label: str | None, who: Principal = OPEN) -> str:
        """Remove one document from the KB (and its uploaded copy); -> a status line."""
        name = _checked(kb_name)
        if not label:
            raise _page_error(InputError(MSG["no_doc"]))
        _require(who.can_read(name), _no_kb(name))
        _require(who.can_write(name), f"you may not change knowledge base {name!r}. 你无权修改知识库 {name!r}。")
        doc = next((d for d in self.page(name, who).docs if d.label == label), None)
        if doc is None:
            raise _page_error(InputError(f"no document {label!r} in knowledge base {name!r}. "
                                         f"知识库 {name!r} 中没有文档 {label!r}。"))
        try:
            self.pipeline.remove_document(name, doc.label)
        except RagqaError as exc:
            raise _page_error(exc) from None
        if self.pipeline.uploads.is_upload(name, doc.path):
            return f"🗑 **{doc.label}**: deleted 已删除"
        return f"🗑 **{doc.label}**: removed from the knowledge base; the file itself stays 已从知识库移除，原文件保留"

    # -- answering
    def ask(
        self, kb_name: str | None, question: str, history: list[dict[str, Any]] | None,
        chain: str | None = None, k: float | None = None, retriever: str | None = None,
        fusion: str | None = None, scope: Sequence[str] | None = None, who: Principal = OPEN,
    ) -> Iterator[tuple[list[dict[str, Any]], str, list[dict[str, Any]], str]]:
        """Stream (chat, sources markdown, sources data, question box) as the answer grows.
        ``scope``: the labels of the documents to ask (none: all of the KB's). The answer is shown
        as text: whatever HTML or image the model writes is not rendered (``plain_text``)."""
        from ragqa.pipeline import check_question_length

        question = (question or "").strip()
        name = _checked(kb_name)
        if not question:
            raise _page_error(InputError(MSG["no_question"]))
        try:
            check_question_length(question, self.settings)
        except InputError as exc:
            raise _page_error(exc) from None
        _require(who.can_read(name), _no_kb(name))
        self._require_documents(name)
        documents = self._scope_patterns(name, scope) if scope else None
        # the page shows earlier answers as escaped text; the model gets them back as written
        earlier = [_as_written(m) for m in history or []][-self.settings.max_messages:]
        chat = earlier + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        yield list(chat), "", [], ""
        text = ""
        answer: Answer | None = None
        try:
            for item in self.pipeline.ask_stream(
                [], question, kb=name, history=earlier,
                chain=chain or None, k=int(k) if k else None, retriever=retriever or None,
                fusion=fusion or None, documents=documents,
            ):
                if isinstance(item, Answer):
                    answer = item
                    break
                text += item
                chat[-1] = {"role": "assistant", "content": plain_text(text)}
                yield list(chat), "", [], ""
        except RagqaError as exc:
            raise _page_error(exc) from None
        assert answer is not None
        chat[-1] = {"role": "assistant", "content": plain_text(answer.answer or text.strip())}
        answer.notes = [_strip_folder(n, self.uploads_dir(name)) for n in answer.notes]
        yield chat, sources_markdown(answer), sources_data(answer), ""

    def _scope_patterns(self, name: str, labels: Sequence[str]) -> list[str]:
        """The picked documents (by label) as patterns that match each one's path exactly."""
        import glob

        paths = {d.label: d.path for d in self.page(name).docs if d.status == "ok"}
        gone = [label for label in labels if label not in paths]
        if gone:
            raise _page_error(InputError(MSG["scope_gone"].format(names=", ".join(gone))))
        return [glob.escape(paths[label]) for label in dict.fromkeys(labels)]

    def _require_documents(self, name: str) -> "KnowledgeBase":
        try:
            kb = self._kb(name)
            empty = kb is None or not kb.count()
        except RagqaError as exc:
            raise _page_error(exc) from None
        if empty:
            raise _page_error(InputError(MSG["no_files"]))
        assert kb is not None
        return kb

    def summarize(
        self, kb_name: str | None, picked: Sequence[str] | None, progress: Any = None, who: Principal = OPEN,
    ) -> tuple[str, str | None]:
        """One summary per picked document of the KB (all if none picked); -> (markdown, downloadable file)."""
        name = _checked(kb_name)
        _require(who.can_read(name), _no_kb(name))
        self._require_documents(name)
        docs = [d for d in self.page(name).docs if d.status == "ok"]
        if picked:
            wanted = set(picked)
            docs = [d for d in docs if d.label in wanted]
        parts, done = [], 0
        for i, doc in enumerate(docs):
            step = (lambda s, i=i, doc=doc: progress((i, len(docs)), desc=f"{doc.label}: {s}")) if progress else None
            if step:
                step("reading")
            try:
                record = self.pipeline.summarize_file(doc.path, on_step=step)
            except InputError as exc:
                parts.append(f"### {doc.label}\n\n✗ {_strip_path(str(exc), doc.path)}")
                continue
            except RagqaError as exc:
                raise _page_error(exc) from None
            done += 1
            parts.append(f"### {plain_text(doc.label)}\n\n{plain_text(record['summary'])}\n\n"
                         f"<sub>{record['chain']}, {record['chunks']} part(s), {record['seconds']:.1f}s</sub>")
        body = "\n\n".join(parts)
        if not done:
            return body, None
        return body, self._write_download(body)

    def _write_download(self, body: str) -> str:
        folder = Path(self.settings.cache_dir) / SUMMARIES
        # a name nobody can guess: the downloads folder is shared by everyone the server serves
        path = folder / f"summaries-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(12)}.md"
        write_atomic(path, body + "\n")
        return str(path)


def _following(name: str) -> str:
    """The folders this server keeps KB ``name`` in step with (``serve --watch``), for its header line."""
    from ragqa.watch import followed

    folders = [_markdown_escape(folder) + ("" if there else " (gone 已不在)") for folder, there in followed(name)]
    return f" · follows 跟随文件夹 {', '.join(folders)}" if folders else ""


def _require(allowed: bool, message: str) -> None:
    """A right the caller lacks: a message in the page, and nothing done."""
    if not allowed:
        raise _page_error(InputError(message))


def _no_kb(name: str) -> str:
    """The same words for a KB that does not exist and one the caller may not read."""
    return f"no knowledge base {name!r} that you may read. 没有你可读取的知识库 {name!r}。"


def plain_text(text: str) -> str:
    """Model output for a Markdown component, shown as the text it is: HTML tags are escaped (an
    ``<img src=…>`` a document talked the model into writing is not rendered, so nothing is
    fetched) and Markdown images become plain text; ordinary Markdown (lists, bold) still renders.

    >>> plain_text('<img src="http://x/a.png"> ![t](http://x/b.png) **ok**')
    '&lt;img src="http://x/a.png"&gt; !\\[t](http://x/b.png) **ok**'
    """
    return re.sub(r"!\[", r"!\\[", html.escape(text, quote=False))


def _as_written(message: Any) -> Any:
    """A message of the page's chat history with ``plain_text``'s escapes undone."""
    if isinstance(message, dict) and isinstance(message.get("content"), str) and message.get("role") == "assistant":
        return {**message, "content": html.unescape(message["content"].replace("!\\[", "!["))}
    return message


def _checked(name: str | None) -> str:
    """A KB name from the page, checked: a bad one is a message in the page."""
    try:
        return check_kb_name(name or "")
    except InputError as exc:
        raise _page_error(exc) from None


def _strip_folder(message: str, folder: Path) -> str:
    """Messages name the files' places on the server; the page shows the files' own names."""
    return message.replace(f"{folder}{os.sep}", "")


def _strip_paths(message: str, paths: Sequence[str]) -> str:
    """Errors name the server's temp paths; the page shows the files' own names."""
    for path in paths:
        message = message.replace(path, _name(path))
    return message


def _strip_path(message: str, path: str) -> str:
    """A message about one file, shown next to its name: without the leading "path: "."""
    return _strip_paths(message.removeprefix(f"{path}: "), [path])


def _markdown_escape(text: str) -> str:
    """A snippet shown as text: '# Title' in a document must not become a heading in the page."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|>~<&])", r"\\\1", text)


def _page_error(exc: RagqaError) -> Exception:
    """A message box in the page (the page keeps working), not a traceback."""
    gr = _gradio()
    return gr.Error(str(exc), print_exception=False)


def _fusion_choices(configured: str) -> list[str]:
    """The fusion dropdown: the registered fusions (the default first), plus the configured spec
    when it has parameters (zscore:w=0.6)."""
    from ragqa.fusion import DEFAULT_FUSION, FUSIONS

    choices = [DEFAULT_FUSION, *(name for name in FUSIONS if name != DEFAULT_FUSION)]
    return choices if configured in choices else [configured, *choices]


def sources_markdown(answer: Answer) -> str:
    """Each source as an expandable block: file, position, score; the snippet inside."""
    if not answer.sources:
        return "_no sources_"
    blocks = []
    cited: dict[int, list[tuple[int, int]]] = {}
    for c in answer.citations or []:
        cited.setdefault(c["n"], []).append((c["start"], c["end"]))
    for i, s in enumerate(answer.sources, 1):
        where = f" · {html.escape(s.where())}" if s.where() else ""
        ranges = sorted({(a - s.start, b - s.start) for a, b in cited.get(i, [])})
        if ranges:  # the whole passage, the sentences the answer cites highlighted
            shown = _highlighted(s.text, ranges)
        else:
            # the chunk's lines stay lines: a heading is not run into its paragraph
            lines = [" ".join(line.split()) for line in s.text.splitlines() if line.strip()]
            snippet = "\n".join(lines)
            if len(snippet) > SNIPPET_CHARS:
                snippet = snippet[: SNIPPET_CHARS - 1] + "…"
            shown = "<br>\n".join(_markdown_escape(line) for line in snippet.split("\n"))
        blocks.append(
            f"<details{' open' if ranges else ''}><summary>[{i}] {html.escape(_name(s.source))}{where} · "
            f"@{s.start} · score {s.score:.3f}{' · cited' if ranges else ''}</summary>\n\n{shown}\n\n</details>"
        )
    flags = ""
    if answer.unsupported:
        from ragqa.citations import answer_sentences

        sentences = answer_sentences(answer.answer)
        flags = "".join(f"\n\n<sub>⚠ not supported by the sources: \u201c{_markdown_escape(sentences[i])}\u201d</sub>"
                        for i in answer.unsupported if i < len(sentences))
    notes = "".join(f"\n\n<sub>note: {html.escape(n)}</sub>" for n in answer.notes)
    return "\n\n".join(blocks) + flags + notes


def _highlighted(text: str, ranges: list[tuple[int, int]]) -> str:
    """A passage with ``<mark>`` around the ranges (offsets in ``text``), its lines kept as lines."""
    parts, at = [], 0
    for a, b in ranges:
        a, b = max(a, at), min(b, len(text))
        if b <= a:
            continue
        parts += [(text[at:a], False), (text[a:b], True)]
        at = b
    parts.append((text[at:], False))
    out = ""
    for piece, marked in parts:
        lines = [" ".join(line.split()) for line in piece.split("\n")]
        body = "<br>\n".join(_markdown_escape(line) for line in lines)
        out += f"<mark>{body}</mark>" if marked and piece.strip() else body
    return re.sub(r"(<br>\n){2,}", "<br>\n", out).strip()


def sources_data(answer: Answer) -> list[dict[str, Any]]:
    return [
        {"file": _name(s.source), "start": s.start, "page": s.page, "where": s.where(), "score": round(s.score, 4),
         "text": s.text}
        for s in answer.sources
    ]


# -- the page -----------------------------------------------------------------------------------


def model_info(settings: Settings, backend: str) -> str:
    where = f" via `{settings.base_url}`" if settings.base_url else ""
    return (f"**Model** `{settings.api_model or settings.model}`{where} · **Backend** `{backend}` · "
            f"**Chat format** `{settings.chat_format}` · "
            f"**Embeddings** {embedding_info(settings)} · **Context** {settings.n_ctx} tokens")


def embedding_info(settings: Settings) -> str:
    if not settings.embedding_base_url:
        return f"`{settings.embedding_model}`"
    named = "embedding_model" in settings.model_fields_set
    return f"`{settings.embedding_model if named else 'the server’s model'}` via `{settings.embedding_base_url}`"


def build_app(pipeline: Pipeline, kb: str = DEFAULT_KB, *, door: Door | None = None,
              uploads: "UploadRegistry | None" = None) -> Any:
    """The Blocks app, opened on KB ``kb``. Building it loads no model, opens no KB and names no KB
    but ``kb`` (its config is the same for everyone); a browser's page load shows the KBs and
    documents its user may read. ``door``: who may do what (None: everyone everything);
    ``uploads``: the files each user uploaded, the only files the page takes."""
    gr = _gradio()
    t = gr.I18n(**UI_TEXT)
    door = door or Door()
    h = Handlers(pipeline, uploads)
    s = pipeline.settings
    start = check_kb_name(kb)

    with gr.Blocks(title="ragqa") as app:
        gr.Markdown(t("title"))
        gr.Markdown(t("intro"))
        gr.Markdown(model_info(s, pipeline.backend_name), elem_id="model-info")
        if not door.open:
            gr.Markdown("[Sign out 退出登录](/logout)", elem_id="sign-out")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                kb_pick = gr.Dropdown([start], value=start, label=t("kb"), elem_id="kb",
                                      allow_custom_value=True, filterable=True)
                kb_info = gr.Markdown(f"**{start}**", elem_id="kb-info")
                with gr.Accordion(t("kb_new"), open=False):
                    with gr.Row():
                        kb_new = gr.Textbox(show_label=False, placeholder=t("kb_new_ph"), lines=1, max_lines=1,
                                            elem_id="kb-new", scale=3)
                        kb_create = gr.Button(t("kb_create"), elem_id="kb-create", size="sm", scale=1)
                # no file_types and a generous size cap at the framework: Gradio's own checks refuse a
                # whole multi-file upload for one bad file; ragqa checks each file and the others go on
                files = gr.File(label=t("files"), file_count="multiple",
                                elem_id="files")
                status = gr.Markdown(elem_id="index-status", label=t("status"))
                docs = gr.Dataframe(headers=DOC_HEADERS, datatype=["str", "number", "str"], value=[],
                                    label=t("docs"), elem_id="docs", interactive=False, wrap=True,
                                    max_height=360, column_widths=["50%", "20%", "30%"])
                with gr.Row():
                    doc_pick = gr.Dropdown([], value=None, label=t("doc_pick"), elem_id="doc-pick",
                                           allow_custom_value=True, scale=3)
                    delete = gr.Button(t("delete"), elem_id="delete-doc", variant="stop", size="sm", scale=1)
                with gr.Accordion(t("options"), open=False):
                    chain = gr.Dropdown(["stuff", "refine"], value=s.chain, label=t("chain"), elem_id="chain")
                    k = gr.Slider(1, 20, value=s.k, step=1, label=t("k"), elem_id="k")
                    retriever = gr.Dropdown(["hybrid", "vector", "bm25"], value=s.retriever,
                                            label=t("retriever"), elem_id="retriever")
                    fusion = gr.Dropdown(_fusion_choices(s.fusion), value=s.fusion, label=t("fusion"),
                                         elem_id="fusion", allow_custom_value=True)
            with gr.Column(scale=2):
                with gr.Tab(t("tab_ask"), elem_id="tab-ask"):
                    chat = gr.Chatbot(label=t("chat"), elem_id="chat", height=420, feedback_options=None,
                                      allow_tags=False)
                    question = gr.Textbox(label=t("question"), placeholder=t("question_ph"), lines=1,
                                          max_lines=4, elem_id="question", submit_btn=True)
                    scope = gr.Dropdown([], value=[], multiselect=True, label=t("scope"), elem_id="scope")
                    clear = gr.Button(t("clear"), elem_id="clear", variant="secondary", size="sm")
                    with gr.Accordion(t("sources"), open=True):
                        sources = gr.Markdown(elem_id="sources")
                    with gr.Accordion(t("raw_sources"), open=False):
                        sources_json = gr.JSON(elem_id="sources-json")
                with gr.Tab(t("tab_summarize"), elem_id="tab-summarize"):
                    picked = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                         label=t("pick"), elem_id="picked")
                    summarize = gr.Button(t("summarize"), variant="primary", elem_id="summarize")
                    with gr.Accordion(t("summaries"), open=True):
                        summaries = gr.Markdown(elem_id="summaries")
                    download = gr.File(label=t("download"), elem_id="download", interactive=False)

        shown = [kb_info, docs, picked, doc_pick, scope]  # what depends on the KB's documents

        def who(request: Any) -> Principal:
            """The caller, as the guard and the door signed them in (``ragqa.api.guard``)."""
            found = door.named(getattr(request, "username", None))
            if found is None:  # the guard lets no one through unsigned; this is the second lock
                raise _page_error(InputError("sign in first. 请先登录。"))
            return found

        def view(name: str | None, caller: Principal, keep_scope: Sequence[str] = ()) -> tuple[Any, ...]:
            page = h.page(name, caller)
            readable = page.labels(ok_only=True)
            return (page.info + _following(page.name), page.rows(), gr.Dropdown(choices=readable, value=[]),
                    gr.Dropdown(choices=page.labels(), value=None),
                    gr.Dropdown(choices=readable, value=[label for label in keep_scope if label in readable]))

        def on_load(name, request):
            caller = who(request)
            names = h.kb_names(caller)
            name = name if name and caller.can_read(name) else (names[0] if names else start)
            return gr.Dropdown(choices=sorted({name, *names}), value=name), *view(name, caller)

        def on_switch(name, request):  # another KB: its documents; the chat and last upload's lines were about the other
            return *view(name, who(request)), [], "", [], ""

        def on_create(name, request):
            caller = who(request)
            name = h.create_kb(name, caller)
            return gr.Dropdown(choices=sorted({name, *h.kb_names(caller)}), value=name), ""

        def on_upload(name, uploaded, in_scope, request, progress: Any = gr.Progress()):
            caller = who(request)
            text = h.index(name, uploaded, progress, caller)
            return text, *view(name, caller, in_scope or ()), None

        def on_delete(name, label, in_scope, request):
            caller = who(request)
            return h.delete(name, label, caller), *view(name, caller, in_scope or ())

        def on_select(evt):
            row = evt.row_value or []
            return row[0] if row else None

        on_select.__annotations__["evt"] = gr.SelectData  # how Gradio knows to pass the clicked row

        def on_ask(name, q, history, chain_type, k_value, retriever_kind, fusion_spec, in_scope=None, request=None):
            yield from h.ask(name, q, history, chain_type, k_value, retriever_kind, fusion_spec, in_scope,
                             who(request))

        def on_summarize(name, labels, request, progress: Any = gr.Progress()):
            return h.summarize(name, labels, progress, who(request))

        for fn in (on_load, on_switch, on_create, on_upload, on_delete, on_ask, on_summarize):
            fn.__annotations__["request"] = gr.Request  # how Gradio knows to pass the request (and its user)

        app.load(on_load, kb_pick, [kb_pick, *shown], api_visibility="private")
        kb_pick.change(on_switch, kb_pick, [*shown, chat, sources, sources_json, status], api_name="documents")
        kb_create.click(on_create, kb_new, [kb_pick, kb_new], api_name="create_kb")
        kb_new.submit(on_create, kb_new, [kb_pick, kb_new], api_visibility="private")
        files.upload(on_upload, [kb_pick, files, scope], [status, *shown, files], api_name="index",
                     concurrency_id=KB_QUEUE, concurrency_limit=1)
        docs.select(on_select, None, doc_pick, api_visibility="private")
        delete.click(on_delete, [kb_pick, doc_pick, scope], [status, *shown], api_name="delete",
                     concurrency_id=KB_QUEUE, concurrency_limit=1)
        question.submit(on_ask, [kb_pick, question, chat, chain, k, retriever, fusion, scope],
                        [chat, sources, sources_json, question], api_name="ask", concurrency_id=MODEL_QUEUE,
                        concurrency_limit=pipeline.gate.slots)
        clear.click(lambda: ([], "", []), None, [chat, sources, sources_json], api_visibility="private")
        summarize.click(on_summarize, [kb_pick, picked], [summaries, download], api_name="summarize",
                        concurrency_id=MODEL_QUEUE, concurrency_limit=pipeline.gate.slots)
    app.ragqa_i18n = t
    return app


def serve(
    settings: Settings,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: str | None = None,
    allow_open: bool = False,
    open_browser: bool = False,
    page: bool = True,
    watch: Sequence[tuple[str, str]] = (),
    on_file: Callable[[str, str, str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> None:
    """Serve the HTTP API at /v1 and (unless ``page`` is False) the page at /, on one port, and block.

    One door for both (``ragqa.api.access``, README "Security"): with keys (``settings.api_keys``)
    or ``auth`` users, every request to the page or the API must name one, and each gets the same
    rights on both; beyond localhost the start is refused without them unless ``allow_open``.
    The page and the API share one pipeline: one copy of each model, one gate in front of the LLM.
    ``watch``: (folder, KB) pairs each KB follows while the server runs (``ragqa.watch``; a thread
    per KB, its changes told to ``on_file`` and ``on_note``)."""
    import uvicorn

    from ragqa.api.access import Door
    from ragqa.api.app import build_api
    from ragqa.api.guard import Guard, UploadRegistry
    from ragqa.api.keys import KeyRing
    from ragqa.api.login import add_login_routes
    from ragqa.pipeline.jobs import IngestJobs

    credentials = parse_auth(auth)
    keys = KeyRing.load(settings.api_keys) if settings.api_keys else None
    if keys is not None and credentials:
        raise ConfigError("give --api-keys or --auth, not both: with keys, people sign in to the page with a "
                          "key's name and token")
    door = Door(keys, credentials)
    if host not in LOCAL_HOSTS and door.open and not allow_open:
        raise ConfigError(f"--host {host} is reachable from the network, and the page and the API there would "
                          "answer anyone: give keys with --api-keys FILE (README \"Security\"), serve on 127.0.0.1, "
                          "or pass --allow-open if that is what you mean")
    if host not in LOCAL_HOSTS and door.open:
        log.warning("serving on %s with no keys (--allow-open): anyone who can reach this port can read and change "
                    "every knowledge base", host)
    sock = _bind(host, port)  # a busy port fails first, before the models are checked
    try:
        pipeline = Pipeline(settings)
        pipeline.check_models()  # a bad model path fails now, not at the first question
        jobs = IngestJobs(pipeline)
        jobs.resume()  # what the last run accepted and did not finish is taken up again
        api = build_api(pipeline, door, jobs)
        uploads = None
        if page:
            # the page's uploads land in a folder of this server's own, not the machine-wide /tmp/gradio
            os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(settings.cache_dir) / "page-uploads"))
            gr = _gradio()
            from gradio.utils import get_upload_folder

            uploads = UploadRegistry(_folder(get_upload_folder(), settings))
            blocks = build_app(pipeline, door=door, uploads=uploads)
            # the page's model events run as many at once as the gate lets through; the gate orders them
            # with the API's questions, so the page never serialises what the backend can batch
            blocks.queue(default_concurrency_limit=1, max_size=pipeline.gate.slots + pipeline.gate.queue)
            downloads = _folder(Path(settings.cache_dir) / SUMMARIES, settings)
            if not door.open:
                add_login_routes(api, door)  # before the page's mount at /, so these paths are ours
            api = gr.mount_gradio_app(
                api, blocks, path="/", show_error=True, ssr_mode=False,
                # who the page's user is: the guard signed them in (a session or an Authorization header)
                auth_dependency=None if door.open else _page_user,
                # the framework's cap only stops absurd uploads; ragqa refuses a file over max_file_mb itself,
                # with a ✗ line for that file while the others of the upload go on
                max_file_size=int(max(4 * settings.max_file_mb, settings.max_file_mb + 64) * 1024 * 1024),
                allowed_paths=[str(downloads)],  # the summaries offered for download; never the uploads
                i18n=blocks.ragqa_i18n, theme=_theme(gr), footer_links=["api", "settings"],
            )
        app = Guard(api, door, uploads)
    except BaseException:
        sock.close()
        raise
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    log.warning("serving %s/v1 (API)%s%s", url, f" and {url}/ (page)" if page else "",
                {"keys": "; keys required (page: sign in at /login)", "users": "; sign-in required",
                 "open": ""}[door.mode])
    if open_browser and page:
        import threading
        import webbrowser

        threading.Timer(1.5, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    from ragqa.watch import start_watchers

    watchers = start_watchers(pipeline, watch, on_file=on_file, on_note=on_note)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for watcher in watchers:
            watcher.stop(timeout=5)  # one mid-way through a file is left: the next start catches up
        jobs.stop(timeout=60)  # the file being indexed finishes; the rest stays queued for the next start


def _page_user(request: Any) -> str | None:
    """Gradio's ``auth_dependency``: the name of the principal the guard found for this request."""
    from ragqa.api.guard import PRINCIPAL_KEY

    found = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return found.name if found is not None else None


def _folder(path: str | Path, settings: Settings) -> Path:
    """A folder the server writes into, made now: a folder it cannot make is one clear line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagqaError(f"cannot use the cache folder {settings.cache_dir}: {exc.strerror or exc}") from None
    return path


def _bind(host: str, port: int) -> Any:
    """The listening socket, bound before anything is announced: a busy port is one clear line."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))  # bound here, so a busy port is one clear error before uvicorn starts
    except OSError as exc:
        sock.close()
        import errno

        reason = ("the port is in use (choose another with --port)" if exc.errno == errno.EADDRINUSE
                  else exc.strerror or str(exc))
        raise RagqaError(f"cannot serve on {host}:{port}: {reason}") from None
    return sock


def _theme(gr: Any) -> Any:
    """Gradio's default theme with local fonts: the page makes no request beyond this server."""
    local = ["ui-sans-serif", "system-ui", "Noto Sans CJK SC", "sans-serif"]
    mono = ["ui-monospace", "Consolas", "monospace"]
    return gr.themes.Default(font=local, font_mono=mono)


def parse_auth(auth: str | None) -> list[tuple[str, str]] | None:
    """``user:password`` (or several, comma-separated) -> Gradio's auth list."""
    if not auth:
        return None
    pairs = []
    for item in auth.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError("--auth must be USER:PASSWORD (several separated by commas)")
        pairs.append((user, password))
    return pairs
