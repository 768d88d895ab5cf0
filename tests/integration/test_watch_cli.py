"""`ragqa index DIR --kb K --watch` and `ragqa serve --watch DIR:KB` on real files, with the starter
embedding model: each change is in the KB within seconds; SIGTERM ends it cleanly; kill -9 loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netfixtures import free_port

pytestmark = pytest.mark.integration

WAIT_S = 90  # seconds of silence from ragqa that mean it stalled (its progress lines restart the clock)

LIGHTHOUSE = "The Orvane Lighthouse stands on Kestrel Point. It was built in 1871 by the engineer Marta Quell."
CAT = "The keeper of the Orvane Lighthouse feeds a grey cat called Biscuit, who sleeps in the lamp room."
FERRY = "Visitors reach Kestrel Point by a ferry from Dunmore that runs three times a day."


class Watch:
    """A `ragqa ...` process left running, its stderr in a file, and the KB it writes, read as another process would."""

    def __init__(self, tmp_path: Path, kb: str) -> None:
        self.cache = tmp_path / "cache"
        self.kb = kb
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
                    "RAGQA_CACHE_DIR": str(self.cache), "RAGQA_DATA_DIR": str(self.cache / "data")}
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: str) -> subprocess.Popen:
        log = self.cache / f"run-{len(self.procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "ragqa", *args], stdout=subprocess.DEVNULL, stderr=fh,
                                    env=self.env, text=True)
        self.procs.append((proc, log))
        return proc

    def stderr(self) -> str:
        return self.procs[-1][1].read_text(encoding="utf-8", errors="replace")

    def files(self) -> dict[str, Any]:
        """The KB's ok files: path -> record (empty while the KB is not made yet)."""
        from ragqa.config import load_settings
        from ragqa.errors import InputError
        from ragqa.store import open_kb

        try:
            kb = open_kb(load_settings(None, data_dir=self.cache / "data", cache_dir=self.cache), self.kb)
        except InputError:
            return {}
        try:
            return {r.path: r for r in kb.files() if r.status == "ok"}
        finally:
            kb.close()

    def eventually(self, condition: Callable[[], bool], what: str, quiet: float = WAIT_S) -> None:
        """Wait for ``condition`` while ragqa works towards it: fail if it exits first, or if it
        says nothing new for ``quiet`` seconds (stalled). A busy machine makes the work slower, not
        the test fail: every line ragqa prints (a file added, a sync's progress) restarts the clock."""
        heard, last = len(self.stderr()), time.monotonic()
        while True:
            if condition():
                return
            proc = self.procs[-1][0]
            assert proc.poll() is None, f"ragqa exited ({proc.returncode}) before {what}:\n{self.stderr()}"
            now_heard = len(self.stderr())
            if now_heard != heard:
                heard, last = now_heard, time.monotonic()
            elif time.monotonic() - last > quiet:
                raise AssertionError(f"nothing new from ragqa for {quiet} s, still waiting for {what}\n{self.stderr()}")
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[-1][0]
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def watch(tmp_path: Path):
    w = Watch(tmp_path, "followed")
    yield w
    w.close()


