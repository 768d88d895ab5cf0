"""ragqa.watch: the debouncer on a fake clock, and the watcher driven step by step over real files
(a real local KB, fake embeddings that count what they embed); one test runs the real watch thread."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ragqa.errors import InputError
from ragqa.watch import Debouncer, FolderWatcher, followed, parse_watch_spec


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -------------------------------------------------------------------------- the debouncer


def make_debouncer(settle: float = 1.0, max_wait: float = 10.0) -> tuple[Debouncer, Clock, dict[str, Any]]:
    clock, files = Clock(), {}
    return Debouncer(settle, max_wait, clock=clock, state=files.get), clock, files


def test_a_path_settles_once_its_size_and_mtime_stay_the_same_for_settle_seconds() -> None:
    d, clock, files = make_debouncer()
    files["a.md"] = (10, 1)
    d.add(["a.md"])
    clock.advance(0.6)
    files["a.md"] = (20, 2)  # still being written: the wait starts again
    assert d.ready().present == []
    clock.advance(0.6)
    assert d.ready().present == []  # 0.6 s since it last changed
    clock.advance(0.5)
    assert d.ready().present == ["a.md"]
    assert d.ready().present == [] and len(d) == 0  # handed over once


def test_a_new_event_restarts_the_wait_even_when_size_and_mtime_look_the_same() -> None:
    d, clock, files = make_debouncer()
    files["a.md"] = (10, 1)
    d.add(["a.md"])
    clock.advance(0.9)
    d.add(["a.md"])
    clock.advance(0.9)
    assert d.ready().present == []
    clock.advance(0.2)
    assert d.ready().present == ["a.md"]


def test_a_path_not_there_when_it_settles_is_gone() -> None:
    d, clock, files = make_debouncer()
    files["new.md"] = (10, 1)  # old.md was renamed new.md: the events come after it
    d.add(["old.md", "new.md"])
    clock.advance(1.0)
    settled = d.ready()
    assert (settled.present, settled.gone) == (["new.md"], ["old.md"])


def test_a_file_that_never_settles_is_said_once_and_never_handed_over_half_written() -> None:
    d, clock, files = make_debouncer(settle=1.0, max_wait=5.0)
    d.add(["big.pdf"])
    slow = []
    for i in range(40):  # written a little every half second for 20 s
        files["big.pdf"] = (i, i)
        clock.advance(0.5)
        settled = d.ready()
        assert settled.present == []
        slow += settled.slow
    assert slow == ["big.pdf"]
    clock.advance(1.0)  # then it stops changing
    assert d.ready().present == ["big.pdf"]


def test_settle_and_max_wait_are_checked_when_the_debouncer_is_made() -> None:
    with pytest.raises(ValueError, match="settle"):
        Debouncer(0)
    with pytest.raises(ValueError, match="max_wait"):
        Debouncer(2.0, 1.0)


# -------------------------------------------------------------------------- the watcher, step by step


class Lines:
    """What a watcher told: its per-file lines and its notes."""

    def __init__(self) -> None:
        self.files: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self.reports: list[Any] = []

    def statuses(self) -> list[tuple[str, str]]:
        return [(status, path) for path, status, _ in self.files]


@pytest.fixture
def watched(tmp_path: Path, make_pipeline, counting_embeddings_cls):
    """A folder with one document, a watcher over it (synced, fake clock), and helpers."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Orvane lighthouse was built in 1871 by Marta Quell.", encoding="utf-8")
    embeddings = counting_embeddings_cls()
    pipeline = make_pipeline(embeddings=embeddings)
    clock, lines = Clock(), Lines()
    watcher = FolderWatcher(pipeline, "notes", [docs], on_file=lambda *line: lines.files.append(line),
                            on_note=lines.notes.append, on_ready=lines.reports.append, settle=1.0, max_wait=5.0,
                            clock=clock)
    watcher.open()
    watcher.step()  # the first step syncs
    lines.files.clear()

    class W:
        pass

    w = W()
    w.docs, w.watcher, w.clock, w.lines, w.embeddings = docs, watcher, clock, lines, embeddings

    def settle(*changed: Path) -> None:
        """Changes seen by the watch, then time enough for them to settle."""
        watcher.step(str(p) for p in changed)
        clock.advance(1.1)
        watcher.step()

    def paths() -> dict[str, int]:
        return {r.path: r.chunks for r in watcher.kb.files() if r.status == "ok"}

    w.settle, w.paths = settle, paths
    yield w
    watcher.close()


def test_the_first_step_syncs_the_folder_and_reports_it(watched) -> None:
    assert [r.added for r in watched.lines.reports] == [1]
    assert list(watched.paths()) == [str(watched.docs / "a.md")]


