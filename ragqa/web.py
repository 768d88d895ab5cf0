"""The web page: a thin Gradio shell over ``Pipeline`` (upload, ask with streaming, summarize).

Nothing here re-implements the pipeline: uploads go through ``Pipeline.index_file`` (so the index
cache is shared with the CLI), questions through ``Pipeline.ask_stream``, summaries through
``Pipeline.summarize_file``. The models load on the first request, not at start.

Every event that touches a model shares one queue slot (``concurrency_id="model"``, limit 1):
llama.cpp contexts are not thread-safe, so two browsers asking at once are answered in turn.
"""

from __future__ import annotations

import html
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ragqa.config import Settings
from ragqa.errors import ConfigError, InputError, NoReadableDocumentsError, RagqaError
from ragqa.pipeline import Answer, Pipeline

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
SNIPPET_CHARS = 400
MODEL_QUEUE = "model"  # one concurrency group for everything that runs a model
FILE_TYPES = [".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm"]

# UI text in both languages; Gradio picks the browser's language (or the one set in the page's
# Settings panel), English otherwise.
UI_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "## ragqa: ask your documents",
        "intro": "Upload documents, then ask questions about them or summarize them. "
                 "Everything runs on this machine.",
        "files": "Documents (txt, md, pdf, docx, html)",
        "status": "Indexing",
        "tab_ask": "Ask",
        "tab_summarize": "Summarize",
        "chat": "Conversation",
        "question": "Question",
        "question_ph": "Ask about the uploaded documents, then press Enter",
        "send": "Ask",
        "clear": "Clear chat",
        "sources": "Sources",
        "raw_sources": "Sources as data",
        "options": "Options",
        "chain": "Chain",
        "k": "Chunks retrieved (k)",
        "retriever": "Retriever",
        "pick": "Documents to summarize (none picked = all)",
        "summarize": "Summarize",
        "summaries": "Summaries",
        "download": "Download summaries (Markdown)",
    },
    "zh": {
        "title": "## ragqa：向你的文档提问",
        "intro": "上传文档，然后提问或生成摘要。所有计算都在本机完成。",
        "files": "文档（txt、md、pdf、docx、html）",
        "status": "索引",
        "tab_ask": "问答",
        "tab_summarize": "摘要",
        "chat": "对话",
        "question": "问题",
        "question_ph": "就上传的文档提问，按回车发送",
        "send": "提问",
        "clear": "清空对话",
        "sources": "出处",
        "raw_sources": "出处（数据）",
        "options": "选项",
        "chain": "链",
        "k": "检索片段数 (k)",
        "retriever": "检索方式",
        "pick": "要摘要的文档（不选 = 全部）",
        "summarize": "生成摘要",
        "summaries": "摘要",
        "download": "下载摘要（Markdown）",
    },
}

# Messages shown in the page (toasts and status lines) carry both languages: they are made in
# Python, where the browser's language is not known.
MSG = {
    "no_files": "Upload a document first. 请先上传文档。",
    "no_question": "Type a question. 请输入问题。",
    "no_readable": "None of the uploaded files could be read. 上传的文件都无法读取。",
}


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


# -- handlers: plain functions over a Pipeline (unit-tested without a browser) -------------------


