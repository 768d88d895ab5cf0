"""Bad input, end to end: one table of cases, each run through the real CLI in a subprocess.

Every row asserts what a user sees: the exit code; no ``Traceback`` anywhere; on stderr exactly
one line, ``ragqa: error: ...`` naming the problem (or, where the run goes on, ``note:`` lines
about the bad input and only the documented progress and summary lines besides); and that the
files the row lists (plus every corpus path named on the command line) are byte-identical
afterwards, so nothing is half-written or lost.

All rows share one read-only corpus; each gets its own cache and data folders (``RAGQA_CACHE_DIR``,
``RAGQA_DATA_DIR``), ``HF_HUB_OFFLINE=1`` and no other ``RAGQA_*`` variable. The rows run two at
a time in a module fixture (the machine has 2 cores); the test then checks each one's outcome.
A row that fails because ragqa is wrong is marked ``xfail(strict=True)`` with what it does now.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SEGFAULT = (-11, 139)  # SIGSEGV, as subprocess reports it / as a shell reports it
GENERATION_SKIP = (
    "llama-cpp-python segfaulted on the first generated token (return code {rc}): the AMX build "
    "problem; `make setup` rebuilds it"
)
RUN_TIMEOUT_S = 240.0
SERVE_TIMEOUT_S = 90.0  # a serve row that does not fail would block: stop it then
KILL_WAIT_S = 180.0

# -- the shared corpus ---------------------------------------------------------------------------

GOOD = "# Herons\n\nThe heron festival is held in March every year. It celebrates the return of the herons.\n"
GBK_TEXT = "开茶节在每年三月的第二个周末举行，庆祝新茶的收获。"
BIG5_TEXT = "開茶節在每年三月的第二個週末舉行，慶祝新茶的收穫。"
UTF16_TEXT = "The tea festival is held in March. 开茶节在三月举行。"
CP1252_TEXT = "Le festival a lieu en mars. Déjà vu, “encore”. Größe über alles."
UNSURE = "日本語の文章です。".encode("euc-jp")  # as valid Big5 as EUC-JP: loaders.decode_text refuses to guess
MANY_FILES = 30
SUM_FILES = 3
WORDS = "river heron bridge market festival lantern ferry harbour tea mountain garden village clock tower".split()


def make_corpus(root: Path) -> Path:
    """The input files every row reads (none of them is ever written)."""
    root.mkdir(parents=True)
    (root / "good.md").write_text(GOOD, encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "program.exe").write_bytes(b"MZ\x90\x00\x03\x00\x00\x00")
    (root / "gbk.txt").write_bytes(GBK_TEXT.encode("gbk"))
    (root / "big5.txt").write_bytes(BIG5_TEXT.encode("big5"))
    (root / "utf16.txt").write_bytes(UTF16_TEXT.encode("utf-16"))  # with its BOM
    (root / "cp1252.txt").write_bytes(CP1252_TEXT.encode("cp1252"))
    (root / "unsure.txt").write_bytes(UNSURE)
    (root / "huge.txt").write_bytes(b"The festival is in March. " * 100_000)  # 2.6 MB
    (root / "not-gguf.gguf").write_bytes(b"this is not a GGUF model file\n" * 10)
    (root / "format-bad-type.toml").write_text('user_prefix = 5\nassistant_prefix = " ASSISTANT:"\n', encoding="utf-8")
    (root / "format-bad-syntax.toml").write_text('user_prefix = "USER: \nassistant_prefix =\n', encoding="utf-8")
    (root / "config-bad.toml").write_text("k = \nmodel = [\n", encoding="utf-8")
    (root / "squad-not.json").write_text('{"data": 5}\n', encoding="utf-8")
    (root / "keys-no-token.toml").write_text('[[key]]\nread = ["notes"]\n', encoding="utf-8")
    (root / "lone.json").write_text('{"note": "\\ud800 alone", "festival": "March"}', encoding="utf-8")
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    nosupp = root / "no-supported"
    nosupp.mkdir()
    (nosupp / "setup.exe").write_bytes(b"MZ")
    (nosupp / "slides.key").write_bytes(b"PK\x03\x04 a Keynote deck")
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "a.md").write_text(GOOD, encoding="utf-8")
    (mixed / "b.md").write_text(GOOD.replace("March", "April"), encoding="utf-8")
    (mixed / "c.txt").write_bytes(bytes(range(256)) * 8)
    (mixed / "d.txt").write_bytes(b"")
    unreadable = root / "unreadable"
    unreadable.mkdir()
    (unreadable / "c.txt").write_bytes(bytes(range(256)) * 8)
    (unreadable / "d.txt").write_bytes(b"")
    many = root / "many"
    many.mkdir()
    for i in range(MANY_FILES):  # distinct texts: the same bytes twice would be copied, not embedded
        words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(10))
        (many / f"note{i:02d}.md").write_text(f"Note {i}: {words}.\n", encoding="utf-8")
    _office_corpus(root)
    sumdocs = root / "sumdocs"
    sumdocs.mkdir()
    for i in range(SUM_FILES):
        (sumdocs / f"doc{i}.md").write_text(
            f"The lighthouse number {i} stands on Kestrel Point. It was built in {1870 + i}.\n", encoding="utf-8")
    return root


def _office_corpus(root: Path) -> None:
    """Bad Office files, images and scans (tests/docfixtures.py), alone and in a folder with a good one."""
    import docfixtures as fx
    from msoffcrypto.format.ooxml import OOXMLFile
    from PIL import Image

    deck = fx.pptx_file(root / "deck.pptx", [("Herons", "The heron festival is held in March.")])
    with open(deck, "rb") as src, open(root / "locked.pptx", "wb") as out:
        OOXMLFile(src).encrypt("secret", out)
    deck.unlink()
    (root / "damaged.xlsx").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 50)
    fx.xlsx_file(root / "empty-sheet.xlsx", {"Sheet1": []})
    Image.new("L", (800, 600), 255).save(root / "blank.png")
    pages = [Image.new("L", (400, 560), 255)]
    pages[0].save(root / "scan.pdf", "PDF", resolution=100.0)  # an image-only page (blank: no OCR needed to refuse it)
    office = root / "office"
    office.mkdir()
    (office / "towns.csv").write_text("town,festival\nQuillby,heron festival in March\n", encoding="utf-8")
    (office / "damaged.xlsx").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 50)
    Image.new("L", (800, 600), 255).save(office / "blank.png")


# -- running the CLI -----------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int | None
    stdout: str
    stderr: str
    argv: list[str]

    def describe(self) -> str:
        return f"ragqa {' '.join(self.argv)} -> {self.returncode}\nstderr:\n{self.stderr}stdout:\n{self.stdout[-2000:]}"


def clean_env(cache: Path, data: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAGQA_") and k not in ("OPENAI_API_KEY", "MILVUS_TOKEN")}
    env.update({"RAGQA_CACHE_DIR": str(cache), "RAGQA_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"})
    env.update(extra or {})
    return env


def ragqa_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "ragqa", *argv]


def run_ragqa(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> Run:
    try:
        proc = subprocess.run(ragqa_command(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Run(None, out, err + f"[still running after {timeout:.0f}s: killed by the test]\n", argv)
    return Run(proc.returncode, proc.stdout, proc.stderr, argv)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SkipCase(Exception):
    """Raised by a setup that cannot do its job on this machine (see GENERATION_SKIP)."""


@dataclass
class Ctx:
    """One row's world: the shared corpus (cwd), its own work, cache and data folders."""

    corpus: Path
    work: Path
    cache: Path
    data: Path
    env: dict[str, str]
    port: int = field(default_factory=closed_port)
    held: list[Any] = field(default_factory=list)  # sockets and processes to close after the row
    state: dict[str, Any] = field(default_factory=dict)  # what a setup tells its check

    def fmt(self, text: str) -> str:
        return text.format(corpus=self.corpus, work=self.work, data=self.data, cache=self.cache, port=self.port)

    def ragqa(self, *argv: str, timeout: float = RUN_TIMEOUT_S) -> Run:
        return run_ragqa([self.fmt(a) for a in argv], self.corpus, self.env, timeout)

    def popen(self, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(ragqa_command([self.fmt(a) for a in argv]), cwd=self.corpus, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.held.append(proc)
        return proc

    def close(self) -> None:
        for thing in self.held:
            if isinstance(thing, subprocess.Popen):
                if thing.poll() is None:
                    thing.kill()
                thing.communicate()
            else:
                thing.close()


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input. ``argv`` and ``keep`` may use {corpus} {work} {data} {cache} {port}."""

    id: str
    argv: tuple[str, ...]
    code: int
    fragment: str  # in the one error line; or, when the run goes on, in a note: line ("" = none needed)
    goes_on: bool = False  # the run goes on: bad input is reported as note: lines, no error line
    lines: tuple[str, ...] = ()  # regexes: the other stderr lines (progress, summary) a run that goes on prints
    setup: Callable[[Ctx], None] | None = None
    keep: tuple[str, ...] = ()  # files or folders that must be byte-identical afterwards
    check: Callable[[Ctx, Run], None] | None = None  # more assertions, after the common ones
    env: tuple[tuple[str, str], ...] = ()
    kbs: bool = False  # start from a data folder holding KB 'notes' (good.md) and KB 'empty' (no chunks)
    generates: bool = False  # needs real generation: skipped when llama-cpp-python segfaults
    slow: bool = False  # started first, so two workers finish together
    timeout: float = RUN_TIMEOUT_S
    xfail: str = ""  # why ragqa is wrong here (strict: passing means the fix landed)


ASK_DRY = ("Sources:", r"  \[\d+\] \S.*\(score [\d.]+\)  .*")  # --dry-run prints the sources on stderr
ASK_TIMINGS = r"\[index [\d.]+s \(\d+/\d+ cached\)(, answer [\d.]+s)?(, [\d.]+ tok/s)?\]"  # after an answer
INDEX_LINES = (r"(added|updated|unchanged|removed) +\S.*",
               r"\S+: added \d+, updated \d+, unchanged \d+, removed \d+, failed \d+; \d+ chunks in [\d.]+s")
SUMMARIZE_LINES = (r"ok +\S.* \(.*\)", r"skipped \S.* \(already summarized\)",
                   r"summarized \d+, skipped \d+, failed \d+ in [\d.]+s -> \S.*")
INDEX_SUMMARY = re.compile(INDEX_LINES[1])


def json_out(run: Run) -> Any:
    return json.loads(run.stdout)


def source_text_is(original: str) -> Callable[[Ctx, Run], None]:
    """--dry-run --json: the one chunk is the file's text, decoded right."""

    def check(ctx: Ctx, run: Run) -> None:
        sources = json_out(run)["sources"]
        assert [s["text"] for s in sources] == [original], sources

    return check


def prompt_has(text: str) -> Callable[[Ctx, Run], None]:
    """stdout (the prompt of --dry-run, or the answer and its sources) contains ``text``."""

    def check(ctx: Ctx, run: Run) -> None:
        assert text in run.stdout, run.stdout

    return check


def no_kb_created(ctx: Ctx, run: Run) -> None:
    listing = ctx.ragqa("kb", "list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == [], listing.describe()


def kb_documents(ctx: Ctx, name: str) -> list[dict[str, Any]]:
    shown = ctx.ragqa("kb", "show", name, "--json")
    assert shown.returncode == 0, shown.describe()
    return json.loads(shown.stdout)["documents"]


def mixed_indexed(ctx: Ctx, run: Run) -> None:
    lines = run.stderr.splitlines()
    assert INDEX_SUMMARY.fullmatch(lines[-1]) and "added 2," in lines[-1] and "failed 2;" in lines[-1], lines
    docs = {Path(d["path"]).name: d for d in kb_documents(ctx, "mixed")}
    assert {n for n, d in docs.items() if d["status"] == "ok" and d["chunks"] >= 1} == {"a.md", "b.md"}, docs
    assert {n for n, d in docs.items() if d["status"] == "failed"} == {"c.txt", "d.txt"}, docs


def office_indexed(ctx: Ctx, run: Run) -> None:
    assert "skipped office/blank.png: no text found (OCR found no text in the image)" in run.stderr, run.stderr
    docs = {Path(d["path"]).name: d for d in kb_documents(ctx, "office")}
    assert {n for n, d in docs.items() if d["status"] == "ok"} == {"towns.csv"}, docs
    assert {n for n, d in docs.items() if d["status"] == "failed"} == {"damaged.xlsx", "blank.png"}, docs


def serve_not_port_in_use(ctx: Ctx, run: Run) -> None:
    assert "in use" not in run.stderr, run.stderr


def hold_port(ctx: Ctx) -> None:
    """Something else listens on {port}."""
    s = socket.socket()
    s.bind(("127.0.0.1", ctx.port))
    s.listen()
    ctx.held.append(s)


def write_work(name: str, data: bytes) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = ctx.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


def corrupt_cache_db(ctx: Ctx) -> None:
    """ask once (the file goes into the internal KB under the cache), then garble that KB's SQLite."""
    first = ctx.ragqa("ask", "good.md", "When is the festival?", "--dry-run")
    assert first.returncode == 0, first.describe()
    [db] = (ctx.cache / "kb").glob("files-*/kb.sqlite")
    db.write_bytes(b"this is not a database\n" * 200)


def damage_kb(kind: str) -> Callable[[Ctx], None]:
    """A KB 'broken' beside the healthy ones whose database is random bytes, truncated or empty, or
    one left by a creation that died on a full disk (a small file and an orphaned temporary WAL)."""
    def setup(ctx: Ctx) -> None:
        folder = ctx.data / "kb" / "broken"
        folder.mkdir(parents=True)
        good = (ctx.data / "kb" / "notes" / "kb.sqlite").read_bytes()
        data = {"random": os.urandom(8192), "truncated": good[:1500], "empty": b"",
                "full-disk": good[:4096]}[kind]
        (folder / "kb.sqlite").write_bytes(data)
        if kind == "full-disk":
            (folder / ".kb.sqlite.x1y2.tmp-wal").write_bytes(b"\0" * 4096)

    return setup


def lists_the_others(ctx: Ctx, run: Run) -> None:
    names = [line.split()[0] for line in run.stdout.splitlines()[1:] if line.strip()]
    assert names == ["broken", "empty", "notes"], run.stdout
    assert "(damaged)" in run.stdout and "ragqa kb drop broken --yes" in run.stderr, run.describe()


def dropped(ctx: Ctx, run: Run) -> None:
    assert not (ctx.data / "kb" / "broken").exists(), list((ctx.data / "kb").iterdir())
    assert (ctx.data / "kb" / "notes" / "kb.sqlite").is_file()  # the others untouched


def odd_names(ctx: Ctx) -> None:
    """A folder with a good file, a name that is not UTF-8 and a name with a newline in it."""
    folder = ctx.work / "odd"
    folder.mkdir()
    (folder / "good.md").write_text(GOOD, encoding="utf-8")
    Path(os.fsdecode(bytes(folder) + b"/caf\xe9.md")).write_text(GOOD, encoding="utf-8")
    (folder / "two\nlines.md").write_text("The ferry runs on Sundays.\n", encoding="utf-8")


def odd_indexed(ctx: Ctx, run: Run) -> None:
    assert "added     {}".format(ctx.work / "odd" / "two\\nlines.md") in run.stderr, run.describe()
    names = sorted(Path(d["path"]).name for d in kb_documents(ctx, "odd"))
    assert names == ["good.md", "two\nlines.md"], names


def legacy_folder(ctx: Ctx) -> None:
    """A folder with a good file and a Word 97 .doc, for a machine without LibreOffice."""
    from docfixtures import ole2_file, word97_stream

    folder = ctx.work / "legacy"
    folder.mkdir()
    (folder / "good.md").write_text(GOOD, encoding="utf-8")
    ole2_file(folder / "old.doc", {"WordDocument": word97_stream()})


def legacy_indexed(ctx: Ctx, run: Run) -> None:
    names = sorted(Path(d["path"]).name for d in kb_documents(ctx, "legacy"))
    assert names == ["good.md", "old.doc"], names  # the .doc is recorded as failed, with its reason
    assert "libreoffice-writer-nogui" in run.stderr, run.describe()


def summarized_once(ctx: Ctx) -> None:
    """sumdocs copied into the work folder and summarized into a folder inside it, once."""
    shutil.copytree(ctx.corpus / "sumdocs", ctx.work / "sd")
    first = ctx.ragqa("summarize", "{work}/sd", "--out", "{work}/sd/summaries", "--max-new-tokens", "8",
                      "--n-ctx", "1024")
    assert first.returncode == 0, first.describe()


def only_the_documents(ctx: Ctx, run: Run) -> None:
    manifest = json.loads((ctx.work / "sd" / "summaries" / "summaries.json").read_text("utf-8"))
    assert sorted(Path(r["source"]).name for r in manifest) == sorted(p.name for p in (ctx.corpus / "sumdocs").iterdir())
    assert f"summarized 0, skipped {SUM_FILES}, failed 0" in run.stderr, run.describe()


def corrupt_keyword_index(ctx: Ctx) -> None:
    """A derived index (tantivy's meta.json) of KB 'notes' is garbage; SQLite, the truth, is intact."""
    (ctx.data / "kb" / "notes" / "keywords" / "meta.json").write_text("garbage\n", encoding="utf-8")


def _committed_files(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0  # not created yet, or its schema not committed yet


def kill_mid_index(ctx: Ctx) -> None:
    """`ragqa index many --kb many`, SIGKILLed once its first files are committed."""
    db = ctx.data / "kb" / "many" / "kb.sqlite"
    proc = ctx.popen("index", "many", "--kb", "many")
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None and not (db.is_file() and _committed_files(db) >= 1):
        time.sleep(0.02)
    assert proc.poll() is None, f"ragqa index ended ({proc.returncode}) before the kill: {proc.communicate()[1]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _committed_files(db)
    assert 1 <= done < MANY_FILES, f"killed with {done} of {MANY_FILES} files committed: not mid-index"
    ctx.state["committed"] = done


def finished_after_kill(ctx: Ctx, run: Run) -> None:
    done = ctx.state["committed"]
    last = run.stderr.splitlines()[-1]
    assert INDEX_SUMMARY.fullmatch(last), last
    assert f"added {MANY_FILES - done}, updated 0, unchanged {done}, removed 0, failed 0;" in last, (done, last)
    docs = kb_documents(ctx, "many")
    assert len(docs) == MANY_FILES and all(d["status"] == "ok" and d["chunks"] == 1 for d in docs), docs
    asked = ctx.ragqa("ask", "--kb", "many", "Which note mentions the lantern?", "--dry-run")
    assert asked.returncode == 0 and "Traceback" not in asked.stderr and "Note " in asked.stdout, asked.describe()


def _records(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL output is a complete JSON record."""
    out = []
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        rec = json.loads(line)  # a half-written line fails here
        assert isinstance(rec, dict) and {"source", "status"} <= rec.keys(), (n, line)
        out.append(rec)
    return out


# one llama.cpp thread: the other worker's process shares the 2 cores (two threads then wait on each other)
SUMMARIZE_BATCH = ("summarize", "sumdocs", "--out", "{work}/out.jsonl", "--max-new-tokens", "8", "--n-ctx", "1024",
                   "--threads", "1")


def kill_mid_batch(ctx: Ctx) -> None:
    """`ragqa summarize` of SUM_FILES documents, SIGKILLed once the first record is written."""
    out = ctx.work / "out.jsonl"
    proc = ctx.popen(*SUMMARIZE_BATCH)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None and not (out.is_file() and out.read_bytes().strip()):
        time.sleep(0.02)
    if proc.poll() in SEGFAULT:
        raise SkipCase(GENERATION_SKIP.format(rc=proc.returncode))
    assert proc.poll() is None, f"ragqa summarize ended ({proc.returncode}) before the kill: {proc.communicate()[1]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records = _records(out)
    assert 1 <= len(records) < SUM_FILES and all(r["status"] == "ok" for r in records), records
    ctx.state["done"] = len(records)


def resumed_batch(ctx: Ctx, run: Run) -> None:
    records = _records(ctx.work / "out.jsonl")
    assert sorted(Path(r["source"]).name for r in records) == [f"doc{i}.md" for i in range(SUM_FILES)], records
    assert all(r["status"] == "ok" and r["summary"].strip() for r in records), records
    done = ctx.state["done"]
    assert f"summarized {SUM_FILES - done}, skipped {done}, failed 0" in run.stderr.splitlines()[-1], run.stderr


def unreadable_recorded(ctx: Ctx, run: Run) -> None:
    records = {Path(r["source"]).name: r for r in _records(ctx.work / "out.jsonl")}
    assert set(records) == {"c.txt", "d.txt"} and all(r["status"] == "failed" for r in records.values()), records


FOREIGN_JSONL = b'{"id": 1, "text": "my own data"}\n{"id": 2, "text": "keep me"}\n'
NOT_UTF8 = "摘要：这不是 UTF-8。\n".encode("gbk")
GARBAGE_MANIFEST = b'{"this is": "not ragqa\'s summaries.json"'


CASES: list[Case] = [
    # -- ask: documents
    Case("ask-missing-file", ("ask", "missing.txt", "q", "--dry-run"), 2, "missing.txt: no such file or folder"),
    Case("ask-empty-file", ("ask", "empty.txt", "q", "--dry-run"), 2, "empty.txt: the file is empty"),
    Case("ask-binary-file", ("ask", "binary.txt", "q", "--dry-run"), 2,
         "binary.txt: looks like a binary file, not text"),
    Case("ask-unsupported-exe", ("ask", "program.exe", "q", "--dry-run"), 2, "program.exe: unsupported file type .exe"),
    Case("ask-folder-without-supported-files", ("ask", "no-supported", "q", "--dry-run"), 2,
         "no-supported: no supported files in this folder"),
    Case("ask-file-over-max-file-mb", ("ask", "huge.txt", "q", "--max-file-mb", "1", "--dry-run"), 2,
         "huge.txt: 2.5 MB is over the 1 MB limit (max_file_mb)"),
    Case("ask-folder-with-unreadable-files", ("ask", "mixed", "When is the festival?", "--dry-run"), 0,
         "skipped mixed/c.txt: looks like a binary file", goes_on=True, lines=ASK_DRY,
         check=prompt_has("held in April")),
    Case("ask-answer-folder-with-unreadable-files",
         ("ask", "mixed", "When is the festival?", "--max-new-tokens", "16", "--threads", "1"), 0, "skipped mixed/d.txt: the file is empty", goes_on=True, lines=(ASK_TIMINGS,), generates=True,
         check=prompt_has("Sources:\n  [1] mixed/")),
    Case("ask-gbk", ("ask", "gbk.txt", "开茶节是哪一天？", "--dry-run", "--json"), 0, "", goes_on=True,
         check=source_text_is(GBK_TEXT)),
    Case("ask-big5", ("ask", "big5.txt", "開茶節是哪一天？", "--dry-run", "--json"), 0, "", goes_on=True,
         check=source_text_is(BIG5_TEXT)),
    Case("ask-utf16-bom", ("ask", "utf16.txt", "When is the tea festival?", "--dry-run", "--json"), 0, "",
         goes_on=True, check=source_text_is(UTF16_TEXT)),
    Case("ask-cp1252", ("ask", "cp1252.txt", "Quand a lieu le festival ?", "--dry-run", "--json"), 0, "",
         goes_on=True, check=source_text_is(CP1252_TEXT)),
    Case("ask-encoding-cannot-be-told", ("ask", "unsure.txt", "q", "--dry-run"), 2,
         "unsure.txt: cannot tell the text encoding for sure (euc_jp or big5); save the file as UTF-8"),
    # -- ask: question and flags
    Case("ask-password-protected-pptx", ("ask", "locked.pptx", "q", "--dry-run"), 2,
         "locked.pptx: the document is password-protected"),
    Case("ask-damaged-xlsx", ("ask", "damaged.xlsx", "q", "--dry-run"), 2, "damaged.xlsx: cannot read this .xlsx file"),
    Case("ask-empty-sheet", ("ask", "empty-sheet.xlsx", "q", "--dry-run"), 2,
         "empty-sheet.xlsx: no text found (every sheet is empty)"),
    Case("ask-image-without-text", ("ask", "blank.png", "q", "--dry-run"), 2,
         "blank.png: no text found (OCR found no text in the image)"),
    Case("ask-scan-with-ocr-never", ("ask", "scan.pdf", "q", "--ocr", "never", "--dry-run"), 2,
         "scan.pdf: no text found (a scanned PDF, and OCR is off: use --ocr auto)"),
    Case("ask-scan-without-tesseract", ("ask", "scan.pdf", "q", "--dry-run"), 4,
         "scan.pdf: the PDF has no text layer (a scan); OCR needs Tesseract, which is not installed",
         env=(("RAGQA_TESSERACT", "/nonexistent/tesseract"),)),
    Case("ask-ocr-bad-value", ("ask", "good.md", "q", "--ocr", "sometimes", "--dry-run"), 2,
         "ocr: Input should be 'auto', 'never' or 'always'"),
    Case("ask-empty-question", ("ask", "good.md", "  ", "--dry-run"), 2, "the question is empty"),
    Case("ask-question-starting-with-dash", ("ask", "good.md", "-5% or +5%?", "--dry-run"), 2,
         "a question that starts with '-' goes after `--`"),
    Case("ask-question-after-double-dash", ("ask", "good.md", "--dry-run", "--", "-5% or +5%?"), 0, "",
         goes_on=True, lines=ASK_DRY, check=prompt_has("-5% or +5%?")),
    Case("ask-k-not-a-number", ("ask", "good.md", "q", "-k", "abc", "--dry-run"), 2, "Invalid value for '--k' / '-k'"),
    Case("ask-k-zero", ("ask", "good.md", "q", "-k", "0", "--dry-run"), 2,
         "k: Input should be greater than or equal to 1"),
    Case("ask-unknown-flag", ("ask", "good.md", "q", "--colour", "--dry-run"), 2, "No such option: --colour"),
    Case("ask-no-arguments", ("ask",), 2, "Missing argument '[PATH...] QUESTION'"),
    Case("ask-overlap-not-below-size",
         ("ask", "good.md", "q", "--chunk-size", "200", "--chunk-overlap", "200", "--dry-run"), 2,
         "chunk_overlap (200) must be less than chunk_size (200)"),
    # -- ask: models, chat formats, settings, servers
    Case("ask-model-missing", ("ask", "good.md", "q", "--model", "{work}/nowhere/model.gguf", "--dry-run"), 3,
         "nowhere/model.gguf' not found"),
    Case("ask-model-not-gguf", ("ask", "good.md", "q", "--model", "not-gguf.gguf", "--dry-run"), 3,
         "model 'not-gguf.gguf' is not a GGUF file"),
    Case("ask-chat-format-unknown", ("ask", "good.md", "q", "--chat-format", "alpaca-3", "--dry-run"), 2,
         "unknown chat format 'alpaca-3'; choose one of: alpaca, alpaca-2,"),
    Case("ask-chat-format-file-wrong-type",
         ("ask", "good.md", "q", "--chat-format", "format-bad-type.toml", "--dry-run"), 2,
         "chat format file format-bad-type.toml: key 'user_prefix' must be a string"),
    Case("ask-chat-format-file-not-toml",
         ("ask", "good.md", "q", "--chat-format", "format-bad-syntax.toml", "--dry-run"), 2,
         "chat format file format-bad-syntax.toml is not valid TOML"),
    Case("ask-config-missing", ("ask", "good.md", "q", "--config", "nowhere.toml", "--dry-run"), 2,
         "config file nowhere.toml does not exist"),
    Case("ask-config-malformed", ("ask", "good.md", "q", "--config", "config-bad.toml", "--dry-run"), 2,
         "cannot read config file config-bad.toml"),
    Case("ask-env-config-missing", ("ask", "good.md", "q", "--dry-run"), 2, "config file nowhere.toml does not exist",
         env=(("RAGQA_CONFIG", "nowhere.toml"),)),
    Case("ask-env-k-not-a-number", ("ask", "good.md", "q", "--dry-run"), 2,
         "invalid settings: k: Input should be a valid integer", env=(("RAGQA_K", "abc"),)),
    Case("ask-base-url-not-a-url", ("ask", "good.md", "q", "--base-url", "localhost:8000/v1", "--dry-run"), 2,
         "base_url must start with http:// or https://"),
    Case("ask-base-url-unreachable",
         ("ask", "good.md", "q", "--base-url", "http://127.0.0.1:{port}/v1", "--dry-run"), 3,
         "cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1"),
    Case("ask-base-url-unclosed-bracket", ("ask", "good.md", "q", "--base-url", "http://[::1/v1", "--dry-run"), 2,
         "base_url must be a server's address"),
    Case("ask-base-url-port-not-a-number", ("ask", "good.md", "q", "--base-url", "http://127.0.0.1:abc/v1",
                                            "--dry-run"), 2, "base_url must be a server's address"),
    Case("ask-base-url-space-in-host", ("ask", "good.md", "q", "--base-url", "http://my server/v1", "--dry-run"), 2,
         "base_url must be a server's address"),
    Case("ask-json-lone-surrogate", ("ask", "lone.json", "When is the festival?", "--dry-run", "--json"), 0, "",
         goes_on=True),
    Case("ask-json-nested-too-deeply", ("ask", "deep.json", "q", "--dry-run"), 2, "deep.json: the JSON is nested too deeply"),
    Case("ask-max-file-mb-infinite", ("ask", "good.md", "q", "--max-file-mb", "inf", "--dry-run"), 2,
         "max_file_mb: Input should be a finite number"),
    Case("ask-config-is-a-folder", ("ask", "good.md", "q", "--config", "no-supported", "--dry-run"), 2,
         "config file no-supported is a folder"),
    Case("ask-store-malformed", ("ask", "--kb", "notes", "q", "--store", "http://:x", "--dry-run"), 2,
         "store must be 'local' or a Milvus URI"),
    Case("ask-store-unreachable", ("ask", "--kb", "notes", "q", "--store", "http://127.0.0.1:{port}", "--dry-run"), 1,
         "cannot reach Milvus at http://127.0.0.1:{port}"),
    # -- ask: knowledge bases
    Case("ask-kb-unknown", ("ask", "--kb", "nothing", "q", "--dry-run"), 2, "no knowledge base named 'nothing'",
         kbs=True, keep=("{data}",)),
    Case("ask-kb-empty", ("ask", "--kb", "empty", "q", "--dry-run"), 2,
         "knowledge base 'empty' is empty: add files with ragqa index PATH... --kb empty", kbs=True, keep=("{data}",)),
    Case("ask-kb-and-path", ("ask", "--kb", "notes", "good.md", "q", "--dry-run"), 2,
         "with --kb give only the QUESTION", kbs=True, keep=("{data}",)),
    Case("ask-doc-matches-nothing", ("ask", "--kb", "notes", "--doc", "*2019*", "q", "--dry-run"), 2,
         "no document of knowledge base 'notes' matches '*2019*' (list its documents with: ragqa kb show notes)",
         kbs=True, keep=("{data}",)),
    Case("ask-doc-outside-the-kb", ("ask", "--kb", "notes", "--doc", "/etc/passwd", "q", "--dry-run"), 2,
         "matches '/etc/passwd'", kbs=True, keep=("{data}",)),
    Case("ask-doc-empty", ("ask", "--kb", "notes", "--doc", "", "q", "--dry-run"), 2,
         "a document pattern is empty", kbs=True, keep=("{data}",)),
    Case("ask-doc-without-kb", ("ask", "good.md", "q", "--doc", "good.md", "--dry-run"), 2,
         "--doc picks documents of a knowledge base: use it with --kb NAME"),
    Case("ask-kb-dotdot", ("ask", "--kb", "../x", "q", "--dry-run"), 2, "invalid knowledge base name '../x'"),
    Case("ask-kb-slash", ("ask", "--kb", "a/b", "q", "--dry-run"), 2, "invalid knowledge base name 'a/b'"),
    Case("ask-kb-other-chunk-size", ("ask", "--kb", "notes", "q", "--chunk-size", "300", "--dry-run"), 2,
         "ragqa kb drop notes && ragqa index PATH... --kb notes", kbs=True, keep=("{data}/kb/notes/kb.sqlite",)),
    Case("ask-corrupt-cache-db", ("ask", "good.md", "When is the festival?", "--dry-run"), 0,
         "is damaged; moved to", goes_on=True, lines=ASK_DRY, setup=corrupt_cache_db, check=prompt_has("held in March")),
    Case("ask-kb-damaged-keyword-index", ("ask", "--kb", "notes", "When is the festival?", "--dry-run"), 0, "",
         goes_on=True, lines=ASK_DRY, kbs=True, setup=corrupt_keyword_index, keep=("{data}/kb/notes/kb.sqlite",),
         check=prompt_has("held in March")),
    # -- index
    Case("index-embedding-base-url-not-a-url", ("index", "good.md", "--kb", "k1", "--embedding-base-url",
                                                "localhost:8080/v1"), 2, "embedding_base_url must be a server's address",
         check=no_kb_created),
    Case("index-embedding-server-unreachable", ("index", "good.md", "--kb", "k1", "--embedding-base-url",
                                                "http://127.0.0.1:{port}/v1"), 3,
         "the embedding server at http://127.0.0.1:{port}/v1 cannot be reached", check=no_kb_created),
    Case("ask-kb-embedding-server-unreachable", ("ask", "--kb", "notes", "q", "--dry-run", "--embedding-base-url",
                                                 "http://127.0.0.1:{port}/v1"), 3,
         "the embedding server at http://127.0.0.1:{port}/v1 cannot be reached", kbs=True, keep=("{data}",)),
    Case("ask-embedding-batch-size-zero", ("ask", "good.md", "q", "--dry-run", "--embedding-batch-size", "0"), 2,
         "embedding_batch_size: Input should be greater than or equal to 1"),
    Case("index-missing-path", ("index", "nowhere", "--kb", "k1"), 2, "nowhere: no such file or folder",
         check=no_kb_created),
    Case("index-folder-with-unreadable-files", ("index", "mixed", "--kb", "mixed"), 1,
         "skipped mixed/c.txt: looks like a binary file, not text", goes_on=True, lines=INDEX_LINES,
         check=mixed_indexed),
    Case("index-folder-with-odd-names", ("index", "{work}/odd", "--kb", "odd"), 0, "caf\\xe9.md: its name is not valid UTF-8",
         goes_on=True, lines=INDEX_LINES, setup=odd_names, check=odd_indexed),
    Case("index-office-folder-with-bad-files", ("index", "office", "--kb", "office"), 1,
         "skipped office/damaged.xlsx: cannot read this .xlsx file", goes_on=True, lines=INDEX_LINES,
         check=office_indexed),
    Case("index-legacy-office-without-libreoffice", ("index", "{work}/legacy", "--kb", "legacy"), 1,
         "reading .doc files needs LibreOffice, which is not installed", goes_on=True, lines=INDEX_LINES,
         setup=legacy_folder, check=legacy_indexed, env=(("RAGQA_SOFFICE", "/nonexistent/soffice"),)),
    Case("index-watch-a-file", ("index", "good.md", "--kb", "k1", "--watch"), 2, "--watch follows folders",
         check=no_kb_created),
    Case("index-kb-name-slash", ("index", "good.md", "--kb", "a/b"), 2, "invalid knowledge base name 'a/b'",
         check=no_kb_created),
    Case("index-kb-name-dotdot", ("index", "good.md", "--kb", ".."), 2, "invalid knowledge base name '..'",
         check=no_kb_created),
    Case("index-other-embedding-model", ("index", "good.md", "--kb", "notes", "--embedding-model", "all-MiniLM-L6-v2"),
         2, "this run uses embeddings starter:all-minilm-l6-v2, chunks 600/100. Use the KB's settings, or rebuild it: "
            "ragqa kb drop notes && ragqa index PATH... --kb notes", kbs=True, keep=("{data}/kb/notes/kb.sqlite",)),
    Case("index-other-chunk-size", ("index", "good.md", "--kb", "notes", "--chunk-size", "300"), 2,
         "this run uses embeddings starter:multilingual-e5-small, chunks 300/100. Use the KB's settings, or rebuild "
         "it: ragqa kb drop notes && ragqa index PATH... --kb notes", kbs=True, keep=("{data}/kb/notes/kb.sqlite",)),
    Case("index-data-dir-is-a-file", ("index", "good.md", "--kb", "z", "--data-dir", "{work}/data-file"), 1,
         "it is a file (set --data-dir to a folder)", setup=write_work("data-file", b"a file, not a folder\n"),
         keep=("{work}/data-file",)),
    Case("index-store-unreachable", ("index", "good.md", "--kb", "x", "--store", "http://127.0.0.1:{port}"), 1,
         "cannot reach Milvus at http://127.0.0.1:{port}"),
    Case("index-kill-9-then-rerun", ("index", "many", "--kb", "many"), 0, "", goes_on=True, lines=INDEX_LINES,
         setup=kill_mid_index, check=finished_after_kill, slow=True),
    # -- kb
    Case("kb-show-unknown", ("kb", "show", "nothing"), 2, "no knowledge base named 'nothing' (see: ragqa kb list)",
         kbs=True, keep=("{data}",)),
    Case("kb-remove-unknown-kb", ("kb", "remove", "nothing", "good.md"), 2, "no knowledge base named 'nothing'",
         kbs=True, keep=("{data}",)),
    *[Case(f"kb-list-with-a-{kind}-kb", ("kb", "list"), 0, "broken", goes_on=True, kbs=True, setup=damage_kb(kind),
           check=lists_the_others, keep=("{data}/kb/notes/kb.sqlite",)) for kind in ("random", "truncated", "empty")],
    *[Case(f"kb-drop-a-{kind}-kb", ("kb", "drop", "broken", "--yes"), 0, "", goes_on=True, kbs=True,
           setup=damage_kb(kind), lines=("dropped broken",), check=dropped, keep=("{data}/kb/notes/kb.sqlite",))
      for kind in ("random", "truncated", "empty", "full-disk")],
    Case("index-into-a-damaged-kb", ("index", "good.md", "--kb", "broken"), 1, "is damaged", kbs=True,
         setup=damage_kb("random"), keep=("{data}/kb/broken/kb.sqlite",)),
    Case("kb-drop-unknown", ("kb", "drop", "nothing", "--yes"), 2, "no knowledge base named 'nothing'",
         kbs=True, keep=("{data}",)),
    Case("kb-drop-without-yes-no-tty", ("kb", "drop", "notes"), 2,
         "dropping 'notes' deletes its index; add --yes to confirm",
         kbs=True, keep=("{data}",)),
    Case("kb-remove-path-not-in-kb", ("kb", "remove", "notes", "mixed/a.md"), 2,
         "none of these paths are in knowledge base 'notes' (see: ragqa kb show notes)",
         kbs=True, keep=("{data}/kb/notes/kb.sqlite",)),
    # -- summarize
    Case("summarize-out-foreign-jsonl", ("summarize", "good.md", "--out", "{work}/mine.jsonl"), 2,
         "this file is not ragqa's summary output (line 1 is not a summary record); it was left unchanged",
         setup=write_work("mine.jsonl", FOREIGN_JSONL), keep=("{work}",)),
    Case("summarize-out-not-utf8", ("summarize", "good.md", "--out", "{work}/gbk.jsonl"), 2,
         "this file is not ragqa's summary output (not UTF-8 text); it was left unchanged",
         setup=write_work("gbk.jsonl", NOT_UTF8), keep=("{work}",)),
    Case("summarize-out-regular-file", ("summarize", "good.md", "--out", "{work}/notes.txt"), 2,
         "exists and is not a folder (use a .jsonl name for one file)",
         setup=write_work("notes.txt", b"my notes\n"), keep=("{work}",)),
    Case("summarize-out-folder-garbage-manifest", ("summarize", "good.md", "--out", "{work}/out"), 2,
         "summaries.json is not ragqa's summary output (not JSON",
         setup=write_work("out/summaries.json", GARBAGE_MANIFEST), keep=("{work}",)),
    Case("summarize-kb-and-path", ("summarize", "good.md", "--kb", "notes", "--out", "{work}/s.jsonl"), 2,
         "give the documents as PATH... or as --kb NAME (one of the two)", keep=("{work}",)),
    Case("summarize-neither-kb-nor-path", ("summarize", "--out", "{work}/s.jsonl"), 2,
         "give the documents as PATH... or as --kb NAME (one of the two)", keep=("{work}",)),
    Case("summarize-only-unreadable-files", ("summarize", "unreadable", "--out", "{work}/out.jsonl"), 1,
         "unreadable/c.txt: looks like a binary file, not text", goes_on=True, lines=SUMMARIZE_LINES,
         check=unreadable_recorded),
    Case("summarize-out-inside-the-summarized-folder",
         ("summarize", "{work}/sd", "--out", "{work}/sd/summaries", "--max-new-tokens", "8", "--n-ctx", "1024"), 0, "",
         goes_on=True, lines=SUMMARIZE_LINES, setup=summarized_once, check=only_the_documents, generates=True, slow=True),
    Case("summarize-kill-9-then-rerun", SUMMARIZE_BATCH, 0, "", goes_on=True, lines=SUMMARIZE_LINES,
         setup=kill_mid_batch, check=resumed_batch, generates=True, slow=True),
    # -- eval
    Case("eval-limit-zero", ("eval", "good.md", "--limit", "0"), 2, "--limit must be at least 1"),
    Case("eval-not-squad", ("eval", "squad-not.json"), 2,
         'squad-not.json: not a SQuAD-format file: the top level should be an object with a "data" list'),
    Case("eval-missing-file", ("eval", "nowhere.json"), 2, "nowhere.json: no such file"),
    Case("eval-fail-below-malformed", ("eval", "squad-not.json", "--fail-below", "recall@5"), 2,
         "--fail-below: 'recall@5' is not METRIC=VALUE (e.g. recall@5=0.9,answers.f1=0.3)"),
    Case("eval-distractors-with-abstain-off", ("eval", "squad-not.json", "--distractors", "squad-not.json",
                                               "--abstain", "off"), 2,
         "--distractors measures abstention: drop --abstain off"),
    Case("ask-abstain-strictness-out-of-range", ("ask", "good.md", "q", "--abstain-strictness", "2", "--dry-run"), 2,
         "invalid settings: abstain_strictness: Input should be less than or equal to 1"),
    # -- serve
    Case("serve-port-out-of-range", ("serve", "--port", "70000"), 2, "'--port' / '-p': Input should be less than or equal to 65535", timeout=SERVE_TIMEOUT_S),
    Case("serve-port-busy", ("serve", "--port", "{port}"), 1,
         "cannot serve on 127.0.0.1:{port}: the port is in use (choose another with --port)",
         setup=hold_port, timeout=SERVE_TIMEOUT_S),
    Case("serve-auth-without-colon", ("serve", "--auth", "alice", "--port", "{port}"), 2,
         "--auth must be USER:PASSWORD", timeout=SERVE_TIMEOUT_S),
    Case("serve-beyond-localhost-without-keys", ("serve", "--host", "0.0.0.0", "--port", "{port}"), 2,
         "--host 0.0.0.0 is reachable from the network", timeout=SERVE_TIMEOUT_S),
    Case("serve-api-keys-missing", ("serve", "--api-keys", "nowhere.toml", "--port", "{port}"), 2,
         "--api-keys nowhere.toml: no such file", timeout=SERVE_TIMEOUT_S),
    Case("serve-api-keys-without-token", ("serve", "--api-keys", "keys-no-token.toml", "--port", "{port}"), 2,
         "give exactly one of token and sha256", timeout=SERVE_TIMEOUT_S),
    Case("serve-model-server-down", ("serve", "--backend", "openai", "--base-url", "http://127.0.0.1:{port}/v1",
                                     "--port", "{port}"), 3, "cannot reach the OpenAI-compatible server",
         timeout=SERVE_TIMEOUT_S),
    Case("summarize-parallel-zero", ("summarize", "good.md", "--out", "{work}/out.jsonl", "--parallel", "0"), 2,
         "'--parallel' / '-j'", timeout=SERVE_TIMEOUT_S),
    Case("serve-host-not-resolvable",
         ("serve", "--host", "no-such-host.invalid", "--auth", "a:b", "--port", "{port}"), 2,
         "--host 'no-such-host.invalid': not an address or a host name", check=serve_not_port_in_use,
         timeout=SERVE_TIMEOUT_S),
]


# -- running the table ---------------------------------------------------------------------------


@dataclass
class Outcome:
    run: Run | None = None
    ctx: Ctx | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    skip: str = ""
    error: BaseException | None = None  # from setup: the row could not be run
    check_error: BaseException | None = None


def snapshot(path: Path) -> Any:
    """A file's bytes, a folder's {relative path: bytes}, or None when it is not there."""
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return None


def kept_paths(case: Case, ctx: Ctx) -> list[Path]:
    """The row's ``keep`` plus every corpus path on its command line (inputs are never written)."""
    paths = [Path(ctx.fmt(p)) for p in case.keep]
    for arg in case.argv:
        candidate = (ctx.corpus / ctx.fmt(arg)).resolve()
        inside = candidate.is_relative_to(ctx.corpus.resolve()) and candidate != ctx.corpus.resolve()
        if arg and not arg.startswith("-") and inside and candidate.exists():
            paths.append(candidate)
    return paths


def run_case(case: Case, corpus: Path, root: Path, template: Path | None) -> Outcome:
    work = root / case.id
    work.mkdir()
    data = work / "data"
    if case.kbs:
        assert template is not None
        shutil.copytree(template, data)
    ctx = Ctx(corpus, work / "files", work / "cache", data, clean_env(work / "cache", data, dict(case.env)))
    ctx.work.mkdir()
    outcome = Outcome(ctx=ctx)
    try:
        if case.setup:
            case.setup(ctx)
        keep = kept_paths(case, ctx)
        outcome.before = {str(p): snapshot(p) for p in keep}
        outcome.run = ctx.ragqa(*case.argv, timeout=case.timeout)
        outcome.after = {str(p): snapshot(p) for p in keep}
        if case.check and outcome.run.returncode == case.code:
            try:
                case.check(ctx, outcome.run)
            except BaseException as exc:  # reported by the test, after the common assertions
                outcome.check_error = exc
    except SkipCase as exc:
        outcome.skip = str(exc)
    except BaseException as exc:
        outcome.error = exc
    finally:
        ctx.close()
    return outcome


def make_template(corpus: Path, root: Path) -> Path:
    """A data folder with KB 'notes' (good.md, one chunk) and KB 'empty' (its only file failed)."""
    data = root / "template-data"
    env = clean_env(root / "template-cache", data)
    jobs = [(["index", "good.md", "--kb", "notes"], 0), (["index", "empty.txt", "--kb", "empty"], 1)]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda job: run_ragqa(job[0], corpus, env), jobs))
    for run, (_, code) in zip(runs, jobs):
        assert run.returncode == code, run.describe()
    return data


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run the selected rows, two at a time; -> their outcomes by id."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input" and hasattr(item, "callspec")}
    cases = sorted((c for c in CASES if c.id in selected), key=lambda c: not c.slow)
    root = tmp_path_factory.mktemp("bad-input")
    corpus = make_corpus(root / "corpus")
    template = make_template(corpus, root) if any(c.kbs for c in cases) else None
    with ThreadPoolExecutor(2) as pool:
        futures = {c.id: pool.submit(run_case, c, corpus, root, template) for c in cases}
        return {cid: f.result() for cid, f in futures.items()}


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    if outcome.skip:
        pytest.skip(outcome.skip)
    if outcome.error is not None:
        raise outcome.error
    run, ctx = outcome.run, outcome.ctx
    assert run is not None and ctx is not None
    if case.generates and run.returncode in SEGFAULT:
        pytest.skip(GENERATION_SKIP.format(rc=run.returncode))
    assert "Traceback" not in run.stderr + run.stdout, run.describe()
    assert run.returncode == case.code, run.describe()

    fragment = ctx.fmt(case.fragment)
    lines = run.stderr.splitlines()
    if not case.goes_on:
        assert len(lines) == 1 and lines[0].startswith("ragqa: error: "), run.describe()
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    else:
        allowed = [re.compile(p) for p in case.lines]
        stray = [line for line in lines if line.strip() and not line.startswith("note: ")
                 and not any(p.fullmatch(line) for p in allowed)]
        assert not stray, f"stderr lines neither note: nor documented progress: {stray}\n{run.describe()}"
        if fragment:
            assert any(line.startswith("note: ") and fragment in line for line in lines), run.describe()

    changed = [p for p in outcome.before if outcome.before[p] != outcome.after[p]]
    assert not changed, f"changed or lost by the run: {changed}"
    if outcome.check_error is not None:
        raise outcome.check_error



# -- the HTTP API: a second table, against one real `ragqa serve` -------------------------------
#
# Each row is one request; it must get its status with an OpenAI-shaped JSON error (never a
# traceback, never HTML), and the server's knowledge base and uploads folder must be as before.

from netfixtures import start_ragqa_serve, stop  # noqa: E402

BIG = 1024 * 1024 + 1  # over the server's --max-file-mb 1


@dataclass(frozen=True)
class ApiCase:
    id: str
    method: str
    path: str
    status: int
    fragment: str
    json: Any = None
    content: bytes | None = None
    files: tuple[tuple[str, bytes], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


def chat_body(**changes: Any) -> dict[str, Any]:
    return {"model": "notes", "messages": [{"role": "user", "content": "When is the festival?"}], **changes}


API_CASES = [
    ApiCase("malformed-json", "POST", "/chat/completions", 400, "not valid JSON", content=b'{"model": ',
            headers=(("Content-Type", "application/json"),)),
    ApiCase("not-an-object", "POST", "/chat/completions", 400, "", json=[1, 2]),
    ApiCase("missing-model", "POST", "/chat/completions", 400, "model", json={"messages": chat_body()["messages"]}),
    ApiCase("k-zero", "POST", "/chat/completions", 400, "k", json=chat_body(k=0)),
    ApiCase("temperature-negative", "POST", "/chat/completions", 400, "temperature", json=chat_body(temperature=-1)),
    ApiCase("max-tokens-zero", "POST", "/chat/completions", 400, "max_tokens", json=chat_body(max_tokens=0)),
    ApiCase("messages-empty", "POST", "/chat/completions", 400, "messages", json=chat_body(messages=[])),
    ApiCase("messages-not-a-list", "POST", "/chat/completions", 400, "messages", json=chat_body(messages="hi")),
    ApiCase("role-unknown", "POST", "/chat/completions", 400, "role",
            json=chat_body(messages=[{"role": "wizard", "content": "hi"}])),
    ApiCase("image-part", "POST", "/chat/completions", 400, "text parts only", json=chat_body(messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}])),
    ApiCase("ends-with-assistant", "POST", "/chat/completions", 400, "last message",
            json=chat_body(messages=[{"role": "assistant", "content": "hi"}])),
    ApiCase("unknown-kb", "POST", "/chat/completions", 404, "no knowledge base 'nothing'", json=chat_body(model="nothing")),
    ApiCase("bad-fusion", "POST", "/chat/completions", 400, "fusion", json=chat_body(fusion="magic")),
    ApiCase("body-over-8-mb", "POST", "/chat/completions", 413, "over 8 MB",
            content=b'{"model": "notes", "pad": "' + b"x" * (8 * 1024 * 1024) + b'"}',
            headers=(("Content-Type", "application/json"),)),
    ApiCase("upload-file-over-max-file-mb", "POST", "/kbs/notes/documents", 413, "big.txt is over the 1 MB limit",
            files=(("small.md", b"# A small file\n\nIt is fine."), ("big.txt", b"x" * BIG))),
    ApiCase("upload-not-multipart", "POST", "/kbs/notes/documents", 400, "multipart/form-data", content=b"hello",
            headers=(("Content-Type", "text/plain"),)),
    ApiCase("upload-no-file-part", "POST", "/kbs/notes/documents", 400, "no `file` part", files=()),
    ApiCase("upload-bad-kb-name", "POST", "/kbs/..hidden/documents", 400, "", files=(("a.md", b"a"),)),
    ApiCase("delete-without-source", "DELETE", "/kbs/notes/documents", 400, "source"),
    ApiCase("delete-unknown-document", "DELETE", "/kbs/notes/documents?source=nope.md", 404, "no document"),
    ApiCase("delete-unknown-kb", "DELETE", "/kbs/nothing", 404, "no knowledge base"),
    ApiCase("unknown-job", "GET", "/jobs/0000", 404, "no job"),
    ApiCase("unknown-endpoint", "GET", "/embeddings/nothing", 404, "no such endpoint"),
    ApiCase("wrong-method", "GET", "/chat/completions", 405, ""),
]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory):
    """`ragqa serve --no-page --max-file-mb 1` with a KB 'notes' holding good.md."""
    import httpx

    folder = tmp_path_factory.mktemp("bad-api")
    proc, url = start_ragqa_serve(folder, "--no-page", "--max-file-mb", "1", "--max-new-tokens", "30")
    reply = httpx.post(f"{url}/kbs/notes/documents", files=[("file", ("good.md", GOOD.encode()))], timeout=60)
    deadline = time.time() + 120
    while httpx.get(f"{url}/jobs/{reply.json()['id']}").json()["status"] not in ("done", "failed"):
        assert time.time() < deadline
        time.sleep(0.2)
    yield url, folder / "data"
    stop(proc)