def test_a_new_file_is_indexed_once_it_settles(watched) -> None:
    new = watched.docs / "b.md"
    new.write_text("Biscuit the cat sleeps in the lamp room.", encoding="utf-8")
    watched.watcher.step([str(new)])
    watched.clock.advance(0.5)
    watched.watcher.step()
    assert str(new) not in watched.paths()  # not settled yet
    watched.clock.advance(0.6)
    watched.watcher.step()
    assert str(new) in watched.paths()
    assert watched.lines.statuses() == [("added", str(new))]


def test_an_edited_file_is_replaced(watched) -> None:
    a = watched.docs / "a.md"
    a.write_text("The Orvane lighthouse was built in 1871 by Marta Quell.\n\nIts lamp is seen 31 km away.",
                 encoding="utf-8")
    watched.settle(a)
    assert watched.lines.statuses() == [("updated", str(a))]
    chunk_text = " ".join(d.page_content for d in watched.watcher.kb.iter_chunks())
    assert "31 km" in chunk_text


def test_a_renamed_file_is_one_line_and_copied_not_embedded_again(watched) -> None:
    """The new name is indexed before the old one is removed, so its chunks are found by content."""
    embedded = watched.embeddings.documents_embedded
    old, new = watched.docs / "a.md", watched.docs / "renamed.md"
    old.rename(new)
    watched.settle(old, new)
    assert watched.lines.statuses() == [("renamed", f"{old} -> {new}")]
    assert list(watched.paths()) == [str(new)]
    assert watched.embeddings.documents_embedded == embedded


def test_a_folder_renamed_inside_the_watched_one_moves_its_files_without_embedding(watched) -> None:
    sub = watched.docs / "sub"
    sub.mkdir()
    (sub / "x.md").write_text("The ferry from Dunmore runs three times a day.", encoding="utf-8")
    watched.settle(sub)  # a new folder: its files are found by walking it
    assert str(sub / "x.md") in watched.paths()
    embedded = watched.embeddings.documents_embedded
    moved = watched.docs / "moved"
    sub.rename(moved)
    watched.settle(sub, moved)
    assert set(watched.paths()) == {str(watched.docs / "a.md"), str(moved / "x.md")}
    assert watched.embeddings.documents_embedded == embedded
    assert watched.lines.statuses()[-1] == ("renamed", f"{sub / 'x.md'} -> {moved / 'x.md'}")


def test_a_deleted_file_is_removed(watched) -> None:
    a = watched.docs / "a.md"
    a.unlink()
    watched.settle(a)
    assert watched.paths() == {}
    assert watched.lines.statuses() == [("removed", str(a))]


def test_hidden_files_backups_and_other_types_are_not_wanted(watched) -> None:
    w, d = watched.watcher, watched.docs
    (d / "folder").mkdir()

    class Change:
        def __init__(self, name: str) -> None:
            self.name = name

    added, deleted = Change("added"), Change("deleted")
    assert w.wanted(added, str(d / "b.md"))
    assert w.wanted(added, str(d / "folder"))  # a folder: walked when it settles
    assert not w.wanted(added, str(d / ".b.md"))
    assert not w.wanted(added, str(d / ".git" / "b.md"))
    assert not w.wanted(added, str(d / "b.md~"))
    assert not w.wanted(added, str(d / "b.tmp"))
    assert w.wanted(deleted, str(d / "gone-folder"))  # may have been a folder of indexed files
    assert not w.wanted(added, str(d))  # the folder itself is looked at apart


def test_a_file_still_written_after_max_wait_is_one_note_and_is_read_once_when_whole(watched) -> None:
    big = watched.docs / "big.md"
    embedded = watched.embeddings.documents_embedded
    for i in range(14):  # a line every half second for 7 s (max_wait 5 s)
        with open(big, "a", encoding="utf-8") as fh:
            fh.write(f"Line {i} of a document that is still being written.\n")
        os.utime(big, ns=(i * 10**9, i * 10**9))  # mtime moves on with each write, however fast
        watched.watcher.step([str(big)])
        watched.clock.advance(0.5)
        watched.watcher.step()
        assert str(big) not in watched.paths()
    assert [n for n in watched.lines.notes if "still changing" in n] == [f"{big}: still changing after 5 s; it is read once it settles"]
    watched.clock.advance(1.0)
    watched.watcher.step()
    assert str(big) in watched.paths()
    assert watched.lines.statuses() == [("added", str(big))]
    assert watched.embeddings.documents_embedded - embedded == watched.paths()[str(big)]  # read once, whole


def test_a_watched_folder_deleted_keeps_its_documents_and_is_synced_when_back(watched) -> None:
    a = watched.docs / "a.md"
    shutil.rmtree(watched.docs)
    watched.settle(a, watched.docs)
    assert list(watched.paths()) == [str(a)]  # nothing lost
    assert [n for n in watched.lines.notes if "is gone" in n] == [
        f"watched folder {watched.docs} is gone; its documents stay in notes until it is back "
        f"(or: ragqa kb remove notes {watched.docs})"]
    assert watched.lines.files == []
    assert not watched.watcher.present(str(watched.docs))
    watched.docs.mkdir()
    (watched.docs / "new.md").write_text("The regatta is on the first Sunday of July.", encoding="utf-8")
    watched.watcher.step()
    assert any("is back" in n for n in watched.lines.notes)
    assert list(watched.paths()) == [str(watched.docs / "new.md")]  # synced: the new one in, a.md out
    assert sorted(watched.lines.statuses()) == [("added", str(watched.docs / "new.md")), ("removed", str(a))]


