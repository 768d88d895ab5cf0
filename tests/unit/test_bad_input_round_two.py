"""The second sweep of bad input (file names, symlinks, damaged KBs, outputs inside inputs, JSON
edge cases, settings that overflow), at the depth each cause lives: the path walk, KB
open/create/drop, the summary outputs, the settings. The CLI rows are in
tests/integration/test_bad_input_matrix.py."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from ragqa.errors import ConfigError, InputError, RagqaError
from ragqa.loaders import expand_paths, load_file

GOOD = "熊猫是中国特有的动物。熊猫的主要食物是竹子。"


def test_a_name_that_is_not_utf8_is_skipped_in_a_folder_and_refused_when_named(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text(GOOD, "utf-8")
    bad = os.fsdecode(bytes(folder) + b"/caf\xe9.txt")  # Latin-1 bytes in a UTF-8 world
    Path(bad).write_text(GOOD, "utf-8")
    assert [p.name for p in expand_paths([folder])] == ["good.txt"]
    assert "not valid UTF-8" in caplog.text and "caf\\xe9.txt" in caplog.text
    with pytest.raises(InputError, match=r"caf\\xe9.txt: the name is not valid UTF-8"):
        expand_paths([bad])


def test_a_folder_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop root from reading a folder")
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "a.txt").write_text(GOOD, "utf-8")
    folder.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot read this folder"):
            expand_paths([folder])
    finally:
        folder.chmod(0o755)


def test_json_with_lone_surrogates_or_deep_nesting_reads_or_is_one_line(tmp_path: Path) -> None:
    lone = tmp_path / "lone.json"
    lone.write_text('{"name": "\\ud800 alone", "ok": "\\u9f99"}', "utf-8")
    [doc] = load_file(lone)
    assert "\ufffd alone" in doc.page_content and "龙" in doc.page_content
    doc.page_content.encode("utf-8")  # storable, printable
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, "utf-8")
    with pytest.raises(InputError, match="nested too deeply"):
        load_file(deep)


@pytest.mark.parametrize("name", ["max_file_mb", "repeat_penalty", "rope_freq_base", "rope_freq_scale"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_settings_are_refused(name: str, value: str) -> None:
    from ragqa.config import load_settings

    with pytest.raises(ConfigError, match=f"{name}: Input should be a finite number"):
        load_settings(None, **{name: value})


def test_config_that_is_a_folder_or_has_a_bom_says_so(tmp_path: Path) -> None:
    from ragqa.config import load_settings

    with pytest.raises(ConfigError, match="is a folder"):
        load_settings(tmp_path)
    bom = tmp_path / "ragqa.toml"
    bom.write_bytes(b"\xef\xbb\xbfk = 3\n")
    with pytest.raises(ConfigError, match="byte-order mark"):
        load_settings(bom)


def test_a_squad_file_with_a_bom_is_read_and_empty_contexts_are_left_out_with_a_note(tmp_path: Path, caplog) -> None:
    from ragqa.evaluation import load_squad

    data = {"data": [{"paragraphs": [
        {"context": "熊猫吃竹子。", "qas": [{"id": "1", "question": "熊猫吃什么？", "answers": [{"text": "竹子"}]}]},
        {"context": "   ", "qas": [{"id": "2", "question": "什么？", "answers": [{"text": "x"}]}]},
    ]}]}
    path = tmp_path / "squad.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data, ensure_ascii=False).encode("utf-8"))
    contexts, items = load_squad(path)
    assert contexts == ["熊猫吃竹子。"] and [i.question for i in items] == ["熊猫吃什么？"]
    assert "1 paragraph with an empty context left out" in caplog.text


# -- knowledge bases: damaged ones never block the others, and can be dropped -----------------


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_a_damaged_kb_is_listed_as_such_and_dropped_and_hides_nothing(make_pipeline, tmp_path: Path,
                                                                     data_dir: Path, damage: str) -> None:
    p = make_pipeline()
    doc = tmp_path / "good.txt"
    doc.write_text(GOOD, "utf-8")
    p.ingest("healthy", [doc])
    p.ingest("broken", [doc])
    db = data_dir / "kb" / "broken" / "kb.sqlite"
    good = db.read_bytes()
    for extra in db.parent.glob("kb.sqlite-*"):
        extra.unlink()
    db.write_bytes({"random": os.urandom(8192), "truncated": good[:1500], "empty": b""}[damage])
    listed = {s.name: s for s in p.list_kbs()}
    assert set(listed) == {"healthy", "broken"}
    assert listed["healthy"].error is None and listed["healthy"].chunks == 1
    assert listed["broken"].error and "damaged" in listed["broken"].error
    with pytest.raises(RagqaError, match="damaged"):
        p.open_kb("broken")
    p.drop_kb("broken")
    assert not db.parent.exists() and [s.name for s in p.list_kbs()] == ["healthy"]


def test_a_new_kb_is_one_whole_file_without_a_wal_beside_it(make_pipeline, data_dir: Path) -> None:
    """Created in rollback-journal mode and renamed closed: nothing to lose at the rename; WAL is on
    once it is opened."""
    p = make_pipeline()
    kb = p.open_kb("fresh", create=True)
    kb.close()
    folder = data_dir / "kb" / "fresh"
    assert not [f for f in folder.iterdir() if f.name.startswith(".kb.sqlite")]  # no temporary left
    con = sqlite3.connect(folder / "kb.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_leftovers_of_a_creation_that_died_are_cleared(make_pipeline, data_dir: Path) -> None:
    folder = data_dir / "kb" / "fresh"
    folder.mkdir(parents=True)
    (folder / ".kb.sqlite.abc123.tmp").write_bytes(b"half")
    (folder / ".kb.sqlite.abc123.tmp-wal").write_bytes(b"\0" * 100)
    make_pipeline().open_kb("fresh", create=True).close()
    assert sorted(f.name for f in folder.iterdir() if f.name.startswith(".kb")) == []


# -- --sync and kb remove agree with what index put there ---------------------------------------


def test_sync_keeps_a_hidden_file_that_was_named_and_removes_a_deleted_link(make_pipeline, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / ".private").mkdir(parents=True)
    (docs / "a.txt").write_text(GOOD, "utf-8")
    hidden = docs / ".private" / "x.txt"
    hidden.write_text("私人笔记。只有我知道。", "utf-8")
    target = tmp_path / "elsewhere.txt"
    target.write_text("外面的文件，通过链接找到。", "utf-8")
    link = docs / "link.txt"
    link.symlink_to(target)
    p = make_pipeline()
    kb = p.open_kb("h", create=True)
    p.index_paths(kb, [hidden, docs])
    paths = {r.path for r in kb.files()}
    assert {str(hidden), str(link), str(docs / "a.txt")} == paths  # the link under the folder it was found in
    report = p.index_paths(kb, [docs], sync=True)
    assert report.removed == 0 and str(hidden) in {r.path for r in kb.files()}  # still on disk: kept
    link.unlink()
    report = p.index_paths(kb, [docs], sync=True)
    assert report.removed == 1 and str(link) not in {r.path for r in kb.files()}
    p.index_paths(kb, [docs / "a.txt"])
    assert p.remove_from_kb("h", [str(docs)]) == 2  # a.txt and the hidden one: everything under docs/
    assert kb.files() == []


# -- summaries: the output is never an input; one bad document never stops the batch ------------


def test_an_output_inside_the_folder_is_never_summarized(make_pipeline, fake_backend_cls, tmp_path: Path) -> None:
    for n, name in enumerate(("summaries", "summaries.jsonl")):
        docs = tmp_path / f"docs{n}"
        docs.mkdir()
        (docs / "a.txt").write_text(GOOD, "utf-8")
        out = docs / name
        first = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, progress=False)
        again = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, progress=False)
        assert (first.summarized, again.summarized, again.skipped) == (1, 0, 1), out


def test_a_very_long_name_gets_a_short_output_name(make_pipeline, fake_backend_cls, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    long = docs / ("很长的文件名" * 13 + ".txt")  # 234 bytes of name: + ".md" and a number would not fit
    long.write_text(GOOD, "utf-8")
    (docs / "b.txt").write_text(GOOD, "utf-8")
    out = tmp_path / "out"
    report = make_pipeline(backend=fake_backend_cls()).summarize_batch([docs], out, progress=False)
    assert report.summarized == 2 and report.failed == 0
    names = [p.name for p in out.glob("*.md") if p.name != "index.md"]
    assert len(names) == 2 and all(len(n.encode()) <= 255 for n in names)


def test_a_kb_document_gone_from_disk_fails_alone(make_pipeline, fake_backend_cls, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(GOOD, "utf-8")
    b.write_text(GOOD + "另一篇。", "utf-8")
    p = make_pipeline(backend=fake_backend_cls())
    p.ingest("k", [a, b])
    a.unlink()
    report = p.summarize_batch(p.kb_paths("k"), tmp_path / "s.jsonl", progress=False, missing_ok=True)
    assert (report.summarized, report.failed) == (1, 1)
    records = {Path(r["source"]).name: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    assert records["a.txt"]["status"] == "failed" and "no such file" in records["a.txt"]["error"]


def test_a_lock_file_that_cannot_be_made_is_said_at_once(tmp_path: Path) -> None:
    from ragqa.outputs import SummaryStore

    store = SummaryStore.open(tmp_path / "out.jsonl")
    store.out = Path("/proc/self/ragqa-cannot-be-here.jsonl")  # a pseudo-filesystem: no file can be made
    with pytest.raises(RagqaError, match="cannot create its lock file"):
        store.put({"source": "a.txt", "status": "ok", "summary": "s"})


def test_outputs_follow_the_umask(tmp_path: Path) -> None:
    from ragqa.paths import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.md", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "x.md").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 256 KB tmpfs (root only: elsewhere the test is skipped with the reason), unmounted after."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, and mounting one needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_during_creation_leaves_nothing_that_blocks(make_pipeline, tiny_disk: Path) -> None:
    filler = tiny_disk / "filler"
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 12 * 1024))  # a few KB left: enough to start a database, not to finish it
    p = make_pipeline(data_dir=tiny_disk / "data")
    with pytest.raises(RagqaError) as full:
        p.open_kb("k", create=True)
    assert "full" in str(full.value) or "No space" in str(full.value), full.value
    assert [s.name for s in p.list_kbs() if s.error is None] == []  # listing works, nothing half-made listed
    leftovers = [f for f in (tiny_disk / "data" / "kb" / "k").glob("*")] if (tiny_disk / "data" / "kb" / "k").exists() else []
    assert not [f for f in leftovers if f.name == "kb.sqlite"], leftovers
    filler.unlink()
    kb = p.open_kb("k", create=True)  # with room again, it is made as if nothing happened
    assert kb.files() == []
    kb.close()
