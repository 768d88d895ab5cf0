"""Knowledge bases that follow their folders: ``ragqa index DIR... --watch``, ``ragqa serve --watch DIR:KB``.

The folders are watched with watchfiles (inotify, through the Rust notify library): nothing polls,
so a watcher with nothing to do uses next to no CPU. Raw change events go through a
``Debouncer``: a path is *settled* once no event came for it and its size and mtime stayed the
same for ``settle`` seconds, so a file still being written is read once, whole. Each settled batch
is one ``Pipeline.index_paths`` call: the new and changed files first, then (``sync``) the KB's
files gone from disk. A renamed file is thus indexed under its new name while the old one is
still in the KB, found there by its content and copied, not re-embedded, and only then is the
old name removed.

A crash or ``kill -9`` loses nothing: every start of a watch (the first, and each restart after a
folder came back or the watch failed) begins with one sync over the folders, which catches up with
whatever changed while nobody watched.

Faults are one line each and the watcher goes on: a watched folder deleted (its documents stay in
the KB until it is back; then it is synced), a file that never settles (said once, read when it
does), a file that cannot be read (recorded as failed, read again on its next change), a file name
that is not UTF-8 (skipped with a note; watchfiles stops on one, so the watch restarts and syncs).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.errors import InputError, RagqaError, one_line
from ragqa.loaders import SUPPORTED_SUFFIXES, expand_paths
from ragqa.paths import is_under, kb_path

if TYPE_CHECKING:
    from ragqa.pipeline import Pipeline
    from ragqa.store import FileRecord, KnowledgeBase, SyncReport

log = logging.getLogger(__name__)

DEFAULT_SETTLE_S = 1.0  # a path unchanged this long is read
DEFAULT_MAX_WAIT_S = 60.0  # a file still changing after this long is said once (and still waited for)
TICK_MS = 500  # how often, while watching, settling is checked and the folders looked at
STEP_MS = 100  # watchfiles: a quiet spell this long ends a set of raw changes (and how often it wakes)
RETRY_S = 30.0  # after a write to the KB failed, sync again this much later
RESTART_PAUSE_S = 1.0  # two failed watches in a row: wait this long before the next

FileCallback = Callable[[str, str, str], None]  # (path, status, detail), as Indexer.index_paths calls it


def file_state(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of ``path``, or None when it is not there: what "settled" compares."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def folder_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``path``, or None when there is none: a folder deleted and
    made again has another inode, and its old watch sees nothing of the new one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


# -------------------------------------------------------------------------- settling


@dataclass
class _Pending:
    first: float  # when its first event came
    last: float  # when it last changed: an event, or another (size, mtime) seen
    state: tuple[int, int] | None
    slow: bool = False  # its one "still being written" line was given


@dataclass
class Settled:
    """What a ``Debouncer.ready`` call hands over: paths there (to index) and gone (to remove),
    and the paths that have just been changing for longer than ``max_wait``."""

    present: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)


class Debouncer:
    """Raw change events in, settled paths out; the clock and the file state are given, so a test
    drives it without sleeping.

    >>> now = [0.0]; sizes = {"a.md": (5, 1)}
    >>> d = Debouncer(1.0, clock=lambda: now[0], state=sizes.get)
    >>> d.add(["a.md"]); now[0] = 0.5; sizes["a.md"] = (9, 2)   # still being written
    >>> d.ready().present, d.ready().present
    ([], [])
    >>> now[0] = 1.6; d.ready().present                           # 1.1 s since it last changed
    ['a.md']
    """

    def __init__(self, settle: float = DEFAULT_SETTLE_S, max_wait: float = DEFAULT_MAX_WAIT_S, *,
                 clock: Callable[[], float] = time.monotonic,
                 state: Callable[[str], tuple[int, int] | None] = file_state) -> None:
        if settle <= 0 or max_wait < settle:
            raise ValueError(f"settle ({settle}) must be > 0 and max_wait ({max_wait}) at least settle")
        self.settle = settle
        self.max_wait = max_wait
        self.clock = clock
        self.state = state
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, paths: Iterable[str]) -> None:
        """Events for ``paths`` (added, modified or deleted: which one does not matter, what is
        on disk when the path settles does)."""
        now = self.clock()
        for path in paths:
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(now, now, self.state(path))
            else:
                entry.last = now

    def ready(self) -> Settled:
        """Take the paths that have settled; note (once each) those changing past ``max_wait``."""
        now = self.clock()
        out = Settled()
        for path, entry in list(self._pending.items()):
            state = self.state(path)
            if state != entry.state:
                entry.state, entry.last = state, now
            if now - entry.last >= self.settle:
                del self._pending[path]
                (out.gone if state is None else out.present).append(path)
            elif not entry.slow and now - entry.first >= self.max_wait:
                entry.slow = True
                out.slow.append(path)
        return out


# -------------------------------------------------------------------------- the watcher


class _OncePerWatch(logging.Filter):
    """Lets a loader's note about a file in the watched folders through once: each sync walks the
    folders again, and would repeat "skipped X: its name is not valid UTF-8" every time."""

    def __init__(self, roots: Sequence[str]) -> None:
        super().__init__()
        self.roots = roots
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(root in message for root in self.roots):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


_FOLLOWING: dict[str, list["FolderWatcher"]] = {}  # KB name -> the watchers running in this process
_FOLLOWING_LOCK = threading.Lock()


def followed(kb: str) -> list[tuple[str, bool]]:
    """The folders this process keeps KB ``kb`` in step with, each with whether it is there now."""
    with _FOLLOWING_LOCK:
        watchers = list(_FOLLOWING.get(kb, ()))
    return [(root, w.present(root)) for w in watchers for root in w.roots]


class FolderWatcher:
    """Keeps knowledge base ``kb`` in step with ``folders`` until ``stop()`` (or, run in the main
    thread, Ctrl+C / a SIGTERM turned into KeyboardInterrupt).

    ``on_file(path, status, detail)`` hears of each change: added, updated, removed, failed (the
    reason is ``detail``), and renamed (``path`` is ``"OLD -> NEW"``). ``on_note(line)`` hears the
    rest: a folder gone or back, a file that does not settle, a write that failed. ``on_ready(report)``
    is told once, after the first sync (before it, no change is missed: the watch is already on).
    """

    def __init__(self, pipeline: "Pipeline", kb: str, folders: Sequence[str | Path], *,
                 on_file: FileCallback | None = None, on_note: Callable[[str], None] | None = None,
                 on_ready: Callable[["SyncReport"], None] | None = None, progress: bool = False,
                 settle: float = DEFAULT_SETTLE_S, max_wait: float = DEFAULT_MAX_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.kb_name = kb
        self.roots = check_folders(folders)
        self.on_file = on_file or (lambda path, status, detail: None)
        self.on_note = on_note or (lambda line: None)
        self.on_ready = on_ready
        self.progress = progress
        self.clock = clock
        self.debouncer = Debouncer(settle, max_wait, clock=clock)
        self.kb: "KnowledgeBase | None" = None
        self._ids = {root: folder_identity(root) for root in self.roots}
        self._stop = threading.Event()
        self._restart = False  # the set of folders there changed: the watch is made anew
        self._sync_due: float | None = 0.0  # when to sync the folders (now: first thing)
        self._first = True
        self._said: set[str] = set()  # notes given and still true (said once)
        self._last_failure = 0.0
        self._thread: threading.Thread | None = None

    # -- life
    def run(self) -> None:
        """Open the KB, sync, and follow the folders until stopped. A KB that cannot be opened, or
        a first sync that fails, raises (RagqaError); later faults are notes and it goes on."""
        try:
            import watchfiles
        except ImportError:  # pragma: no cover - a core dependency
            from ragqa.errors import MissingDependencyError

            raise MissingDependencyError("watchfiles") from None
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # a line per raw set of changes: ours say it better
        self.open()
        quiet = _OncePerWatch(self.roots)
        loaders = logging.getLogger("ragqa.loaders")
        loaders.addFilter(quiet)
        with _FOLLOWING_LOCK:
            _FOLLOWING.setdefault(self.kb_name, []).append(self)
        try:
            while not self._stop.is_set():
                self._watch(watchfiles)
        finally:
            with _FOLLOWING_LOCK:
                _FOLLOWING[self.kb_name].remove(self)
                if not _FOLLOWING[self.kb_name]:
                    del _FOLLOWING[self.kb_name]
            loaders.removeFilter(quiet)
            self.close()

    def open(self) -> None:
        """Open the KB (made if missing) through a handle of the watcher's own."""
        if self.kb is None:
            self.kb = self.pipeline.open_kb(self.kb_name, create=True)

    def close(self) -> None:
        if self.kb is not None:
            self.kb.close()
            self.kb = None

    def _watch(self, watchfiles: Any) -> None:
        """One watch over the folders there now, until it must be made anew (or stop)."""
        self._restart = False
        live = self._live()
        if not live:  # every folder is gone: look for them coming back, at the tick's pace
            if not self._stop.wait(TICK_MS / 1000):
                self.step()
            return
        sets = watchfiles.watch(
            *live, watch_filter=self.wanted, debounce=TICK_MS, step=STEP_MS, stop_event=self._stop,
            rust_timeout=TICK_MS, yield_on_timeout=True, ignore_permission_denied=True,
        )  # a set of changes at least every TICK_MS (empty when there were none)
        try:
            while not self._restart:
                try:
                    changes = next(sets)
                except StopIteration:  # stopped
                    break
                except FileNotFoundError:  # a folder went as the watch started: the next step sees it gone
                    self.step()
                    self._failed_watch()
                    break
                except OSError as exc:  # the system's limit of watches reached, say: try again later
                    self._note_once(f"cannot watch {self.kb_name}'s folders ({exc.strerror or one_line(exc)}); "
                                    f"trying again every {RETRY_S:g} s")
                    self._stop.wait(RETRY_S)
                    break
                except RuntimeError as exc:  # watchfiles' own: a file name that is not UTF-8 ends the watch
                    if "decode path" not in str(exc):  # that one's note comes from the sync's walk
                        self._note_once(f"watching {self.kb_name}'s folders failed ({one_line(exc)}); watching again")
                    self._failed_watch()
                    break
                self.step(path for _, path in changes)
        finally:
            sets.close()
        self._sync_due = self.clock()  # events between two watches are lost: sync over the folders

    def _failed_watch(self) -> None:
        now = self.clock()
        if now - self._last_failure < RESTART_PAUSE_S:
            self._stop.wait(RESTART_PAUSE_S)
        self._last_failure = now

    def start(self) -> threading.Thread:
        """Run in a thread of its own (``ragqa serve --watch``); its faults, even a KB that
        cannot be opened, are notes."""

        def run() -> None:
            try:
                self.run()
            except RagqaError as exc:
                self.on_note(f"not following folders into {self.kb_name}: {exc}")
            except Exception as exc:  # a thread's crash must not pass unseen; the server goes on
                log.exception("the watcher of %s stopped", self.kb_name)
                self.on_note(f"stopped following folders into {self.kb_name}: {one_line(exc)}")

        self._thread = threading.Thread(target=run, name=f"watch-{self.kb_name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Stop at the next tick; with ``timeout``, wait that long for the thread ``start`` made
        (one in the middle of a file may take longer: the store stays whole if the process ends)."""
        self._stop.set()
        if timeout is not None and self._thread is not None:
            self._thread.join(timeout)

    def present(self, root: str) -> bool:
        return self._ids.get(root) is not None

    def _live(self) -> list[str]:
        """The watched folders that are there now."""
        return [root for root in self.roots if self.present(root)]

    # -- one tick: what the watch saw, then what has settled
    def step(self, changes: Iterable[str] = ()) -> None:
        """Take raw changes (paths), look at the folders, and apply whatever has settled."""
        self.debouncer.add(changes)
        self._check_folders()
        if self._sync_due is not None and self.clock() >= self._sync_due:
            self.sync()
        settled = self.debouncer.ready()
        for path in settled.slow:
            self.on_note(f"{path}: still changing after {self.debouncer.max_wait:g} s; it is read once it settles")
        if settled.present or settled.gone:
            self.apply(settled.present, settled.gone)

    def _check_folders(self) -> None:
        for root in self.roots:
            now, before = folder_identity(root), self._ids[root]
            if now == before:
                continue
            self._ids[root] = now
            self._restart = True
            if now is None:
                self.on_note(f"watched folder {root} is gone; its documents stay in {self.kb_name} until it is back "
                             f"(or: ragqa kb remove {self.kb_name} {root})")
            else:
                self.on_note(f"watched folder {root} is {'back' if before is None else 'a new folder'}; syncing it")
                self._sync_due = self.clock()

    def wanted(self, change: Any, path: str) -> bool:
        """The watch's filter: a change the KB may care about. Hidden files and folders (and editor
        backups ``name~``) are left out as the folder walk leaves them; a deletion is kept whatever
        its name (it may be a folder of indexed files); the folders themselves are looked at apart."""
        root = next((r for r in self.roots if is_under(Path(path), Path(r))), None)
        if root is None or path == root:
            return False
        parts = Path(path).relative_to(root).parts
        if any(p.startswith(".") or p.endswith("~") for p in parts):
            return False
        if getattr(change, "name", "") == "deleted":
            return True
        return Path(path).suffix.lower() in SUPPORTED_SUFFIXES or os.path.isdir(path)

    # -- writing to the KB
    def sync(self) -> None:
        """One sync over the folders there: new and changed files indexed, deleted ones removed."""
        self._sync_due = None
        live = self._live()
        files = [f for root in live for f in self._files_under(root)]
        first, self._first = self._first, False
        before = {} if first else {r.path: r for r in self._kb.files()}
        lines: list[tuple[str, str, str]] = []
        try:
            report = self.pipeline.index_paths(
                self._kb, live, files=files, sync=True, progress=self.progress,
                on_file=(self.on_file if first else lambda *line: lines.append(line)), on_wait=self.on_note,
            )
        except (RagqaError, OSError) as exc:
            if first:
                raise
            self._write_failed(exc)
            return
        self._said.discard("write")
        if first:
            if self.on_ready:
                self.on_ready(report)
            return
        self._tell(lines, before)

    def apply(self, present: Sequence[str], gone: Sequence[str]) -> None:
        """One settled batch: ``present`` (files, or folders: their files) indexed, then the KB's
        files at or under ``gone`` removed if they are gone from disk, in one write."""
        before = {r.path: r for r in self._kb.files()}
        files: dict[Path, None] = {}
        for p in present:
            if os.path.isdir(p):
                files.update(dict.fromkeys(self._files_under(p, quiet=True)))
            elif os.path.isfile(p) and self.wanted(None, p):
                files[Path(p)] = None
        live = self._live()
        # what the KB has at or under a gone path, in a folder still there (a folder gone keeps its documents)
        gone = [g for g in gone if any(is_under(Path(g), Path(root)) for root in live)]
        removed = any(is_under(Path(path), Path(g)) for path in before for g in gone)
        if not files and not removed:
            return
        lines: list[tuple[str, str, str]] = []
        try:
            self.pipeline.index_paths(self._kb, live, files=list(files), sync=removed, progress=self.progress,
                                      on_file=lambda *line: lines.append(line), on_wait=self.on_note,
                                      retry_failed=True)
        except (RagqaError, OSError) as exc:
            self._write_failed(exc)
            return
        self._said.discard("write")
        self._tell(lines, before)

    def _files_under(self, folder: str, *, quiet: bool = False) -> list[Path]:
        """The supported files under ``folder``: none yet is no fault; one that cannot be read is a
        note (once; none when ``quiet``)."""
        try:
            return expand_paths([folder])
        except InputError as exc:
            if not quiet and not os.access(folder, os.R_OK | os.X_OK):
                self._note_once(str(exc))
            return []

    def _tell(self, lines: list[tuple[str, str, str]], before: dict[str, "FileRecord"]) -> None:
        """The index run's lines to ``on_file``: a file added with the bytes of one removed in the
        same run is one ``renamed`` line; a failure already recorded with the same reason, none."""
        added = [kb_path(p) for p, status, _ in lines if status == "added"]
        gone = [p for p, status, _ in lines if status == "removed"]
        renamed: dict[str, str] = {}  # new path -> old
        if added and gone:
            after = {r.path: r for r in self._kb.files()}
            for old in gone:
                was = before.get(old)
                new = next((p for p in added if p not in renamed and p in after and was is not None
                            and (after[p].hash, after[p].parser) == (was.hash, was.parser)), None)
                if new is not None:
                    renamed[new] = old
        olds = set(renamed.values())
        for path, status, detail in lines:
            real = kb_path(path)
            if status == "unchanged" or (status == "removed" and path in olds):
                continue
            if status == "failed":
                was = before.get(real)
                if was is not None and was.status == "failed" and was.error == detail:
                    continue
            if status == "updated" and before.get(real) is not None and before[real].status == "failed":
                status = "added"  # in the KB at last (a permission fixed)
            if status == "added" and real in renamed:
                self.on_file(f"{renamed[real]} -> {path}", "renamed", f"{detail}, not re-embedded")
                continue
            self.on_file(path, status, detail)

    def _write_failed(self, exc: BaseException) -> None:
        """A write that failed (disk full, the KB dropped meanwhile): said once, synced again later."""
        if "write" not in self._said:
            self._said.add("write")
            self.on_note(f"could not update {self.kb_name} ({one_line(exc)}); trying again in {RETRY_S:g} s")
        self._sync_due = self.clock() + RETRY_S

    def _note_once(self, line: str) -> None:
        """A note that a sync or a watch would repeat each time: given once per watcher."""
        if line not in self._said:
            self._said.add(line)
            self.on_note(line)

    @property
    def _kb(self) -> "KnowledgeBase":
        if self.kb is None:
            raise RuntimeError("FolderWatcher.open() (or run()) first: it opens the knowledge base")
        return self.kb


def check_folders(folders: Sequence[str | Path]) -> list[str]:
    """The folders to watch, as the KB names them; a file, a missing path or a name that is not
    UTF-8 is an InputError."""
    if not folders:
        raise InputError("give at least one folder to watch")
    out: list[str] = []
    for folder in folders:
        path = Path(folder).expanduser()
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{os.fsencode(path).decode('utf-8', 'backslashreplace')}: the name is not valid UTF-8 "
                             "(rename the folder)") from None
        if not path.is_dir():
            kind = "a file; --watch follows folders (give its folder)" if path.exists() else "no such folder"
            raise InputError(f"{path}: {kind}")
        root = kb_path(path)
        if root not in out:
            out.append(root)
    return out


def parse_watch_spec(spec: str) -> tuple[str, str]:
    """``serve --watch DIR:KB`` -> (the folder as the KB names it, the KB name); both checked.

    >>> parse_watch_spec("/tmp:notes")
    ('/tmp', 'notes')
    """
    from ragqa.store import check_kb_name

    folder, sep, kb = spec.rpartition(":")
    if not sep or not folder or not kb:
        raise InputError(f"--watch {spec!r}: give DIR:KB, a folder and the knowledge base that follows it "
                         "(--watch ~/notes:notes)")
    return check_folders([folder])[0], check_kb_name(kb)


def start_watchers(pipeline: "Pipeline", specs: Sequence[tuple[str, str]], *, on_file: FileCallback | None = None,
                   on_note: Callable[[str], None] | None = None) -> list[FolderWatcher]:
    """One watcher thread per KB over its folders (``serve --watch DIR:KB``, parsed); -> the watchers."""
    by_kb: dict[str, list[str]] = {}
    for folder, kb in specs:
        by_kb.setdefault(kb, []).append(folder)

    def ready(kb: str, folders: list[str]) -> Callable[["SyncReport"], None]:
        def say(report: "SyncReport") -> None:
            if on_note:
                on_note(f"{kb}: {report.line()}; following {', '.join(folders)}")
        return say

    watchers = [FolderWatcher(pipeline, kb, folders, on_file=on_file, on_note=on_note, on_ready=ready(kb, folders))
                for kb, folders in by_kb.items()]
    for watcher in watchers:
        watcher.start()
    return watchers
