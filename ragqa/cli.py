"""The ``ragqa`` command. A thin shell over ragqa.pipeline: parse flags, print, map errors."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ragqa.errors import ConfigError, RagqaError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Ask questions about your own documents and summarize them, locally. 中文优先。",
)

SNIPPET_CHARS = 160
DEFAULT_ANSWER_SAMPLE = 50


@app.callback()
def _group() -> None:
    """Ask questions about your own documents and summarize them, locally."""


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"ragqa: error: {message}", err=True)
    raise typer.Exit(code)


class _NoteFormatter(logging.Formatter):
    """Warnings are things the user should know while the run goes on: `note: ...` lines, the
    same as the CLI's own notes. Other levels (with -v) keep their level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.WARNING:
            return f"note: {record.getMessage()}"
        return f"{record.levelname} {record.name}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoteFormatter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    for noisy in ("httpx", "sentence_transformers", "transformers", "huggingface_hub", "faiss"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


def _snippet(text: str, n: int = SNIPPET_CHARS) -> str:
    r"""A chunk on one line; its paragraph breaks shown as ↵, so a heading does not run into its
    paragraph ("# The market ↵ Every Thursday ..."). Lines wrapped inside a paragraph are joined.

    >>> _snippet("# The market\n\nEvery Thursday a cheese\nmarket is held.")
    '# The market ↵ Every Thursday a cheese market is held.'
    """
    paragraphs = re.split(r"\n[ \t\r\f\v]*\n", text)
    flat = " ↵ ".join(" ".join(p.split()) for p in paragraphs if p.strip())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


