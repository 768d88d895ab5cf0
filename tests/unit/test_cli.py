"""The ragqa command, run as a real subprocess.

Errors must be one line on stderr ("ragqa: error: ..."), a non-zero exit and no traceback.
Runs that get past indexing use a launcher that swaps in a fake embedding model (and, where a
run must answer, a fake LLM backend), so no model is ever loaded.

Each subprocess takes about a second (imports), so all of them start together once per module
(``runs``) and each test checks its own result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLE_FORMAT = HERE.parents[1] / "prompts" / "formats" / "example-vicuna.toml"

# Same entry point as the `ragqa` script (ragqa.cli.main), with fakes patched in first.
LAUNCHER = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import ragqa.embeddings
from conftest import CountingEmbeddings
ragqa.embeddings.make_embeddings = lambda *a, **k: CountingEmbeddings()
if "--fake-llm" in sys.argv:
    sys.argv.remove("--fake-llm")
    import ragqa.llms
    from conftest import FakeBackend
    ragqa.llms.load_backend = lambda settings, **k: FakeBackend(["熊猫 主要 吃 竹子。"])
from ragqa.cli import main
sys.argv = ["ragqa", *sys.argv[1:]]
main()
"""

TEXT = "熊猫是中国特有的动物。熊猫的主要食物是竹子，每天要吃十几个小时！成都有熊猫基地。"
Q = "熊猫吃什么？"


@dataclass
class Files:
    root: Path
    doc: Path
    missing: Path
    empty: Path
    binary: Path
    sheet: Path
    text_model: Path
    bad_format: Path


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    cache_dir: Path

    @property
    def index_entries(self) -> list[str]:
        from conftest import indexed_files

        return indexed_files(self.cache_dir)


def _scenarios(f: Files) -> dict[str, tuple[list[str], bool]]:
    """name -> (arguments after `ragqa`, use the fake-model launcher). Cache: <root>/cache-<name>."""
    return {
        "missing_file": (["ask", str(f.missing), Q], False),
        "empty_file": (["ask", str(f.empty), Q], False),
        "binary_file": (["ask", str(f.binary), Q], False),
        "unsupported": (["ask", str(f.sheet), Q], False),
        "empty_question": (["ask", str(f.doc), ""], False),
        "blank_question": (["ask", str(f.doc), "   "], False),
        "no_question": (["ask", str(f.doc)], False),
        "bad_settings": (["ask", str(f.doc), Q, "--chunk-size", "100", "--chunk-overlap", "100"], False),
        "missing_config": (["ask", str(f.doc), Q, "--config", str(f.root / "nope.toml")], False),
        "bad_embedding": (["ask", str(f.doc), Q, "--embedding-model", "not a model!"], False),
        "model_missing": (["ask", str(f.doc), Q, "--model", "/nonexistent.gguf"], True),
        "model_text_file": (["ask", str(f.doc), Q, "--model", str(f.text_model)], True),
        "answer": (["ask", str(f.doc), Q, "--fake-llm"], True),
        "json": (["ask", str(f.doc), Q, "--json", "--k", "2", "--fake-llm"], True),
        "dry_run": (["ask", str(f.doc), Q, "--dry-run", "--chat-format", "alpaca-2", "--fake-llm"], True),
        "format_file": (["ask", str(f.doc), Q, "--dry-run", "--chat-format", str(EXAMPLE_FORMAT), "--fake-llm"], True),
        "bad_format_file": (["ask", str(f.doc), Q, "--chat-format", str(f.bad_format), "--fake-llm"], True),
        "cache_is_file": (["ask", str(f.doc), Q, "--cache-dir", str(f.doc), "--fake-llm"], True),
        "serve_bad_auth": (["serve", "--auth", "nocolon", "--port", "1"], False),
        "serve_missing_model": (["serve", "--model", "/nonexistent.gguf", "--port", "1"], False),
        "help": (["--help"], False),
        "ask_help": (["ask", "--help"], False),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("cli")
    f = Files(
        root=root, doc=root / "panda.txt", missing=root / "nope.txt", empty=root / "empty.txt",
        binary=root / "blob.txt", sheet=root / "slides.key", text_model=root / "model.gguf",
        bad_format=root / "mine.toml",
    )
    f.bad_format.write_text('user_prefix = "Q: "\nassistant_prefix = 5\n', "utf-8")
    f.doc.write_text(TEXT, "utf-8")
    f.empty.write_bytes(b"")
    f.binary.write_bytes(bytes(range(256)) * 20)
    f.sheet.write_bytes(b"PK\x03\x04 a Keynote deck (not supported)")
    f.text_model.write_text("definitely not weights", "utf-8")
    return f


@pytest.fixture(scope="module")
def runs(files: Files) -> dict[str, Run]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    base_env.update(HF_HUB_OFFLINE="1", COLUMNS="200", XDG_CACHE_HOME=str(files.root / "xdg"))

    def run(name: str, args: list[str], launcher: bool) -> tuple[str, Run]:
        cache_dir = files.root / f"cache-{name}"
        env = {**base_env, "RAGQA_CACHE_DIR": str(cache_dir)}
        cmd = [sys.executable, "-c", LAUNCHER] if launcher else [sys.executable, "-m", "ragqa"]
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120)
        return name, Run(proc, cache_dir)

    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        futures = [pool.submit(run, name, args, launcher) for name, (args, launcher) in _scenarios(files).items()]
        return dict(f.result() for f in futures)