def _api_state(url: str, data: Path) -> Any:
    import httpx

    docs = httpx.get(f"{url}/kbs/notes/documents", timeout=30).json()
    uploads = sorted(str(p.relative_to(data)) for p in (data / "uploads").rglob("*") if p.is_file())
    return docs, uploads


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_bad_api_request(case: ApiCase, api_server) -> None:
    import httpx

    url, data = api_server
    before = _api_state(url, data)
    files = [("file", f) for f in case.files] if case.files or case.id == "upload-no-file-part" else None
    if case.id == "upload-no-file-part":
        files = [("other", ("x.txt", b"x"))]
    reply = httpx.request(case.method, url + case.path, json=case.json, content=case.content, files=files,
                          headers=dict(case.headers), timeout=120)
    assert reply.status_code == case.status, reply.text[:500]
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    assert "Traceback" not in reply.text and "<html" not in reply.text.lower()
    assert case.fragment in body["error"]["message"], body
    assert _api_state(url, data) == before  # nothing half-written: no document, no upload, no staged part


def test_an_unsupported_file_fails_alone_in_its_upload(api_server) -> None:
    import httpx

    url, _ = api_server
    reply = httpx.post(f"{url}/kbs/mixed/documents", timeout=60, files=[
        ("file", ("ok.md", b"# Fine\n\nThe ferry runs daily.")), ("file", ("tool.exe", b"MZ\x90\x00")),
        ("file", ("binary.txt", bytes(range(256)) * 8))])
    assert reply.status_code == 202
    deadline = time.time() + 120
    while (job := httpx.get(f"{url}/jobs/{reply.json()['id']}").json())["status"] not in ("done", "failed"):
        assert time.time() < deadline
        time.sleep(0.2)
    files = {f["name"]: f for f in job["files"]}
    assert files["ok.md"]["status"] == "added"
    assert files["tool.exe"]["status"] == "failed" and ".exe" in files["tool.exe"]["error"]
    assert files["binary.txt"]["status"] == "failed" and "binary" in files["binary.txt"]["error"]