# Options shared by commands that run the pipeline. None = not given (env/config/defaults apply).
ModelOpt = typer.Option(None, "--model", "-m", help="LLM: 'smollm2' (starter), a .gguf path, an HF model folder or hub id.")
EmbOpt = typer.Option(None, "--embedding-model", "-e", help="'multilingual-e5-small' (default), 'all-MiniLM-L6-v2', a folder or a hub id.")
FormatOpt = typer.Option(
    None, "--chat-format",
    help="auto (the model's own template), a name (alpaca-2, llama-2, chatml, yi, vicuna, internlm, "
    "xverse, billa, yulan, alpaca, deepseek-coder) or a .toml chat format file.",
)
ConfigOpt = typer.Option(None, "--config", help="TOML file of settings (keys as RAGQA_* without the prefix).")
BackendOpt = typer.Option(None, "--backend", help="auto (from the model; default), llama.cpp, transformers, openai.")
BaseUrlOpt = typer.Option(None, "--base-url", help="openai backend: the server's API root, e.g. http://127.0.0.1:8000/v1.")
ApiModelOpt = typer.Option(None, "--api-model", help="openai backend: model name on the server (default: its only one).")
DeviceOpt = typer.Option(None, "--device", help="transformers backend: auto (default), cpu, cuda.")
DtypeOpt = typer.Option(None, "--torch-dtype", help="transformers backend: auto (default), float32, bfloat16, float16.")
FourBitOpt = typer.Option(None, "--load-in-4bit", is_flag=True, help="transformers backend: 4-bit weights (bitsandbytes, GPU).")
EightBitOpt = typer.Option(None, "--load-in-8bit", is_flag=True, help="transformers backend: 8-bit weights (bitsandbytes, GPU).")
RopeScalingOpt = typer.Option(None, "--rope-scaling", help="transformers backend: dynamic NTK RoPE factor (> 1).")
KbOpt = typer.Option(None, "--kb", help="Knowledge base name (see ragqa kb list).")
StoreOpt = typer.Option(None, "--store", help="KB engine: local (default) or a Milvus URI, e.g. http://127.0.0.1:19530.")
DataDirOpt = typer.Option(None, "--data-dir", help="Where local knowledge bases live (default ~/.local/share/ragqa).")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Cache folder (default ~/.cache/ragqa).")
MaxFileOpt = typer.Option(None, "--max-file-mb", help="Refuse files larger than this many MB (default 200).")
OcrOpt = typer.Option(
    None, "--ocr", help="OCR scanned pages with Tesseract: auto (PDF pages without text, images; default), always, never.",
)
FusionOpt = typer.Option(
    None, "--fusion",
    help="How hybrid fuses vector and BM25 hits: zscore (default: z-scores, vector weight w=0.5, raised by "
    "lift=1 x (below=0.5 - the share of the query's idf mass BM25's best chunk holds), lowered by up to "
    "drop=0.4 for long queries (that chunk matching over mass=80 of idf)), minmax or rrf "
    "(reciprocal rank, k=60); parameters after colons, e.g. zscore:w=0.6:lift=0, rrf:k=60 (README \"Retrieval\").",
)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def ask(
    args: list[str] = typer.Argument(..., metavar="[PATH...] QUESTION", help="Files or folders, then the question (with --kb: the question only)."),
    kb: Optional[str] = KbOpt,
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    base_url: Optional[str] = BaseUrlOpt,
    api_model: Optional[str] = ApiModelOpt,
    embedding_model: Optional[str] = EmbOpt,
    chat_format: Optional[str] = FormatOpt,
    chain: Optional[str] = typer.Option(None, "--chain", help="stuff (default) or refine."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Chunks to retrieve (default 4)."),
    retriever: Optional[str] = typer.Option(None, "--retriever", help="hybrid (default), vector or bm25."),
    fusion: Optional[str] = FusionOpt,
    reranker: Optional[str] = typer.Option(None, "--reranker", help="Cross-encoder to re-score candidates (off by default)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Characters per chunk (default 600)."),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help="Overlap characters (default 100)."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Prompt language: auto, zh, en."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Override the system prompt."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context window in tokens (default 4096)."),
    n_threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: physical cores)."),
    n_gpu_layers: Optional[int] = typer.Option(None, "--n-gpu-layers", help="Layers to offload to GPU (-1 all)."),
    rope_freq_base: Optional[float] = typer.Option(None, "--rope-freq-base", help="RoPE base (NTK); 0 = model's."),
    rope_freq_scale: Optional[float] = typer.Option(None, "--rope-freq-scale", help="RoPE scale; 0 = model's."),
    device: Optional[str] = DeviceOpt,
    torch_dtype: Optional[str] = DtypeOpt,
    load_in_4bit: Optional[bool] = FourBitOpt,
    load_in_8bit: Optional[bool] = EightBitOpt,
    rope_scaling: Optional[float] = RopeScalingOpt,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default 400."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default 0.2."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Default 40."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Default 0.9."),
    repeat_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help="Default 1.1."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed (default 42)."),
    cache_dir: Optional[Path] = CacheDirOpt,
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    max_file_mb: Optional[float] = MaxFileOpt,
    ocr: Optional[str] = OcrOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, sources, timings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact prompt; load no LLM weights."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    """Answer QUESTION from the documents at PATH... (or the knowledge base --kb NAME), streaming
    the answer, then its sources.

    Examples: ragqa ask notes.txt reports/ "合同的有效期是多久？"
              ragqa ask --kb contracts "合同的有效期是多久？"
    """
    _setup_logging(verbose)
    if kb is None and len(args) < 2:
        _fail("give at least one PATH and then the QUESTION (ragqa ask FILE \"question\"), or --kb NAME", 2)
    if kb is not None and len(args) != 1:
        _fail("with --kb give only the QUESTION (ragqa ask --kb NAME \"question\")", 2)
    *paths, question = args
    if not question.strip():
        _fail("the question is empty", 2)
    overrides = dict(
        model=model, backend=backend, base_url=base_url, api_model=api_model,
        device=device, torch_dtype=torch_dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
        rope_scaling=rope_scaling, embedding_model=embedding_model, chat_format=chat_format, chain=chain, k=k,
        retriever=retriever, fusion=fusion, reranker=reranker,
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, lang=lang, system_prompt=system_prompt,
        n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, rope_freq_base=rope_freq_base,
        rope_freq_scale=rope_freq_scale, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty, seed=seed, cache_dir=cache_dir,
        data_dir=data_dir, store=store, max_file_mb=max_file_mb, ocr=ocr,
    )
    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(config, **overrides)
        pipeline = Pipeline(settings)
        streamed = not as_json and not dry_run

        def on_token(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        answer = pipeline.ask(paths, question, on_token=on_token if streamed else None, dry_run=dry_run, kb=kb)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)

    for note in answer.notes:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        sys.stdout.write(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    if dry_run:
        sys.stdout.write(answer.prompts[0] + "\n")
        _print_sources(answer, err=True)
        return
    sys.stdout.write("\n")
    _print_sources(answer, err=False)
    _print_timings(answer.timings)


def _print_sources(answer: Any, err: bool) -> None:
    if not answer.sources:
        return
    typer.echo("\nSources:", err=err)
    for i, s in enumerate(answer.sources, 1):
        typer.echo(f"  [{i}] {s.location()}  (score {s.score:.3f})  {_snippet(s.text)}", err=err)


def _print_timings(t: dict[str, Any]) -> None:
    parts = [f"index {t.get('index_s', 0):.2f}s ({t.get('files_cached', 0)}/{t.get('files', 0)} cached)"]
    if "answer_s" in t:
        parts.append(f"answer {t['answer_s']:.2f}s")
    if t.get("decode_tokens_per_s"):
        parts.append(f"{t['decode_tokens_per_s']:.1f} tok/s")
    typer.echo("[" + ", ".join(parts) + "]", err=True)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def summarize(
    paths: Optional[list[str]] = typer.Argument(None, metavar="[PATH...]", help="Files, folders or glob patterns (or --kb)."),
    kb: Optional[str] = typer.Option(None, "--kb", help="Summarize the documents of this knowledge base."),
    out: Path = typer.Option(..., "--out", "-o", help="OUT.jsonl (one JSON object per document) or a folder (Markdown + index.md)."),
    chain: Optional[str] = typer.Option(None, "--chain", help="auto (default), stuff, refine or map_reduce."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Prompt language: auto (per document), zh, en."),
    force: bool = typer.Option(False, "--force", help="Redo documents already summarized with the same settings."),
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    base_url: Optional[str] = BaseUrlOpt,
    api_model: Optional[str] = ApiModelOpt,
    device: Optional[str] = DeviceOpt,
    torch_dtype: Optional[str] = DtypeOpt,
    load_in_4bit: Optional[bool] = FourBitOpt,
    load_in_8bit: Optional[bool] = EightBitOpt,
    rope_scaling: Optional[float] = RopeScalingOpt,
    chat_format: Optional[str] = FormatOpt,
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt"),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context window in tokens (default 4096)."),
    n_threads: Optional[int] = typer.Option(None, "--threads", "-t"),
    n_gpu_layers: Optional[int] = typer.Option(None, "--n-gpu-layers"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default 400."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    max_file_mb: Optional[float] = MaxFileOpt,
    ocr: Optional[str] = OcrOpt,
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Summarize every document at PATH... (or in --kb NAME) into OUT, one result per document as soon as it is done.

    Running the same command again skips documents already summarized with the same content and
    settings, so an interrupted batch resumes. Exit code 1 if any document failed.

    Examples: ragqa summarize reports/ "notes/*.txt" --out summaries.jsonl
              ragqa summarize --kb contracts --out contract-summaries/
    """
    _setup_logging(verbose)
    if bool(paths) == bool(kb):
        _fail("give the documents as PATH... or as --kb NAME (one of the two)", 2)
    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(
            config, summary_chain=chain, lang=lang, model=model, backend=backend, base_url=base_url,
            api_model=api_model, device=device, torch_dtype=torch_dtype, load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit, rope_scaling=rope_scaling, chat_format=chat_format,
            system_prompt=system_prompt, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
            max_new_tokens=max_new_tokens, temperature=temperature, max_file_mb=max_file_mb, ocr=ocr,
            data_dir=data_dir, store=store,
        )
        pipeline = Pipeline(settings)
        progress = sys.stderr.isatty()
        if kb is not None:
            paths = pipeline.kb_paths(kb)

        def on_file(rec: dict) -> None:
            name = rec["source"]
            if rec["status"] == "ok":
                line = f"ok      {name} ({rec['chain']}, {rec['chunks']} chunk{'s' if rec['chunks'] != 1 else ''}, {rec['seconds']:.1f}s)"
            elif rec["status"] == "skipped":
                line = f"skipped {name} (already summarized)"
            else:
                reason = rec["error"] if rec["error"].startswith(name) else f"{name}: {rec['error']}"
                line = f"note: failed {reason}"
            if progress:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            else:
                typer.echo(line, err=True)

        report = pipeline.summarize_batch(paths, out, force=force, on_file=on_file, progress=progress)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; finished documents are saved, run the same command to resume", 130)
    typer.echo(
        f"summarized {report.summarized}, skipped {report.skipped}, failed {report.failed} "
        f"in {report.seconds:.1f}s -> {out}", err=True,
    )
    if report.failed:
        raise typer.Exit(1)