def assert_one_line_error(run: Run, *fragments: str) -> str:
    proc = run.proc
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ragqa: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- input errors


def test_missing_file(runs, files) -> None:
    assert_one_line_error(runs["missing_file"], str(files.missing), "no such file")
    assert runs["missing_file"].proc.returncode == 2
    assert runs["missing_file"].index_entries == []


def test_empty_file(runs, files) -> None:
    assert_one_line_error(runs["empty_file"], str(files.empty), "empty")
    assert runs["empty_file"].index_entries == []


def test_binary_file(runs, files) -> None:
    assert_one_line_error(runs["binary_file"], str(files.binary), "binary")
    assert runs["binary_file"].index_entries == []


def test_unsupported_extension(runs, files) -> None:
    assert_one_line_error(runs["unsupported"], str(files.sheet), ".key", ".pdf", ".xlsx", ".png", ".txt")
    assert runs["unsupported"].index_entries == []


@pytest.mark.parametrize("name", ["empty_question", "blank_question"])
def test_empty_question(runs, name) -> None:
    assert_one_line_error(runs[name], "question is empty")
    assert runs[name].proc.returncode == 2
    assert runs[name].index_entries == []


def test_question_missing(runs) -> None:
    assert_one_line_error(runs["no_question"], "QUESTION")
    assert runs["no_question"].index_entries == []


def test_bad_settings_are_one_line(runs) -> None:
    assert_one_line_error(runs["bad_settings"], "chunk_overlap")
    assert runs["bad_settings"].index_entries == []


def test_missing_config_file(runs) -> None:
    assert_one_line_error(runs["missing_config"], "nope.toml")
    assert runs["missing_config"].index_entries == []


def test_unknown_embedding_model(runs) -> None:
    assert_one_line_error(runs["bad_embedding"], "not a model!")
    assert runs["bad_embedding"].proc.returncode == 3
    assert runs["bad_embedding"].index_entries == []


# --------------------------------------------------------------------------- model errors (fake embeddings)


def test_nonexistent_model_path(runs) -> None:
    assert_one_line_error(runs["model_missing"], "/nonexistent.gguf", "not found")
    assert runs["model_missing"].proc.returncode == 3