def test_index_watch_follows_adds_edits_renames_and_deletes_then_stops_on_sigterm(watch: Watch, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    a = docs / "lighthouse.md"
    a.write_text(LIGHTHOUSE, encoding="utf-8")
    watch.start("index", str(docs), "--kb", "followed", "--watch", "-v")
    watch.eventually(lambda: "watching 1 folder" in watch.stderr(), "the first sync")
    assert list(watch.files()) == [str(a)]

    b = docs / "cat.md"  # added
    b.write_text(CAT, encoding="utf-8")
    watch.eventually(lambda: str(b) in watch.files(), "the new file in the KB")

    first_hash = watch.files()[str(a)].hash  # edited
    a.write_text(LIGHTHOUSE + "\n\n" + FERRY, encoding="utf-8")
    watch.eventually(lambda: watch.files()[str(a)].hash != first_hash, "the edited file replaced")

    c = docs / "biscuit.md"  # renamed: found by content, copied
    b.rename(c)
    watch.eventually(lambda: str(c) in watch.files() and str(b) not in watch.files(), "the rename")
    # the batch's lines follow its commit: a reader of the KB may see it a moment before them
    renamed = f"renamed   {b} -> {c} (1 chunks, not re-embedded)"
    watch.eventually(lambda: renamed in watch.stderr(), "the rename's line")
    err = watch.stderr()
    assert f"indexed {c}" not in err  # -v logs each file it embeds; the renamed one was copied

    bad = os.path.join(os.fsencode(docs), b"caf\xe9.md")  # a Latin-1 name: one note, the watch goes on
    with open(bad, "wb") as fh:
        fh.write(b"a file whose name is not UTF-8")
    time.sleep(2)
    c.unlink()  # deleted
    watch.eventually(lambda: str(c) not in watch.files(), "the deleted file removed")
    watch.eventually(lambda: "not valid UTF-8" in watch.stderr(), "the note on the odd name")
    assert watch.stderr().count("not valid UTF-8") == 1

    assert watch.stop(signal.SIGTERM) == 0
    err = watch.stderr()
    assert err.rstrip().endswith("followed: stopped watching")
    assert "Traceback" not in err
    assert list(watch.files()) == [str(a)]


def test_kill_9_mid_index_loses_nothing_and_the_next_run_catches_up(watch: Watch, tmp_path: Path) -> None:
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(30):  # enough chunks that the first sync is still running when it is killed
        (docs / f"part-{i:02}.md").write_text(
            "\n\n".join(f"Part {i}, paragraph {j}: the lighthouse keeper wrote line {j} of log {i}. " * 4
                        for j in range(12)), encoding="utf-8")
    watch.start("index", str(docs), "--kb", "followed", "--watch")
    watch.eventually(lambda: "added " in watch.stderr(), "the first file indexed")
    watch.stop(signal.SIGKILL)
    kept = watch.files()  # the KB opens whole after a kill
    assert 0 < len(kept) < 30, f"killed after {len(kept)} of 30 files, not mid-way:\n{watch.stderr()}"
    # while nobody watches: one file deleted, one added
    (docs / "part-00.md").unlink()
    (docs / "late.md").write_text(FERRY, encoding="utf-8")

    watch.start("index", str(docs), "--kb", "followed", "--watch")
    watch.eventually(lambda: "watching 1 folder" in watch.stderr(), "the catch-up sync")
    on_disk = {str(p) for p in docs.iterdir()}
    assert set(watch.files()) == on_disk
    assert watch.stop(signal.SIGINT) == 0  # Ctrl+C ends a watch cleanly too


def test_serve_watch_keeps_a_kb_in_step_while_serving(watch: Watch, tmp_path: Path) -> None:
    docs = tmp_path / "served"
    docs.mkdir()
    (docs / "lighthouse.md").write_text(LIGHTHOUSE, encoding="utf-8")
    watch.start("serve", "--no-page", "--port", str(free_port()), "--watch", f"{docs}:followed")
    watch.eventually(lambda: f"following {docs}" in watch.stderr(), "the server's first sync")
    new = docs / "ferry.md"
    new.write_text(FERRY, encoding="utf-8")
    watch.eventually(lambda: str(new) in watch.files(), "the new file in the served KB")
    # uvicorn shuts down, then raises the signal again for whoever started it to see
    assert watch.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Traceback" not in watch.stderr()


def test_watch_refuses_a_file_or_a_missing_folder_at_the_door(watch: Watch, tmp_path: Path) -> None:
    f = tmp_path / "one.md"
    f.write_text(LIGHTHOUSE, encoding="utf-8")
    for args in (["index", str(f), "--kb", "followed", "--watch"],
                 ["serve", "--no-page", "--watch", f"{tmp_path / 'missing'}:followed"]):
        proc = subprocess.run([sys.executable, "-m", "ragqa", *args], capture_output=True, text=True,
                              env=watch.env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("ragqa: error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