@app.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
def eval_command(
    data: Path = typer.Argument(..., help="SQuAD-format JSON (e.g. ../shared/eval/zh_mrc/cmrc2018_trial.squad.json), "
                                "or query -> document lines: .jsonl {\"query\", \"document\"} or .tsv query<TAB>document."),
    embedding_model: Optional[str] = EmbOpt,
    retriever: Optional[str] = typer.Option(None, "--retriever", help="vector, bm25 or hybrid."),
    fusion: Optional[str] = FusionOpt,
    compare: Optional[str] = typer.Option(
        None, "--compare",
        help="Several retrievers side by side from one index and one search each, e.g. vector,bm25,hybrid "
        "(hybrid:rrf or a fusion spec alone: hybrid with that fusion).",
    ),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Chunks an answer would use (default 4)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size"),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N questions (with --answers: default 50)."),
    max_contexts: Optional[int] = typer.Option(None, "--max-contexts", help="Only the first N contexts."),
    answers: bool = typer.Option(False, "--answers", help="Also answer the questions with the chain and LLM: EM, F1."),
    seed_baseline: bool = typer.Option(False, "--seed-baseline", help="The seed scripts' retrieval: LangChain default separators, 600/100, k=1, vector."),
    model: Optional[str] = ModelOpt,
    chat_format: Optional[str] = FormatOpt,
    chain: Optional[str] = typer.Option(None, "--chain", help="For --answers: stuff or refine."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Measure retrieval recall@1/3/5/10 and MRR on SQuAD-format or query -> document data; optionally EM/F1 of answers.

    Example: ragqa eval ../shared/eval/zh_mrc/cmrc2018_trial.squad.json --compare vector,bm25,hybrid
    """
    _setup_logging(verbose)
    try:
        from ragqa.config import load_settings
        from ragqa.evaluation import evaluate
        from ragqa.pipeline import Pipeline

        settings = load_settings(
            config, embedding_model=embedding_model, retriever=retriever, fusion=fusion, k=k, chunk_size=chunk_size,
            chunk_overlap=chunk_overlap, model=model, chat_format=chat_format, chain=chain,
            max_new_tokens=max_new_tokens, cache_dir=cache_dir,
        )
        if limit is not None and limit < 1:
            raise ConfigError("--limit must be at least 1")
        if answers and limit is None:
            limit = DEFAULT_ANSWER_SAMPLE
            typer.echo(f"note: --answers runs the LLM per question; evaluating the first {limit} (set --limit)", err=True)
        pipeline = Pipeline(settings)
        if answers:
            pipeline.check_models()
        report = evaluate(data, pipeline, max_contexts=max_contexts, limit=limit, answers=limit if answers else 0,
                          seed_baseline=seed_baseline, progress=sys.stderr.isatty(), compare=compare)
    except RagqaError as exc:
        _fail(str(exc), getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        return
    st = report["settings"]
    if "compare" in report:
        _print_comparison(report)
        return
    typer.echo(f"{report['questions']} questions, {report['contexts']} contexts, {report['chunks']} chunks; "
               f"retriever {st['retriever']}{' (' + st['fusion'] + ')' if 'fusion' in st else ''}, "
               f"embedding {st['embedding_model']}, k {st['k']}")
    typer.echo("  ".join(f"{name} {report[name]:.3f}" for name in report if name.startswith(("recall@", "mrr"))))
    typer.echo("  ".join(f"{name} {report[name]:.3f}" for name in report if name.startswith("answer_in_context@")))
    if "answers" in report:
        a = report["answers"]
        typer.echo(f"answers (n={a['n']}): EM {a['em']:.3f}  F1 {a['f1']:.3f}  contains answer {a['contains_answer']:.3f}")


def _print_comparison(report: dict[str, Any]) -> None:
    """The retrievers of ``eval --compare`` side by side: one column each, one metric a row."""
    st, rows = report["settings"], report["compare"]
    typer.echo(f"{report['questions']} questions, {report['contexts']} contexts, {report['chunks']} chunks; "
               f"embedding {st['embedding_model']}, k {st['k']}")
    for label, row in rows.items():
        if "fusion" in row and label != row["fusion"]:
            typer.echo(f"{label}: fusion {row['fusion']}")
    metrics = [m for m in next(iter(rows.values())) if m.startswith(("recall@", "mrr", "answer_in_context@"))]
    width = max(len(m) for m in metrics)
    cols = [max(len(label), 6) for label in rows]
    typer.echo(" " * width + "".join(f"  {label:>{w}}" for label, w in zip(rows, cols)))
    for m in metrics:
        typer.echo(f"{m:<{width}}" + "".join(f"  {rows[label][m]:>{w}.3f}" for label, w in zip(rows, cols)))


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but localhost is reachable from the network: set --auth."),
    port: int = typer.Option(7860, "--port", "-p", min=1, max=65535, help="Port to listen on (1-65535)."),
    auth: Optional[str] = typer.Option(None, "--auth", envvar="RAGQA_WEB_AUTH", help="USER:PASSWORD required to open the page (env RAGQA_WEB_AUTH)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in a browser."),
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    base_url: Optional[str] = BaseUrlOpt,
    api_model: Optional[str] = ApiModelOpt,
    device: Optional[str] = DeviceOpt,
    torch_dtype: Optional[str] = DtypeOpt,
    load_in_4bit: Optional[bool] = FourBitOpt,
    load_in_8bit: Optional[bool] = EightBitOpt,
    embedding_model: Optional[str] = EmbOpt,
    chat_format: Optional[str] = FormatOpt,
    chain: Optional[str] = typer.Option(None, "--chain", help="Default QA chain: stuff or refine."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Default chunks per question (default 4)."),
    retriever: Optional[str] = typer.Option(None, "--retriever", help="Default retriever: hybrid, vector or bm25."),
    fusion: Optional[str] = FusionOpt,
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context window in tokens (default 4096)."),
    n_threads: Optional[int] = typer.Option(None, "--threads", "-t"),
    n_gpu_layers: Optional[int] = typer.Option(None, "--n-gpu-layers"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default 400."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    max_file_mb: Optional[float] = typer.Option(None, "--max-file-mb", help="Largest upload accepted (default 200)."),
    ocr: Optional[str] = OcrOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Start the web page: upload documents, ask with streaming answers and sources, summarize.

    Models load on the first question, so the page is up in seconds. Requests queue for the model.

    Example: ragqa serve --port 7860   (then open http://127.0.0.1:7860)
    """
    _setup_logging(verbose)
    try:
        from ragqa.config import load_settings
        from ragqa.web import serve as serve_page

        settings = load_settings(
            config, model=model, backend=backend, base_url=base_url, api_model=api_model, device=device,
            torch_dtype=torch_dtype, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
            embedding_model=embedding_model, chat_format=chat_format, chain=chain, k=k,
            retriever=retriever, fusion=fusion, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
            max_new_tokens=max_new_tokens, temperature=temperature, max_file_mb=max_file_mb, ocr=ocr, cache_dir=cache_dir,
            data_dir=data_dir, store=store,
        )
        _check_host(host)
        serve_page(settings, host=host, port=port, auth=auth, open_browser=open_browser)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # the port is taken, the address is not ours
        import errno

        in_use = exc.errno == errno.EADDRINUSE or "empty port" in str(exc)
        reason = "the port is in use (choose another with --port)" if in_use else (exc.strerror or str(exc))
        _fail(f"cannot serve on {host}:{port}: {reason}", 1)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


@app.command("index", context_settings={"help_option_names": ["-h", "--help"]})
def index_command(
    paths: list[str] = typer.Argument(..., metavar="PATH...", help="Files and folders to add."),
    kb: str = typer.Option("default", "--kb", help="Knowledge base to fill (created on first use)."),
    sync: bool = typer.Option(False, "--sync", help="Also remove the KB's files under these folders that are gone from disk."),
    embedding_model: Optional[str] = EmbOpt,
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Characters per chunk (default 600)."),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help="Overlap characters (default 100)."),
    max_file_mb: Optional[float] = MaxFileOpt,
    ocr: Optional[str] = OcrOpt,
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    cache_dir: Optional[Path] = CacheDirOpt,
    config: Optional[Path] = ConfigOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="A line per file."),
) -> None:
    """Add files and folders to a knowledge base; unchanged files are skipped, changed ones re-indexed.

    Exit code 1 if any file could not be read (the others are indexed; the reasons are listed).

    Example: ragqa index contracts/ notes.md --kb contracts
    """
    _setup_logging(verbose)
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        if tty:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            typer.echo(line, err=True)

    def on_file(path: str, status: str, detail: str) -> None:
        if status == "failed":
            say(f"note: skipped {detail}")
        elif verbose or (not tty and status != "unchanged"):
            say(f"{status:9} {path}" + (f" ({detail})" if detail and status != "removed" else ""))

    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(
            config, embedding_model=embedding_model, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            max_file_mb=max_file_mb, ocr=ocr, data_dir=data_dir, store=store, cache_dir=cache_dir,
        )
        from ragqa.loaders import expand_paths

        expand_paths(paths)  # a missing path is refused before the KB is created
        pipeline = Pipeline(settings)
        base = pipeline.open_kb(kb, create=True)
        report = pipeline.index_paths(base, paths, sync=sync, progress=tty, on_file=on_file, on_wait=say)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; the files finished so far are saved, run the same command to finish", 130)
    typer.echo(f"{kb}: {report.line()}", err=True)
    if report.failed:
        raise typer.Exit(1)