def test_model_path_is_a_text_file(runs, files) -> None:
    assert_one_line_error(runs["model_text_file"], str(files.text_model), "not a GGUF")
    assert runs["model_text_file"].proc.returncode == 3


def test_unusable_cache_dir(runs, files) -> None:
    assert_one_line_error(runs["cache_is_file"], "cache")


# --------------------------------------------------------------------------- successful runs (fake models)


def test_answer_is_streamed_to_stdout_and_sources_follow(runs, files) -> None:
    run = runs["answer"]
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout.startswith("熊猫 主要 吃 竹子。[1]\n")  # marked after the sentence its source supports
    assert "cited @" in run.proc.stdout and "熊猫的主要食物是竹子" in run.proc.stdout.split("cited @")[1]
    assert "Sources:" in run.proc.stdout and f"[1] {files.doc}" in run.proc.stdout
    assert "(0/1 cached)" in run.proc.stderr
    assert len(run.index_entries) == 1


def test_json_output(runs, files) -> None:
    run = runs["json"]
    assert run.proc.returncode == 0, run.proc.stderr
    data = json.loads(run.proc.stdout)
    assert data["answer"] == "熊猫 主要 吃 竹子。[1]"
    assert 1 <= len(data["sources"]) <= 2
    for s in data["sources"]:
        assert s["source"] == str(files.doc)
        assert TEXT[s["start"]:s["start"] + len(s["text"])] == s["text"]
    assert data["timings"]["files"] == 1


def test_dry_run_prints_the_prompt_and_generates_nothing(runs) -> None:
    run = runs["dry_run"]
    assert run.proc.returncode == 0, run.proc.stderr
    out = run.proc.stdout
    assert out.startswith("[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n")
    assert out.rstrip("\n").endswith(f"问题：{Q} [/INST]")
    assert "熊猫 主要 吃" not in out  # no answer was generated
    assert "Sources:" in run.proc.stderr


def test_chat_format_file_shapes_the_prompt(runs) -> None:
    run = runs["format_file"]
    assert run.proc.returncode == 0, run.proc.stderr
    out = run.proc.stdout
    assert out.startswith("A chat between a curious user and an artificial intelligence assistant. ")
    assert out.rstrip("\n").endswith(f"问题：{Q} ASSISTANT:")


def test_bad_chat_format_file_is_one_line_and_indexes_nothing(runs, files) -> None:
    run = runs["bad_format_file"]
    assert_one_line_error(run, str(files.bad_format), "'assistant_prefix'", "must be a string")
    assert run.index_entries == []


# --------------------------------------------------------------------------- help


def test_help(runs) -> None:
    proc = runs["help"].proc
    assert proc.returncode == 0
    assert "ask" in proc.stdout
    assert proc.stderr == ""


def test_ask_help_lists_the_main_flags(runs) -> None:
    proc = runs["ask_help"].proc
    assert proc.returncode == 0
    for flag in ("--json", "--dry-run", "--model", "--chunk-size", "--chat-format"):
        assert flag in proc.stdout


def test_serve_bad_auth_is_one_line(runs) -> None:
    assert_one_line_error(runs["serve_bad_auth"], "--auth must be USER:PASSWORD")
    assert runs["serve_bad_auth"].proc.returncode == 2


def test_serve_checks_the_model_before_starting_the_page(runs) -> None:
    assert_one_line_error(runs["serve_missing_model"], "/nonexistent.gguf")


def test_source_snippets_keep_a_heading_apart_from_its_paragraph() -> None:
    from ragqa.cli import _snippet

    assert _snippet("# The market\n\nEvery Thursday a cheese\nmarket is held.") == \
        "# The market ↵ Every Thursday a cheese market is held."  # a wrapped line is joined, a paragraph break shown
    assert _snippet("商品: 龙井 | 价格: 320\n\n商品: 普洱 | 价格: 180", n=30) == "商品: 龙井 | 价格: 320 ↵ 商品: 普洱 | 价…"