def test_a_file_that_cannot_be_read_is_one_note_and_is_read_when_it_can_be(watched, monkeypatch) -> None:
    locked = watched.docs / "locked.md"
    locked.write_text("The keeper's cat is called Biscuit.", encoding="utf-8")
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    watched.settle(locked)
    watched.settle(locked)  # chmod again, the same failure: no second line
    assert watched.lines.files == [(str(locked), "failed", f"{locked}: permission denied")]
    assert str(locked) not in watched.paths()
    monkeypatch.setattr(Path, "read_bytes", real_read)
    watched.settle(locked)  # chmod +r: size and mtime are the same, it is read again all the same
    assert str(locked) in watched.paths()
    assert watched.lines.statuses()[-1] == ("added", str(locked))


def test_a_failed_write_is_one_note_and_a_later_sync_catches_up(watched, monkeypatch) -> None:
    from ragqa.errors import RagqaError

    pipeline = watched.watcher.pipeline
    real = pipeline.index_paths

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RagqaError("disk full")

    new = watched.docs / "b.md"
    new.write_text("Biscuit the cat sleeps in the lamp room.", encoding="utf-8")
    monkeypatch.setattr(pipeline, "index_paths", broken)
    watched.settle(new)
    watched.settle(new)
    assert [n for n in watched.lines.notes if "disk full" in n] == [
        "could not update notes (disk full); trying again in 30 s"]
    monkeypatch.setattr(pipeline, "index_paths", real)
    watched.clock.advance(30)
    watched.watcher.step()
    assert str(new) in watched.paths()


# -------------------------------------------------------------------------- arguments


def test_watch_specs_and_folders_are_checked_at_the_door(tmp_path: Path) -> None:
    (tmp_path / "f.md").write_text("x", encoding="utf-8")
    assert parse_watch_spec(f"{tmp_path}:notes") == (str(tmp_path), "notes")
    with pytest.raises(InputError, match="DIR:KB"):
        parse_watch_spec(str(tmp_path))
    with pytest.raises(InputError, match="no such folder"):
        parse_watch_spec(f"{tmp_path / 'missing'}:notes")
    with pytest.raises(InputError, match="follows folders"):
        parse_watch_spec(f"{tmp_path / 'f.md'}:notes")
    with pytest.raises(InputError):
        parse_watch_spec(f"{tmp_path}:bad/name")


# -------------------------------------------------------------------------- the real watch, in a thread


def wait_for(condition: Any, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_the_watch_thread_follows_real_changes_and_survives_a_name_that_is_not_utf8(tmp_path: Path, make_pipeline,
                                                                                     caplog) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    pipeline = make_pipeline()
    lines = Lines()
    watcher = FolderWatcher(pipeline, "live", [docs], on_file=lambda *line: lines.files.append(line),
                            on_note=lines.notes.append, on_ready=lines.reports.append)
    watcher.start()
    try:
        assert wait_for(lambda: lines.reports), lines.notes
        assert followed("live") == [(str(docs), True)]
        # watchfiles ends its watch on such a name; the watcher watches again and syncs (twice here)
        bad = os.path.join(os.fsencode(docs), b"bad\xff.md")
        for text in (b"a name that is not UTF-8", b"written again"):
            with open(bad, "wb") as fh:
                fh.write(text)
            time.sleep(1.5)
        good = docs / "good.md"
        good.write_text("The Quillon bridge has seven stone arches.", encoding="utf-8")
        assert wait_for(lambda: ("added", str(good)) in lines.statuses()), (lines.files, lines.notes)
        said = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
        assert said == [f"skipped {docs}/bad\\xff.md: its name is not valid UTF-8 (rename it)"]  # once
        assert lines.notes == []
    finally:
        watcher.stop(timeout=10)
    assert not watcher._thread.is_alive()
    assert followed("live") == []


def test_the_page_header_names_the_folders_a_kb_follows(tmp_path: Path, make_pipeline, monkeypatch) -> None:
    from ragqa import watch, web

    here, gone = tmp_path / "notes", tmp_path / "old_notes"
    here.mkdir()
    gone.mkdir()
    watcher = FolderWatcher(make_pipeline(), "notes", [here, gone])
    gone.rmdir()
    watcher._check_folders()
    monkeypatch.setitem(watch._FOLLOWING, "notes", [watcher])
    assert web._following("notes") == (f" · follows 跟随文件夹 {web._markdown_escape(str(here))}, "
                                       f"{web._markdown_escape(str(gone))} (gone 已不在)")
    assert web._following("other") == ""
