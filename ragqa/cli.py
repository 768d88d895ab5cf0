"""The ``ragqa`` command. A thin shell over ragqa.pipeline: parse flags, print, map errors."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import typer
from typer.core import TyperCommand

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


# --------------------------------------------------------------------------- flags from the Settings fields
#
# A flag that sets a Settings field is generated from the field (name, type, choices, bounds,
# description, default), so its help cannot drift from the settings. Each command names the fields
# it exposes (``@command(app, settings=...)``); its body gets the flags given as one ``overrides``
# dict for load_settings. A command's setting flags are built the first time its params are needed
# (its --help, parsing its arguments), never for `ragqa --help`: they import ragqa.config, hence
# pydantic-settings.

HELP_CONTEXT = {"help_option_names": ["-h", "--help"]}
SETTINGS_PANEL = "Settings (not given: RAGQA_<NAME>, then --config, then the default)"
# Flag names where the generated one (--field-name) is not what users type.
SETTING_FLAGS: dict[str, tuple[str, ...]] = {
    "model": ("--model", "-m"),
    "embedding_model": ("--embedding-model", "-e"),
    "k": ("--k", "-k"),
    "n_threads": ("--threads", "-t"),
    "summary_chain": ("--chain",),
}


def setting_flags(name: str) -> tuple[str, ...]:
    """The flag names of setting ``name``: ``('--n-ctx',)``, ``('--threads', '-t')``."""
    return SETTING_FLAGS.get(name, ("--" + name.replace("_", "-"),))


def _show(value: Any) -> str:
    """A default or a bound as help shows it: 200.0 as 200, a path in the home folder with ~."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path) and Path.home() in value.parents:
        return "~/" + value.relative_to(Path.home()).as_posix()
    return str(value)


def _flag_type(name: str, annotation: Any) -> tuple[type, tuple[str, ...]]:
    """A field's flag type, and the choices of a Literal field: its flag takes a str that Settings
    checks, so a bad choice reads the same from a flag, a variable or the config file."""
    if get_origin(annotation) in (Union, types.UnionType):
        [annotation] = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, tuple(str(c) for c in get_args(annotation))
    if annotation in (str, int, float, bool, Path):
        return annotation, ()
    raise TypeError(f"setting {name!r} has no command-line type ({annotation!r})")


def _range(metadata: list[Any]) -> str:
    """A field's bounds as Typer writes a range: ``1<=x<=100``, ``0<x<=1``, ``x>=0``."""
    bounds = {attr: getattr(m, attr) for m in metadata for attr in ("gt", "ge", "lt", "le")
              if getattr(m, attr, None) is not None}
    low = next(((op, _show(bounds[a])) for a, op in (("gt", ">"), ("ge", ">=")) if a in bounds), None)
    high = next(((op, _show(bounds[a])) for a, op in (("lt", "<"), ("le", "<=")) if a in bounds), None)
    if low and high:
        return f"{low[1]}{low[0].replace('>', '<')}x{high[0]}{high[1]}"
    side = low or high
    return f"x{side[0]}{side[1]}" if side else ""


def setting_help(name: str, note: str = "") -> str:
    """A setting's flag help: the field's description, the command's ``note``, the choices, the
    bounds and the default, e.g. ``Chunks retrieved per question. Range: 1<=x<=100. (default: 4)``."""
    from ragqa.config import Settings

    field = Settings.model_fields[name]
    _, choices = _flag_type(name, field.annotation)
    bounds = _range(field.metadata)
    default = field.get_default(call_default_factory=True)  # a factory's: the XDG folders of ragqa.paths
    parts = [
        field.description or "",
        note,
        f"Choices: {', '.join(choices)}." if choices else "",
        f"Range: {bounds}." if bounds else "",
        f"(default: {_show(default)})" if default is not None else "",
    ]
    return " ".join(p for p in parts if p)


def setting_options(names: Sequence[str], notes: Mapping[str, str] | None = None) -> list[Any]:
    """The click options of these settings. Typer itself builds them, from a signature of
    ``name: T | None = typer.Option(None, *flags)`` parameters, so they parse, convert and fail
    (``Invalid value for '--k' / '-k'``) exactly as hand-written options; None = not given."""
    from ragqa.config import Settings

    params = []
    for name in names:
        kind, _ = _flag_type(name, Settings.model_fields[name].annotation)
        option = typer.Option(None, *setting_flags(name), help=setting_help(name, (notes or {}).get(name, "")),
                              rich_help_panel=SETTINGS_PANEL)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind | None))

    def flags() -> None:
        """Only a signature for Typer to read."""

    flags.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    holder = typer.Typer(add_completion=False)
    holder.command()(flags)
    return list(typer.main.get_command(holder).params)