class Handlers:
    """What each page event does. ``progress`` arguments are Gradio progress trackers."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def index(self, files: Sequence[Any] | None, progress: Any = None) -> tuple[str, list[str]]:
        """Index each upload (or take it from the cache); -> (status lines, names of good files)."""
        paths = _paths(files)
        lines, good = [], []
        for i, path in enumerate(paths):
            if progress is not None:
                progress((i, len(paths)), desc=f"indexing {_name(path)}")
            t = time.perf_counter()
            try:
                index, cached = self.pipeline.index_file(Path(path))
            except InputError as exc:
                lines.append(f"✗ **{_name(path)}**: {_strip_path(str(exc), path)}")
                continue
            except RagqaError as exc:
                raise _page_error(exc) from None
            good.append(_name(path))
            how = "cached" if cached else f"{time.perf_counter() - t:.1f}s"
            n = len(index.chunks)
            lines.append(f"✓ **{_name(path)}**: {n} chunk{'s' if n != 1 else ''} ({how})")
        return "\n\n".join(lines), good

    def ask(
        self, files: Sequence[Any] | None, question: str, history: list[dict[str, Any]] | None,
        chain: str | None = None, k: float | None = None, retriever: str | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], str, list[dict[str, Any]], str]]:
        """Stream (chat, sources markdown, sources data, question box) as the answer grows."""
        question = (question or "").strip()
        paths = _paths(files)
        if not question:
            raise _page_error(InputError(MSG["no_question"]))
        if not paths:
            raise _page_error(InputError(MSG["no_files"]))
        earlier = list(history or [])
        chat = earlier + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        yield list(chat), "", [], ""
        text = ""
        answer: Answer | None = None
        try:
            for item in self.pipeline.ask_stream(
                paths, question, history=earlier, skip_unreadable=True,
                chain=chain or None, k=int(k) if k else None, retriever=retriever or None,
            ):
                if isinstance(item, Answer):
                    answer = item
                    break
                text += item
                chat[-1] = {"role": "assistant", "content": text}
                yield list(chat), "", [], ""
        except NoReadableDocumentsError:
            raise _page_error(InputError(MSG["no_readable"])) from None
        except RagqaError as exc:
            raise _page_error(exc) from None
        assert answer is not None
        chat[-1] = {"role": "assistant", "content": answer.answer or text.strip()}
        answer.notes = [_strip_paths(n, paths) for n in answer.notes]
        yield chat, sources_markdown(answer), sources_data(answer), ""

    def summarize(
        self, files: Sequence[Any] | None, picked: Sequence[str] | None, progress: Any = None
    ) -> tuple[str, str | None]:
        """One summary per picked upload (all if none picked); -> (markdown, downloadable file)."""
        paths = _paths(files)
        if not paths:
            raise _page_error(InputError(MSG["no_files"]))
        if picked:
            wanted = set(picked)
            paths = [p for p in paths if _name(p) in wanted]
        parts, done = [], 0
        for i, path in enumerate(paths):
            step = (lambda s, i=i, path=path: progress((i, len(paths)), desc=f"{_name(path)}: {s}")) if progress else None
            if step:
                step("reading")
            try:
                record = self.pipeline.summarize_file(path, on_step=step)
            except InputError as exc:
                parts.append(f"### {_name(path)}\n\n✗ {_strip_path(str(exc), path)}")
                continue
            except RagqaError as exc:
                raise _page_error(exc) from None
            done += 1
            parts.append(f"### {_name(path)}\n\n{record['summary']}\n\n"
                         f"<sub>{record['chain']}, {record['chunks']} part(s), {record['seconds']:.1f}s</sub>")
        body = "\n\n".join(parts)
        if not done:
            return body, None
        return body, self._write_download(body)

    def _write_download(self, body: str) -> str:
        from ragqa.outputs import write_atomic

        folder = self.pipeline.settings.cache_dir / "web-summaries"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"summaries-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.md"
        write_atomic(path, body + "\n")
        return str(path)


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


def sources_markdown(answer: Answer) -> str:
    """Each source as an expandable block: file, position, score; the snippet inside."""
    if not answer.sources:
        return "_no sources_"
    blocks = []
    for i, s in enumerate(answer.sources, 1):
        page = f" · p.{s.page}" if s.page is not None else ""
        snippet = " ".join(s.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1] + "…"
        blocks.append(
            f"<details><summary>[{i}] {html.escape(_name(s.source))}{page} · @{s.start} · "
            f"score {s.score:.3f}</summary>\n\n{_markdown_escape(snippet)}\n\n</details>"
        )
    notes = "".join(f"\n\n<sub>note: {html.escape(n)}</sub>" for n in answer.notes)
    return "\n\n".join(blocks) + notes


def sources_data(answer: Answer) -> list[dict[str, Any]]:
    return [
        {"file": _name(s.source), "start": s.start, "page": s.page, "score": round(s.score, 4), "text": s.text}
        for s in answer.sources
    ]


# -- the page -----------------------------------------------------------------------------------


def model_info(settings: Settings, backend: str) -> str:
    where = f" via `{settings.base_url}`" if settings.base_url else ""
    return (f"**Model** `{settings.api_model or settings.model}`{where} · **Backend** `{backend}` · "
            f"**Chat format** `{settings.chat_format}` · "
            f"**Embeddings** `{settings.embedding_model}` · **Context** {settings.n_ctx} tokens")


def build_app(pipeline: Pipeline) -> Any:
    """The Blocks app. Building it loads no model."""
    gr = _gradio()
    t = gr.I18n(**UI_TEXT)
    h = Handlers(pipeline)
    s = pipeline.settings

    with gr.Blocks(title="ragqa") as app:
        gr.Markdown(t("title"))
        gr.Markdown(t("intro"))
        gr.Markdown(model_info(s, pipeline.backend_name), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                files = gr.File(label=t("files"), file_count="multiple", file_types=FILE_TYPES,
                                elem_id="files")
                status = gr.Markdown(elem_id="index-status", label=t("status"))
                with gr.Accordion(t("options"), open=False):
                    chain = gr.Dropdown(["stuff", "refine"], value=s.chain, label=t("chain"), elem_id="chain")
                    k = gr.Slider(1, 20, value=s.k, step=1, label=t("k"), elem_id="k")
                    retriever = gr.Dropdown(["hybrid", "vector", "bm25"], value=s.retriever,
                                            label=t("retriever"), elem_id="retriever")
            with gr.Column(scale=2):
                with gr.Tab(t("tab_ask"), elem_id="tab-ask"):
                    chat = gr.Chatbot(label=t("chat"), elem_id="chat", height=420, feedback_options=None)
                    question = gr.Textbox(label=t("question"), placeholder=t("question_ph"), lines=1,
                                          max_lines=4, elem_id="question", submit_btn=True)
                    clear = gr.Button(t("clear"), elem_id="clear", variant="secondary", size="sm")
                    with gr.Accordion(t("sources"), open=True):
                        sources = gr.Markdown(elem_id="sources")
                    with gr.Accordion(t("raw_sources"), open=False):
                        sources_json = gr.JSON(elem_id="sources-json")
                with gr.Tab(t("tab_summarize"), elem_id="tab-summarize"):
                    picked = gr.CheckboxGroup([], label=t("pick"), elem_id="picked")
                    summarize = gr.Button(t("summarize"), variant="primary", elem_id="summarize")
                    with gr.Accordion(t("summaries"), open=True):
                        summaries = gr.Markdown(elem_id="summaries")
                    download = gr.File(label=t("download"), elem_id="download", interactive=False)

        def on_upload(uploaded: list[Any] | None, progress: Any = gr.Progress()) -> tuple[str, Any]:
            text, good = h.index(uploaded, progress)
            return text, gr.CheckboxGroup(choices=good, value=[])

        def on_ask(uploaded, q, history, chain_type, k_value, retriever_kind):
            yield from h.ask(uploaded, q, history, chain_type, k_value, retriever_kind)

        def on_summarize(uploaded, names, progress: Any = gr.Progress()):
            return h.summarize(uploaded, names, progress)

        files.upload(on_upload, files, [status, picked], api_name="index", concurrency_id=MODEL_QUEUE)
        files.clear(lambda: ("", gr.CheckboxGroup(choices=[], value=[])), None, [status, picked],
                    api_visibility="private")
        question.submit(on_ask, [files, question, chat, chain, k, retriever], [chat, sources, sources_json, question],
                        api_name="ask", concurrency_id=MODEL_QUEUE)
        clear.click(lambda: ([], "", []), None, [chat, sources, sources_json], api_visibility="private")
        summarize.click(on_summarize, [files, picked], [summaries, download], api_name="summarize",
                        concurrency_id=MODEL_QUEUE)
    app.ragqa_i18n = t
    return app


def serve(
    settings: Settings,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    auth: str | None = None,
    open_browser: bool = False,
    max_queue: int = 64,
) -> None:
    """Start the page and block. Beyond localhost without ``auth`` a warning is logged."""
    gr = _gradio()
    credentials = parse_auth(auth)
    if host not in LOCAL_HOSTS and credentials is None:
        log.warning("serving on %s without --auth: anyone who can reach this port can read the "
                    "uploaded documents", host)
    pipeline = Pipeline(settings)
    pipeline.check_models()  # a bad model path fails now, not at the first question
    app = build_app(pipeline)
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    app.launch(
        server_name=host, server_port=port, auth=credentials, inbrowser=open_browser, share=False,
        max_file_size=int(settings.max_file_mb * 1024 * 1024),  # the loaders' limit, in bytes
        i18n=app.ragqa_i18n, theme=_theme(gr),
        ssr_mode=False, footer_links=["api", "settings"], show_error=True, quiet=False,
    )


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