kb_app = typer.Typer(no_args_is_help=True, help="List, inspect and change knowledge bases.")
app.add_typer(kb_app, name="kb")


def _kb_settings(data_dir: Optional[Path], store: Optional[str], config: Optional[Path]) -> Any:
    from ragqa.config import load_settings

    return load_settings(config, data_dir=data_dir, store=store)


@kb_app.command("list", context_settings={"help_option_names": ["-h", "--help"]})
def kb_list(
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """Every knowledge base: files, chunks, embedding model, size on disk.

    Example: ragqa kb list
    """
    _setup_logging(False)
    try:
        from ragqa.store import list_kbs

        kbs = list_kbs(_kb_settings(data_dir, store, config))
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        sys.stdout.write(json.dumps([k.to_dict() for k in kbs], ensure_ascii=False, indent=2) + "\n")
        return
    if not kbs:
        typer.echo("no knowledge bases yet (create one with: ragqa index PATH... --kb NAME)", err=True)
        return
    rows = [("name", "files", "failed", "chunks", "embedding", "size")]
    rows += [(k.name, str(k.files), str(k.failed), str(k.chunks), k.embedding,
              _size(k.size_bytes) if k.engine == "local" else "-") for k in kbs]
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)).rstrip())


@kb_app.command("show", context_settings={"help_option_names": ["-h", "--help"]})
def kb_show(
    name: str = typer.Argument(..., help="Knowledge base name."),
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A knowledge base's files with their chunks and status.

    Example: ragqa kb show contracts
    """
    _setup_logging(False)
    try:
        from ragqa.store import open_kb

        kb = open_kb(_kb_settings(data_dir, store, config), name)
        stats, files = kb.stats(), kb.files()
        manifest = kb.manifest
        kb.close()
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    if as_json:
        out = {**stats.to_dict(), "splitter": manifest.splitter, "dimension": manifest.dimension,
               "documents": [f.to_dict() for f in files]}
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        return
    typer.echo(f"{stats.name}: {stats.files} files ({stats.failed} failed), {stats.chunks} chunks, "
               f"{manifest.describe()}, {_size(stats.size_bytes)} at {stats.location}")
    for f in files:
        detail = f"{f.chunks} chunks" if f.status == "ok" else f"failed: {f.error}"
        typer.echo(f"  {f.path}  {detail}")


@kb_app.command("remove", context_settings={"help_option_names": ["-h", "--help"]})
def kb_remove(
    name: str = typer.Argument(..., help="Knowledge base name."),
    paths: list[str] = typer.Argument(..., metavar="PATH...", help="Files (or folders: every file under them) to remove."),
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Remove documents from a knowledge base (the files on disk are not touched).

    Example: ragqa kb remove contracts contracts/old-2019.pdf
    """
    _setup_logging(False)
    try:
        from ragqa.store import open_kb

        kb = open_kb(_kb_settings(data_dir, store, config), name)
        from ragqa.retrieval import TEXT_PREFIX

        texts = {p for p in paths if p.startswith(TEXT_PREFIX)}  # texts added through the LangChain store
        roots = [Path(p).expanduser().resolve() for p in paths if p not in texts]
        with kb.writing(on_wait=lambda m: typer.echo(m, err=True)):
            gone = [r.path for r in kb.files()
                    if r.path in texts or any(Path(r.path) == root or root in Path(r.path).parents for root in roots)]
            n = kb.remove_files(gone)
        kb.close()
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    if not n:
        _fail(f"none of these paths are in knowledge base {name!r} (see: ragqa kb show {name})", 2)
    typer.echo(f"{name}: removed {n} file{'s' if n != 1 else ''}", err=True)


@kb_app.command("drop", context_settings={"help_option_names": ["-h", "--help"]})
def kb_drop(
    name: str = typer.Argument(..., help="Knowledge base name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    data_dir: Optional[Path] = DataDirOpt,
    store: Optional[str] = StoreOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Delete a knowledge base and its index (the files on disk are not touched).

    Example: ragqa kb drop contracts --yes
    """
    _setup_logging(False)
    try:
        from ragqa.store import drop_kb, kb_exists

        settings = _kb_settings(data_dir, store, config)
        if not kb_exists(settings, name):
            _fail(f"no knowledge base named {name!r} (see: ragqa kb list)", 2)
        if not yes:
            if not sys.stdin.isatty():
                _fail(f"dropping {name!r} deletes its index; add --yes to confirm", 2)
            if not typer.confirm(f"delete knowledge base {name!r} and its index?"):
                _fail("not dropped", 1)
        drop_kb(settings, name)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    typer.echo(f"dropped {name}", err=True)


def _check_host(host: str) -> None:
    """A --host that does not resolve is a clear error, not a server start that fails later."""
    import socket

    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r}: not an address or a host name this machine can resolve "
                          f"({getattr(exc, 'strerror', None) or exc})") from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def main() -> None:
    """Run the CLI; usage mistakes (unknown flag, `-k abc`, a missing argument) are one line."""
    try:
        import typer._click.exceptions as click  # typer >= 0.16 vendors click
    except ImportError:  # pragma: no cover - older typer
        import click.exceptions as click  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit instead of raising it
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        sys.exit(0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("ragqa: error: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None and exc.ctx.command_path:
            hint = f" (see: {exc.ctx.command_path} --help)"
        message = " ".join(exc.format_message().split())
        if "No such option: -" in message:
            message += "; a question that starts with '-' goes after `--`"
        typer.echo(f"ragqa: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        typer.echo(f"ragqa: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