class SettingsCommand(TyperCommand):
    """A command with generated setting flags (``settings``), added to its params on first use."""

    settings: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[Mapping[str, str]] = {}
    _settings_added = False

    def get_params(self, ctx: typer.Context) -> list[Any]:
        if not self._settings_added:  # once: click tells params apart by identity
            self.params.extend(setting_options(self.settings, self.notes))
            self._settings_added = True
        return super().get_params(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        """Click's invoke, with the callback given its own parameters; it reads ``overrides``."""
        own = {k: v for k, v in ctx.params.items() if k not in self.settings}
        return ctx.invoke(self.callback, **own) if self.callback else None

    def overrides(self, ctx: typer.Context) -> dict[str, Any]:
        """The settings given on the command line; one not given is absent, so env and file apply."""
        return {name: ctx.params[name] for name in self.settings if ctx.params.get(name) is not None}


def command(group: typer.Typer, name: str | None = None, *, settings: Sequence[str],
            notes: Mapping[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as command ``name`` of ``group`` with the flags of
    ``settings``; it takes ``overrides`` (the settings given, by field name) besides its own
    hand-written parameters. ``notes``: a sentence added to a setting's help for this command."""
    if len(set(settings)) != len(settings) or set(notes or {}) - set(settings):
        raise ValueError(f"settings {settings!r} repeat a name, or notes {notes!r} name one not in them")

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func)
        own = [p for p in signature.parameters.values() if p.name != "overrides"]
        if clash := {p.name for p in own} & set(settings):
            raise ValueError(f"{func.__name__}: parameters {sorted(clash)} are also settings")

        @functools.wraps(func)
        def callback(_ctx: typer.Context, **kwargs: Any) -> Any:
            return func(**kwargs, overrides=_ctx.command.overrides(_ctx))  # type: ignore[attr-defined]

        # Typer reads this signature: the hand-written parameters, and the context (Typer passes it in)
        ctx_param = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        callback.__signature__ = signature.replace(parameters=[*own, ctx_param])  # type: ignore[attr-defined]
        cls = type(f"{func.__name__}_command", (SettingsCommand,), {"settings": tuple(settings), "notes": dict(notes or {})})
        group.command(name, cls=cls, context_settings=HELP_CONTEXT)(callback)
        return func

    return register


def __getattr__(name: str) -> Any:
    if name == "FormatOpt":  # the --chat-format option, built on first use, for callers that read its help
        return setting_options(["chat_format"])[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# How untrusted files are parsed (ragqa/isolation.py, ragqa/caps.py), for the commands that ingest
PARSING = ("parse_isolation", "parse_memory_mb", "parse_cpu_seconds", "parse_timeout", "ingest_concurrency",
           "max_unpacked_mb", "max_pages", "max_image_pixels", "max_line_chars")

# The settings of embeddings on a server, for every command that embeds
EMBEDDING_SERVER = ("embedding_base_url", "embedding_query_prefix", "embedding_passage_prefix",
                    "embedding_batch_size", "embedding_concurrency", "embedding_timeout")

# Hand-written options shared by several commands
ConfigOpt = typer.Option(None, "--config", help="TOML file of settings (keys as RAGQA_* without the prefix).")
KbOpt = typer.Option(None, "--kb", help="Knowledge base name (see ragqa kb list).")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr.")
DocOpt = typer.Option(None, "--doc", metavar="PATTERN", help="With --kb: only the documents matching PATTERN "
                      "(a name, a folder, a path, or a glob such as '*2024*' or 'contracts/*.pdf'; repeatable; "
                      "see ragqa kb show NAME).")


@command(app, settings=(
    "model", "backend", "base_url", "api_model", "embedding_model", *EMBEDDING_SERVER, "chat_format", "chain", "context", "k",
    "abstain", "abstain_strictness", "citations", "retriever", "fusion", "keyword_fold", "reranker", "chunk_size", "chunk_overlap", "lang", "system_prompt", "n_ctx", "n_threads",
    "n_gpu_layers", "rope_freq_base", "rope_freq_scale", "device", "torch_dtype", "load_in_4bit", "load_in_8bit",
    "rope_scaling", "max_new_tokens", "temperature", "top_k", "top_p", "repeat_penalty", "seed", "cache_dir",
    "data_dir", "store", "max_file_mb", "ocr",
))
def ask(
    args: list[str] = typer.Argument(..., metavar="[PATH...] QUESTION", help="Files or folders, then the question (with --kb: the question only)."),
    kb: str | None = KbOpt,
    docs: list[str] | None = DocOpt,
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answer, sources, timings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact prompt; load no LLM weights."),
    verbose: bool = VerboseOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Answer QUESTION from the documents at PATH... (or the knowledge base --kb NAME), streaming
    the answer, then its sources.

    Examples: ragqa ask notes.txt reports/ "合同的有效期是多久？"
              ragqa ask --kb contracts "合同的有效期是多久？"
              ragqa ask --kb contracts --doc '*2024*' "2024 年的合同对交付有什么规定？"
    """
    _setup_logging(verbose)
    if docs and kb is None:
        _fail("--doc picks documents of a knowledge base: use it with --kb NAME", 2)
    if kb is None and len(args) < 2:
        _fail("give at least one PATH and then the QUESTION (ragqa ask FILE \"question\"), or --kb NAME", 2)
    if kb is not None and len(args) != 1:
        _fail("with --kb give only the QUESTION (ragqa ask --kb NAME \"question\")", 2)
    *paths, question = args
    if not question.strip():
        _fail("the question is empty", 2)
    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(config, **overrides)
        pipeline = Pipeline(settings)
        streamed = not as_json and not dry_run

        def on_token(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        answer = pipeline.ask(paths, question, on_token=on_token if streamed else None, dry_run=dry_run, kb=kb,
                              documents=docs)
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)

    if streamed:
        sys.stdout.write("\n")  # the streamed answer's line ends before any note (stderr) is printed
        sys.stdout.flush()
    for note in answer.notes:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        sys.stdout.write(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    if dry_run:
        sys.stdout.write(answer.prompts[0] + "\n")
        _print_sources(answer, err=True)
        return
    _print_sources(answer, err=False)
    _print_timings(answer.timings)


def _print_sources(answer: Any, err: bool) -> None:
    """Each source with the sentences of it the answer cites ("cited @120-168: ..."), then the
    answer sentences no source supports."""
    if not answer.sources:
        return
    typer.echo("\nSources:", err=err)
    cited: dict[int, list[dict[str, Any]]] = {}
    for c in answer.citations or []:
        cited.setdefault(c["n"], []).append(c)
    for i, s in enumerate(answer.sources, 1):
        typer.echo(f"  [{i}] {s.location()}  (score {s.score:.3f})  {_snippet(s.text)}", err=err)
        seen = set()
        for c in cited.get(i, []):
            if (c["start"], c["end"]) not in seen:
                seen.add((c["start"], c["end"]))
                typer.echo(f"      cited @{c['start']}-{c['end']}: \u201c{_snippet(c['quote'], 200)}\u201d", err=err)
    if answer.unsupported:
        from ragqa.citations import answer_sentences

        sentences = answer_sentences(answer.answer)
        for i in answer.unsupported:
            if i < len(sentences):
                typer.echo(f"  ! not supported by the sources: \u201c{_snippet(sentences[i], 200)}\u201d", err=err)


def _print_timings(t: dict[str, Any]) -> None:
    parts = [f"index {t.get('index_s', 0):.2f}s ({t.get('files_cached', 0)}/{t.get('files', 0)} cached)"]
    if "answer_s" in t:
        parts.append(f"answer {t['answer_s']:.2f}s")
    if t.get("decode_tokens_per_s"):
        parts.append(f"{t['decode_tokens_per_s']:.1f} tok/s")
    typer.echo("[" + ", ".join(parts) + "]", err=True)


@command(app, settings=(
    "summary_chain", "lang", "model", "backend", "base_url", "api_model", "device", "torch_dtype", "load_in_4bit",
    "load_in_8bit", "rope_scaling", "chat_format", "system_prompt", "n_ctx", "n_threads", "n_gpu_layers",
    "max_new_tokens", "temperature", "max_file_mb", "ocr", "data_dir", "store",
))
def summarize(
    paths: list[str] | None = typer.Argument(None, metavar="[PATH...]", help="Files, folders or glob patterns (or --kb)."),
    kb: str | None = typer.Option(None, "--kb", help="Summarize the documents of this knowledge base."),
    docs: list[str] | None = DocOpt,
    out: Path = typer.Option(..., "--out", "-o", help="OUT.jsonl (one JSON object per document) or a folder (Markdown + index.md)."),
    force: bool = typer.Option(False, "--force", help="Redo documents already summarized with the same settings."),
    parallel: int = typer.Option(1, "--parallel", "-j", min=1, max=64, help="Documents in flight at once (1-64; "
                                 "for a server backend, which batches them; an in-process model runs one at a time)."),
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Summarize every document at PATH... (or in --kb NAME) into OUT, one result per document as soon as it is done.

    Running the same command again skips documents already summarized with the same content and
    settings, so an interrupted batch resumes. Exit code 1 if any document failed.

    Examples: ragqa summarize reports/ "notes/*.txt" --out summaries.jsonl
              ragqa summarize --kb contracts --doc '*2024*' --out contract-summaries/
    """
    _setup_logging(verbose)
    if bool(paths) == bool(kb):
        _fail("give the documents as PATH... or as --kb NAME (one of the two)", 2)
    if docs and kb is None:
        _fail("--doc picks documents of a knowledge base: use it with --kb NAME", 2)
    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(config, **overrides)
        pipeline = Pipeline(settings)
        progress = sys.stderr.isatty()
        if kb is not None:
            paths = pipeline.kb_paths(kb, docs)

        def on_file(rec: dict) -> None:
            name = _one_row(rec["source"])
            if rec["status"] == "ok":
                line = f"ok      {name} ({rec['chain']}, {rec['chunks']} chunk{'s' if rec['chunks'] != 1 else ''}, {rec['seconds']:.1f}s)"
            elif rec["status"] == "skipped":
                line = f"skipped {name} (already summarized)"
            else:
                error = _one_row(rec["error"])
                reason = error if error.startswith(name) else f"{name}: {error}"
                line = f"note: failed {reason}"
            if progress:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            else:
                typer.echo(line, err=True)

        if parallel > 1 and pipeline.backend_name != "openai":
            typer.echo(f"note: --parallel {parallel}: the {pipeline.backend_name} model in this process generates one "
                       "answer at a time; documents still go one after another (a server backend batches them)",
                       err=True)
        report = pipeline.summarize_batch(paths, out, force=force, on_file=on_file, progress=progress,
                                          parallel=parallel, missing_ok=kb is not None)
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


@command(app, "eval", settings=(
    "embedding_model", *EMBEDDING_SERVER, "retriever", "fusion", "keyword_fold", "k", "chunk_size", "chunk_overlap", "model", "chat_format", "chain",
    "context", "max_new_tokens", "cache_dir", "abstain", "abstain_strictness",
), notes={"k": "eval: the chunks an answer would use.", "chain": "eval: for --answers.",
          "context": "eval: measured as answer_in_prompt and context_tokens."})
def eval_command(
    data: Path = typer.Argument(..., help="SQuAD-format JSON (e.g. ../shared/eval/zh_mrc/cmrc2018_trial.squad.json), "
                                "or query -> document lines: .jsonl {\"query\", \"document\"} or .tsv query<TAB>document."),
    compare: str | None = typer.Option(
        None, "--compare",
        help="Several retrievers side by side from one index and one search each, e.g. vector,bm25,hybrid "
        "(hybrid:rrf or a fusion spec alone: hybrid with that fusion).",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N questions (with --answers: default 50)."),
    max_contexts: int | None = typer.Option(None, "--max-contexts", help="Only the first N contexts."),
    answers: bool = typer.Option(False, "--answers", help="Also answer the questions with the chain and LLM: EM, F1."),
    seed_baseline: bool = typer.Option(False, "--seed-baseline", help="The seed scripts' retrieval: LangChain default separators, 600/100, k=1, vector."),
    scoped: bool = typer.Option(False, "--scoped", help="Search each question only within its own document (SQuAD: its "
                                "article), as ask --kb --doc does for a user who names the document."),
    distractors: Path | None = typer.Option(
        None, "--distractors", metavar="OTHER",
        help="Questions the data cannot answer (SQuAD-format or query file): reports how many ragqa abstains on "
        "(abstain.recall) beside the share of the data's own questions it keeps (abstain.answerable_kept)."),
    fail_below: str | None = typer.Option(
        None, "--fail-below", metavar="METRIC=VALUE,...",
        help="Exit 1 when a metric is below its value, e.g. recall@5=0.9,abstain.recall=0.8,answers.f1=0.3 "
        "(names as in --json; nested ones with a dot)."),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = VerboseOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Measure retrieval recall@1/3/5/10 and MRR on SQuAD-format or query -> document data; optionally EM/F1 of answers.

    Example: ragqa eval ../shared/eval/zh_mrc/cmrc2018_trial.squad.json --compare vector,bm25,hybrid
    """
    _setup_logging(verbose)
    try:
        from ragqa.config import load_settings
        from ragqa.evaluation import evaluate
        from ragqa.pipeline import Pipeline

        settings = load_settings(config, **overrides)
        gates = parse_fail_below(fail_below) if fail_below else []
        if distractors is not None and settings.abstain == "off":
            raise ConfigError("--distractors measures abstention: drop --abstain off")
        if limit is not None and limit < 1:
            raise ConfigError("--limit must be at least 1")
        if answers and limit is None:
            limit = DEFAULT_ANSWER_SAMPLE
            typer.echo(f"note: --answers runs the LLM per question; evaluating the first {limit} (set --limit)", err=True)
        pipeline = Pipeline(settings)
        if answers:
            pipeline.check_models()
        report = evaluate(data, pipeline, max_contexts=max_contexts, limit=limit, answers=limit if answers else 0,
                          seed_baseline=seed_baseline, progress=sys.stderr.isatty(), compare=compare, scoped=scoped,
                          distractors=distractors)
        failed = check_fail_below(report, gates)
    except RagqaError as exc:
        _fail(str(exc), getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    elif "compare" in report:
        _print_comparison(report)
    else:
        _print_eval(report)
    if failed:
        _fail("below the bar: " + ", ".join(failed), 1)


def parse_fail_below(text: str) -> list[tuple[str, float]]:
    """``recall@5=0.9,answers.f1=0.3`` -> [(metric, value)]; a malformed item is a ConfigError.

    >>> parse_fail_below("recall@5=0.9, abstain.recall=0.8")
    [('recall@5', 0.9), ('abstain.recall', 0.8)]
    """
    gates = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not eq or not name.strip() or math.isnan(number):
            raise ConfigError(f"--fail-below: {item!r} is not METRIC=VALUE (e.g. recall@5=0.9,answers.f1=0.3)")
        gates.append((name.strip(), number))
    if not gates:
        raise ConfigError("--fail-below needs METRIC=VALUE pairs, e.g. recall@5=0.9")
    return gates


def check_fail_below(report: dict[str, Any], gates: Sequence[tuple[str, float]]) -> list[str]:
    """The gates a report fails, as "metric value < bar"; a metric the report lacks is a ConfigError
    naming those it has (a typo must not pass a CI gate).

    >>> check_fail_below({"mrr": 0.5, "answers": {"f1": 0.4}}, [("mrr", 0.6), ("answers.f1", 0.3)])
    ['mrr 0.500 < 0.6']
    """
    failed = []
    for name, bar in gates:
        value: Any = report
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            have = sorted(_metric_names(report))
            raise ConfigError(f"--fail-below: no metric {name!r} in this report; it has: {', '.join(have)}")
        if value < bar:
            failed.append(f"{name} {value:.3f} < {bar:g}")
    return failed


def _metric_names(report: dict[str, Any], prefix: str = "") -> list[str]:
    names = []
    for key, value in report.items():
        if key in ("settings", "seconds", "samples", "compare", "calibration"):
            continue
        if isinstance(value, dict):
            names += _metric_names(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            names.append(prefix + key)
    return names


def _print_eval(report: dict[str, Any]) -> None:
    st = report["settings"]
    typer.echo(f"{report['questions']} questions, {report['contexts']} contexts, {report['chunks']} chunks; "
               f"retriever {st['retriever']}{' (' + st['fusion'] + ')' if 'fusion' in st else ''}, "
               f"embedding {st['embedding_model']}, k {st['k']}"
               f"{'; each question scoped to its own document' if st.get('scoped') else ''}")
    typer.echo("  ".join(f"{name} {report[name]:.3f}" for name in report if name.startswith(("recall@", "mrr"))))
    typer.echo("  ".join(f"{name} {report[name]:.3f}" for name in report if name.startswith("answer_in_context@")))
    typer.echo(f"context ({report['settings']['context']}): {report['context_tokens']:.0f} tokens per question (estimated)"
               + (f", answer in prompt {report['answer_in_prompt']:.3f}" if "answer_in_prompt" in report else ""))
    ab = report.get("abstain", {})
    if "answerable_kept" in ab:
        typer.echo(f"abstain (strictness {ab['strictness']:g}): answerable kept {ab['answerable_kept']:.3f}"
                   + (f", distractors abstained {ab['recall']:.3f} of {ab['distractors']}, precision "
                      f"{ab['precision']:.3f}" if "recall" in ab else ""))
    if "answers" in report:
        a = report["answers"]
        typer.echo(f"answers (n={a['n']}): EM {a['em']:.3f}  F1 {a['f1']:.3f}  contains answer {a['contains_answer']:.3f}"
                   + (f"  prompt {a['prompt_tokens']:.0f} tokens, first token after {a['ttft_s']:.2f} s"
                      if "ttft_s" in a else "")
                   + (f"  ({a['abstained']} abstained)" if a.get("abstained") else ""))


def _print_comparison(report: dict[str, Any]) -> None:
    """The retrievers of ``eval --compare`` side by side: one column each, one metric a row."""
    st, rows = report["settings"], report["compare"]
    typer.echo(f"{report['questions']} questions, {report['contexts']} contexts, {report['chunks']} chunks; "
               f"embedding {st['embedding_model']}, k {st['k']}"
               f"{'; each question scoped to its own document' if st.get('scoped') else ''}")
    for label, row in rows.items():
        if "fusion" in row and label != row["fusion"]:
            typer.echo(f"{label}: fusion {row['fusion']}")
    metrics = [m for m in next(iter(rows.values()))
               if m.startswith(("recall@", "mrr", "answer_in_context@", "answer_in_prompt", "context_tokens"))]
    width = max(len(m) for m in metrics)
    cols = [max(len(label), 6) for label in rows]
    typer.echo(" " * width + "".join(f"  {label:>{w}}" for label, w in zip(rows, cols)))
    for m in metrics:
        form = ".0f" if m == "context_tokens" else ".3f"
        typer.echo(f"{m:<{width}}" + "".join(f"  {rows[label][m]:>{w}{form}}" for label, w in zip(rows, cols)))


@command(app, settings=(
    "model", "backend", "base_url", "api_model", "device", "torch_dtype", "load_in_4bit", "load_in_8bit",
    "embedding_model", *EMBEDDING_SERVER, "chat_format", "chain", "context", "k", "retriever", "fusion", "keyword_fold", "n_ctx",
    "abstain", "abstain_strictness", "citations",
    "n_threads", "n_gpu_layers", "max_new_tokens", "temperature", "max_file_mb", "ocr", "cache_dir", "data_dir", "store",
    "max_concurrency", "max_queue", "max_question_chars", "max_messages", "api_keys", "request_timeout",
    "first_token_timeout", *PARSING,
), notes={"chain": "serve: the page's default.", "k": "serve: the page's default.",
          "retriever": "serve: the page's default.", "max_file_mb": "serve: also the largest upload accepted."})
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but localhost is reachable from the network: it needs --api-keys (or --auth, or --allow-open)."),
    port: int = typer.Option(7860, "--port", "-p", min=1, max=65535, help="Port to listen on (1-65535)."),
    auth: str | None = typer.Option(None, "--auth", envvar="RAGQA_WEB_AUTH", help="USER:PASSWORD (several separated by commas): a simple gate for the page and the API, each user with every right (env RAGQA_WEB_AUTH). For per-KB rights use --api-keys."),
    allow_open: bool = typer.Option(False, "--allow-open", help="Serve beyond localhost with no keys and no --auth: anyone who can reach the port may read and change every knowledge base."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in a browser."),
    no_page: bool = typer.Option(False, "--no-page", help="Serve the HTTP API (/v1) alone, without the web page."),
    watch: list[str] | None = typer.Option(None, "--watch", metavar="DIR:KB", help="Keep knowledge base KB in step with folder DIR while serving, as ragqa index DIR --kb KB --watch does. Repeatable."),
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Start the web page (/) and the OpenAI-compatible HTTP API (/v1) on one host and port.

    Models load on the first question, so the server is up in seconds. Questions generate
    max_concurrency at once; more wait (max_queue), past that the API answers 429.

    Examples: ragqa serve --port 7860   (then open http://127.0.0.1:7860, or use http://127.0.0.1:7860/v1)
              ragqa serve --host 0.0.0.0 --api-keys keys.toml   (the page signs in with a key's name and token)
              ragqa serve --watch ~/notes:notes   (the notes KB follows ~/notes while the server runs)
    """
    _setup_logging(verbose)
    try:
        from ragqa.config import load_settings
        from ragqa.web import serve as serve_page

        settings = load_settings(config, **overrides)
        _check_host(host)
        followed: list[tuple[str, str]] = []
        if watch:
            from ragqa.watch import parse_watch_spec

            followed = [parse_watch_spec(spec) for spec in watch]  # a missing folder fails before the server starts
        serve_page(settings, host=host, port=port, auth=auth, allow_open=allow_open, open_browser=open_browser,
                   page=not no_page,
                   watch=followed, on_file=lambda *change: typer.echo(_file_line(*change), err=True),
                   on_note=lambda line: typer.echo(f"note: {line}", err=True))
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:  # a folder or file the server needs (the address itself is checked in ragqa.web)
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"cannot serve: {exc.strerror or exc}{where}", 1)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


@command(app, "index", settings=(
    "embedding_model", *EMBEDDING_SERVER, "chunk_size", "chunk_overlap", "keyword_fold", "max_file_mb", "ocr", "data_dir", "store", "cache_dir",
    *PARSING,
))
def index_command(
    paths: list[str] = typer.Argument(..., metavar="PATH...", help="Files and folders to add."),
    kb: str = typer.Option("default", "--kb", help="Knowledge base to fill (created on first use)."),
    sync: bool = typer.Option(False, "--sync", help="Also remove the KB's files under these folders that are gone from disk."),
    watch: bool = typer.Option(False, "--watch", help="Then keep following these folders: a new, changed, renamed or deleted file is in the KB seconds later (implies --sync). Ctrl+C or SIGTERM stops."),
    config: Path | None = ConfigOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="A line per file."),
    *,
    overrides: dict[str, Any],
) -> None:
    """Add files and folders to a knowledge base; unchanged files are skipped, changed ones re-indexed.

    Exit code 1 if any file could not be read (the others are indexed; the reasons are listed).
    With --watch it stays, a line per change, until stopped (exit code 0).

    Examples: ragqa index contracts/ notes.md --kb contracts
              ragqa index ~/notes --kb notes --watch
    """
    _setup_logging(verbose)
    tty = sys.stderr.isatty()

    def say(line: str) -> None:
        if tty:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            typer.echo(line, err=True)

    watching = [False]  # past --watch's first sync: every change is a line, on a terminal too

    def on_file(path: str, status: str, detail: str) -> None:
        if status == "failed" or verbose or ((watching[0] or not tty) and status != "unchanged"):
            say(_file_line(path, status, detail))

    try:
        from ragqa.config import load_settings
        from ragqa.pipeline import Pipeline

        settings = load_settings(config, **overrides)
        if watch:
            _follow(Pipeline(settings), kb, paths, on_file, say, tty, watching)
            return
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


def _file_line(path: str, status: str, detail: str) -> str:
    """One file's line of ``index`` (and of a watch): ``added     /docs/a.md (3 chunks)``; a failure a note."""
    if status == "failed":
        return f"note: skipped {_one_row(detail)}"
    return f"{status:9} {_one_row(path)}" + (f" ({detail})" if detail and status != "removed" else "")


def _follow(pipeline: Any, kb: str, paths: list[str], on_file: Callable[[str, str, str], None],
            say: Callable[[str], None], progress: bool, watching: list[bool]) -> None:
    """``index --watch``: sync the folders into ``kb``, then follow them until Ctrl+C or SIGTERM
    (both end it cleanly: it is how a watch ends; a file cut off mid-way is read by the next run)."""
    import signal

    from ragqa.watch import FolderWatcher

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop: as Ctrl+C

    def ready(report: Any) -> None:
        n = len(watcher.roots)
        say(f"{kb}: {report.line()}")
        say(f"watching {n} folder{'s' if n != 1 else ''} for changes (Ctrl+C to stop)")
        watching[0] = True

    watcher = FolderWatcher(pipeline, kb, paths, on_file=on_file, on_note=lambda line: say(f"note: {line}"),
                            on_ready=ready, progress=progress)
    try:
        watcher.run()
    except KeyboardInterrupt:
        say(f"{kb}: stopped watching" + ("" if watching[0] else "; what was indexed is saved, the next run catches up"))


kb_app = typer.Typer(no_args_is_help=True, help="List, inspect and change knowledge bases.")
app.add_typer(kb_app, name="kb")


KB_SETTINGS = ("data_dir", "store")


def _kb_pipeline(config: Path | None, overrides: dict[str, Any]) -> Any:
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline

    return Pipeline(load_settings(config, **overrides))


@command(kb_app, "list", settings=KB_SETTINGS)
def kb_list(
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    *,
    overrides: dict[str, Any],
) -> None:
    """Every knowledge base: files, chunks, embedding model, size on disk.

    Example: ragqa kb list
    """
    _setup_logging(False)
    try:
        kbs = _kb_pipeline(config, overrides).list_kbs()
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
              _size(k.size_bytes) if k.engine == "local" else "-") if k.error is None
             else (k.name, "-", "-", "-", "(damaged)", "-") for k in kbs]
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)).rstrip())
    for k in kbs:
        if k.error is not None:
            typer.echo(f"note: {k.name}: {k.error} (delete it with: ragqa kb drop {k.name} --yes)", err=True)


@command(kb_app, "show", settings=KB_SETTINGS)
def kb_show(
    name: str = typer.Argument(..., help="Knowledge base name."),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    *,
    overrides: dict[str, Any],
) -> None:
    """A knowledge base's files with their chunks and status.

    Example: ragqa kb show contracts
    """
    _setup_logging(False)
    try:
        stats, manifest, files = _kb_pipeline(config, overrides).kb_details(name)
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


@command(kb_app, "remove", settings=KB_SETTINGS)
def kb_remove(
    name: str = typer.Argument(..., help="Knowledge base name."),
    paths: list[str] = typer.Argument(..., metavar="PATH...", help="Files (or folders: every file under them) to remove."),
    config: Path | None = ConfigOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Remove documents from a knowledge base (the files on disk are not touched).

    Example: ragqa kb remove contracts contracts/old-2019.pdf
    """
    _setup_logging(False)
    try:
        n = _kb_pipeline(config, overrides).remove_from_kb(name, paths, on_wait=lambda m: typer.echo(m, err=True))
    except RagqaError as exc:
        _fail(str(exc), exc.exit_code)
    if not n:
        _fail(f"none of these paths are in knowledge base {name!r} (see: ragqa kb show {name})", 2)
    typer.echo(f"{name}: removed {n} file{'s' if n != 1 else ''}", err=True)


@command(kb_app, "drop", settings=KB_SETTINGS)
def kb_drop(
    name: str = typer.Argument(..., help="Knowledge base name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    config: Path | None = ConfigOpt,
    *,
    overrides: dict[str, Any],
) -> None:
    """Delete a knowledge base and its index (the files on disk are not touched).

    Example: ragqa kb drop contracts --yes
    """
    _setup_logging(False)
    try:
        pipeline = _kb_pipeline(config, overrides)
        if not pipeline.kb_exists(name):
            _fail(f"no knowledge base named {name!r} (see: ragqa kb list)", 2)
        if not yes:
            if not sys.stdin.isatty():
                _fail(f"dropping {name!r} deletes its index; add --yes to confirm", 2)
            if not typer.confirm(f"delete knowledge base {name!r} and its index?"):
                _fail("not dropped", 1)
        pipeline.drop_kb(name)
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


def _one_row(text: str) -> str:
    r"""A file name (or a message naming one) on one line: a newline in a name would split a
    per-file line in two.

    >>> _one_row("a\nb.txt")
    'a\\nb.txt'
    """
    return text.replace("\r", "\\r").replace("\n", "\\n")


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


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run the CLI (``args``: default sys.argv); usage mistakes (unknown flag, `-k abc`, a missing
    argument) are one line."""
    try:
        import typer._click.exceptions as click  # typer >= 0.16 vendors click
    except ImportError:  # pragma: no cover - older typer
        import click.exceptions as click  # type: ignore[no-redef]

    try:
        code = app(args, prog_name=prog_name, standalone_mode=False)  # a typer.Exit's code, not raised
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
    except OSError as exc:  # standard output that cannot be written: a full disk, a closed pipe
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        _unwritable_stdout(exc)
    try:
        sys.stdout.flush()
    except OSError as exc:
        _unwritable_stdout(exc)
    sys.exit(code if isinstance(code, int) else 0)


_OUTPUT_ERRNOS = (5, 28, 32)  # EIO, ENOSPC, EPIPE


def _unwritable_stdout(exc: OSError) -> None:
    """One line on stderr, exit 1, and no second complaint when Python flushes stdout at exit."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.stderr.write(f"ragqa: error: cannot write the output: {exc.strerror or exc}\n")
    sys.exit(1 if getattr(exc, "errno", None) != 32 else 141)  # 141: a closed pipe, as shells report it


if __name__ == "__main__":
    main()
