"""Background ingest that keeps what it accepts: a durable queue of upload jobs.

An upload is written down before it is answered with 202: the job and each of its files are rows
of ``<data_dir>/ingest.sqlite`` (``JobStore``) naming the staged copy of each file (paths
relative to the data folder, so a moved or restored data folder keeps working). From then on each
file ends in the KB or is reported failed with a reason, through crashes and restarts:

- one worker thread per KB takes that KB's jobs in order, file by file (the KB's own write lock
  orders it against ``ragqa index`` in another process), and records each file's outcome as it
  lands; questions go on meanwhile;
- a fault that passes (the embedding server unreachable, the disk full) is retried with backoff
  (``RETRY_DELAYS``); a file still failing after the last try, or one that can never be read
  (unsupported, damaged, empty) is ``failed`` with its reason and its copy is removed;
- at start (``resume``) the jobs that were queued or running are taken up again (a file that was
  mid-way starts over: the KB commits a file whole or not at all), and a staged file that no job
  names is removed;
- ``stop`` (SIGTERM) lets the file in progress finish and leaves the rest queued for the next start.

``GET /v1/jobs/{id}`` reads the job from the store, so a job id answers after a restart too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.errors import DiskFull, InputError, RagqaError, ShuttingDown, is_disk_full, one_line

if TYPE_CHECKING:
    from ragqa.pipeline import Pipeline

log = logging.getLogger(__name__)

STORE = "ingest.sqlite"
KEEP_FINISHED = 1000  # finished jobs kept for GET /v1/jobs; older ones are forgotten
RETRY_DELAYS = (2.0, 5.0, 15.0, 60.0)  # seconds before each retry of a file that failed for a passing reason
DONE = ("added", "updated", "unchanged")
GONE = (*DONE, "dismissed")  # not listed as an open upload
PENDING = ("queued", "running", "retrying")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    created REAL NOT NULL, finished REAL, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, n INTEGER NOT NULL, name TEXT NOT NULL,
    staged TEXT, status TEXT NOT NULL DEFAULT 'queued', chunks INTEGER NOT NULL DEFAULT 0, error TEXT,
    tries INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job, n)
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(status, seq);
"""


@dataclass
class JobFile:
    name: str
    staged: str | None = None  # the staged copy, relative to the data folder (None once kept or gone)
    status: str = "queued"  # queued | running | retrying | added | updated | unchanged | failed
    chunks: int = 0
    error: str | None = None
    tries: int = 0
    next_try: float = 0.0
    progress: dict[str, list[int]] = field(default_factory=dict)  # while it runs: pages read, chunks embedded


@dataclass
class Job:
    id: str
    kb: str
    files: list[JobFile]
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        done = sum(1 for f in self.files if f.status not in PENDING)
        return {
            "id": self.id, "object": "ingest.job", "kb": self.kb, "status": self.status,
            "files": [{"name": f.name, "status": f.status, "chunks": f.chunks, "error": f.error,
                       **({"tries": f.tries} if f.tries else {}),
                       **({"progress": f.progress} if f.status == "running" and f.progress else {})}
                      for f in self.files],
            "progress": {"files_done": done, "files_total": len(self.files)},
            "error": self.error, "created": int(self.created),
            "finished": int(self.finished) if self.finished else None,
        }


class JobStore:
    """The jobs and their files in SQLite (WAL): each change one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise RagqaError(f"cannot keep the ingest queue in {path}: {_reason(exc)}") from None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                kind = DiskFull if is_disk_full(exc) else RagqaError
                raise kind(f"cannot write the ingest queue {self.path}: {_reason(exc)}") from None

    def add(self, job: Job) -> None:
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute("INSERT INTO jobs (id, kb, status, created, seq) VALUES (?, ?, ?, ?, ?)",
                       (job.id, job.kb, job.status, job.created, seq))
            db.executemany("INSERT INTO files (job, n, name, staged, status) VALUES (?, ?, ?, ?, ?)",
                           [(job.id, n, f.name, f.staged, f.status) for n, f in enumerate(job.files)])

    def save_file(self, job: Job, n: int) -> None:
        f = job.files[n]
        with self._tx() as db:
            db.execute("UPDATE files SET staged = ?, status = ?, chunks = ?, error = ?, tries = ?, next_try = ? "
                       "WHERE job = ? AND n = ?", (f.staged, f.status, f.chunks, f.error, f.tries, f.next_try,
                                                   job.id, n))

    def save_job(self, job: Job) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = ?, error = ?, finished = ? WHERE id = ?",
                       (job.status, job.error, job.finished, job.id))
            if job.finished is not None:  # forget the oldest finished jobs past KEEP_FINISHED
                db.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished IS NOT NULL "
                           "ORDER BY seq DESC LIMIT -1 OFFSET ?)", (KEEP_FINISHED,))

    def load(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT id, kb, status, error, created, finished FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
            if row is None:
                return None
            files = self._db.execute("SELECT name, staged, status, chunks, error, tries, next_try FROM files "
                                     "WHERE job = ? ORDER BY n", (job_id,)).fetchall()
        return Job(row[0], row[1], [JobFile(*f) for f in files], row[2], row[3], row[4], row[5])

    def unfinished(self) -> list[Job]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE finished IS NULL ORDER BY seq")]
        return [job for job in map(self.load, ids) if job is not None]

    def staged_paths(self) -> set[str]:
        """Every staged copy a file still waiting names (relative to the data folder)."""
        with self._lock:
            return {r[0] for r in self._db.execute(
                "SELECT staged FROM files WHERE staged IS NOT NULL AND status IN ('queued', 'running', 'retrying')")}

    def open_uploads(self, kb: str) -> list[dict[str, Any]]:
        """The uploads of ``kb`` not (yet) in it: each name's latest file, when it is still waiting
        or failed (a later success or a KB that holds it hides an older failure)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.name, f.status, f.error, f.tries FROM files f JOIN jobs j ON j.id = f.job WHERE j.kb = ? "
                "ORDER BY j.seq, f.n", (kb,)).fetchall()
        latest: dict[str, tuple[str, str | None, int]] = {}
        for name, status, error, tries in rows:
            latest[name] = (status, error, tries)
        return [{"source": name, "status": status, "error": error, **({"tries": tries} if tries else {})}
                for name, (status, error, tries) in latest.items() if status not in GONE]

    def dismiss(self, kb: str, name: str | None = None) -> int:
        """Stop listing failed uploads of ``kb`` (of file ``name``; all when None): someone deleted
        them. -> how many were dismissed."""
        with self._tx() as db:
            query = ("UPDATE files SET status = 'dismissed' WHERE status = 'failed' "
                     "AND job IN (SELECT id FROM jobs WHERE kb = ?)")
            args: tuple[Any, ...] = (kb,)
            if name is not None:
                query, args = query + " AND name = ?", (kb, name)
            return db.execute(query, args).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


class IngestJobs:
    """The durable ingest queue of one server: one worker thread per KB (started on its first job)."""

    def __init__(self, pipeline: "Pipeline", store: JobStore | None = None) -> None:
        self.pipeline = pipeline
        self.data_dir = Path(pipeline.settings.data_dir)
        self.store = store or JobStore(self.data_dir / STORE)
        self._queues: dict[str, list[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._live: dict[str, Job] = {}  # jobs a worker holds: GET answers from memory while they run
        self._cond = threading.Condition()
        self._stopping = False

    # -- accepting
    def submit(self, kb: str, staged: list[Any]) -> Job:
        """A job for files already received (``Staged``: name + path in the staging folder),
        written down before this returns: from here on it survives a crash."""
        if self._stopping:
            raise ShuttingDown("the server is shutting down: upload again in a moment")
        job = Job(uuid.uuid4().hex, kb, [JobFile(s.name, self._relative(Path(s.path))) for s in staged])
        self.store.add(job)
        self._enqueue(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            live = self._live.get(job_id)
        return live if live is not None else self.store.load(job_id)

    def dismiss(self, kb: str, name: str | None = None) -> bool:
        """Stop listing ``kb``'s failed upload ``name`` (all of them when None); -> whether any was."""
        return self.store.dismiss(kb, name) > 0

    def open_uploads(self, kb: str) -> list[dict[str, Any]]:
        """The uploads of ``kb`` still waiting or failed, as the store has them, with the jobs in
        hand told as they are now (their latest step may not be written yet: a full disk)."""
        listed = {u["source"]: u for u in self.store.open_uploads(kb)}
        with self._cond:
            live = [job for job in self._live.values() if job.kb == kb]
        for job in live:
            for f in job.files:
                if f.status in GONE or (f.status == "failed" and f.name not in listed):
                    listed.pop(f.name, None)  # done, or a failure already dismissed
                else:
                    listed[f.name] = {"source": f.name, "status": f.status, "error": f.error,
                                      **({"tries": f.tries} if f.tries else {})}
        return list(listed.values())

    # -- start and stop
    def resume(self) -> int:
        """Take up the jobs a previous run left queued or running, and remove staged files no job
        names; -> how many jobs were resumed."""
        jobs = self.store.unfinished()
        for job in jobs:
            for n, f in enumerate(job.files):
                if f.status == "running":  # stopped mid-way: the KB committed all of it or none
                    f.status = "queued"
                    self.store.save_file(job, n)
            job.status = "queued"
            self._enqueue(job)
        self._sweep_staging()
        if jobs:
            log.warning("ingest: resuming %d job(s) left from the last run", len(jobs))
        return len(jobs)

    def stop(self, timeout: float = 30.0) -> None:
        """Let each worker finish the file it is on, then stop; what is left stays queued."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _sweep_staging(self) -> None:
        folder = self.pipeline.uploads.root / ".staging"
        if not folder.is_dir():
            return
        wanted = self.store.staged_paths()
        for path in folder.iterdir():
            if self._relative(path) not in wanted:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.data_dir.resolve()))
        except ValueError:
            return str(path)

    def _absolute(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.data_dir / path

    # -- working
    def _enqueue(self, job: Job) -> None:
        with self._cond:
            self._queues.setdefault(job.kb, []).append(job)
            self._live[job.id] = job
            worker = self._workers.get(job.kb)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._work, args=(job.kb,), name=f"ingest-{job.kb}", daemon=True)
                self._workers[job.kb] = worker
                worker.start()
            self._cond.notify_all()

    def _next(self, kb: str) -> Job | None:
        with self._cond:
            while not self._stopping:
                if self._queues.get(kb):
                    return self._queues[kb][0]
                self._cond.wait()
            return None

    def _work(self, kb: str) -> None:
        while (job := self._next(kb)) is not None:
            try:
                self._run(job)
            except ShuttingDown:
                return  # the rest of the job stays queued in the store
            except Exception as exc:  # a bug: the job fails with a line, the worker goes on
                log.error("ingest job %s failed", job.id, exc_info=exc)
                self._finish(job, "failed", one_line(exc))
            with self._cond:
                if self._queues.get(kb) and self._queues[kb][0] is job:
                    self._queues[kb].pop(0)
                if job.finished is not None:
                    self._live.pop(job.id, None)

    def _save_file(self, job: Job, n: int) -> None:
        """Record a file's progress; a store that cannot be written (a full disk) loses only this
        step: the job goes on in memory, and a restart before the next write redoes the file
        (the KB then finds it unchanged)."""
        try:
            self.store.save_file(job, n)
        except RagqaError as exc:
            log.warning("ingest: %s; going on without recording it", exc)

    def _run(self, job: Job) -> None:
        job.status = "running"
        try:
            self.store.save_job(job)
        except RagqaError as exc:
            log.warning("ingest: %s; going on without recording it", exc)
        while True:
            waiting = [n for n, f in enumerate(job.files) if f.status in PENDING]
            if not waiting:
                break
            n = min(waiting, key=lambda i: job.files[i].next_try)
            self._sleep_until(job.files[n].next_try)
            self._one(job, n)
        failed = [f for f in job.files if f.status == "failed"]
        error = None if len(failed) < len(job.files) else (failed[0].error if len(failed) == 1 else
                                                           f"all {len(failed)} files failed")
        self._finish(job, "failed" if error else "done", error)

    def _sleep_until(self, when: float) -> None:
        with self._cond:
            while not self._stopping and time.time() < when:
                self._cond.wait(min(1.0, when - time.time()))
            if self._stopping:
                raise ShuttingDown("stopping")

    def _one(self, job: Job, n: int) -> None:
        """One file of ``job``: kept in the uploads folder, indexed, its outcome written down."""
        from ragqa.loaders import check_supported

        if self._stopping:
            raise ShuttingDown("stopping")
        f = job.files[n]
        uploads = self.pipeline.uploads
        kept = uploads.folder(job.kb) / uploads.safe_name(f.name)
        f.status = "running"
        self._save_file(job, n)
        try:
            check_supported(Path(f.name))  # an unsupported type fails alone; the others go on
            if f.staged is not None:
                staged = self._absolute(f.staged)
                if staged.exists():
                    uploads.keep(job.kb, staged, f.name, move=True)
                elif not kept.exists():  # moved before a crash, then lost: nothing left to read
                    raise InputError(f"{f.name}: the uploaded copy is gone")
                f.staged = None
                self._save_file(job, n)
            outcome: dict[str, str] = {}
            f.progress = {}
            self.pipeline.ingest(
                job.kb, [kept], on_file=lambda path, status, detail: outcome.update(status=status, detail=detail),
                on_page=lambda path, done, total: f.progress.update(pages=[done, total]),
                on_chunks=lambda path, done, total: f.progress.update(chunks=[done, total]))
            status, detail = outcome.get("status", "failed"), outcome.get("detail", "not read")
            if status == "failed":
                raise InputError(_strip(detail, str(kept), f.name))
            if status == "unchanged" and f.tries:  # an earlier try committed it, then failed after (a full disk)
                status = "added"
            f.status, f.error = status, None
            f.chunks = int(detail.split()[0]) if detail.split() and detail.split()[0].isdigit() else 0
        except InputError as exc:  # can never be read as it is: failed, and its copy goes
            self._give_up(job, n, one_line(_strip(str(exc), str(kept), f.name)), kept)
            return
        except ShuttingDown:
            raise
        except Exception as exc:  # may pass: a server down, a full disk; tried again, a few times
            reason = one_line(_strip(str(exc), str(kept), f.name)) if isinstance(exc, RagqaError) else _reason(exc)
            if not isinstance(exc, (RagqaError, OSError)):
                log.warning("ingest: %s: unexpected %s", f.name, type(exc).__name__, exc_info=exc)
            if f.tries >= len(RETRY_DELAYS):
                self._give_up(job, n, f"{reason} (tried {f.tries + 1} times)", kept)
                return
            f.status, f.error = "retrying", reason
            f.next_try = time.time() + RETRY_DELAYS[f.tries]
            f.tries += 1
            log.warning("ingest: %s into %s: %s; trying again in %.0f s", f.name, job.kb, reason,
                        RETRY_DELAYS[f.tries - 1])
        self._save_file(job, n)

    def _give_up(self, job: Job, n: int, reason: str, kept: Path) -> None:
        """A file that failed for good: reported with its reason, and no copy of it left behind
        (nor the KB's record of a failed read: the job is where the failure is told)."""
        f = job.files[n]
        f.status, f.error = "failed", reason
        if f.staged is not None:
            with contextlib.suppress(OSError):
                self._absolute(f.staged).unlink()
            f.staged = None
        self._save_file(job, n)
        with contextlib.suppress(RagqaError, OSError):
            self.pipeline.remove_document(job.kb, f.name)  # a failed record in the KB, with its copy
        with contextlib.suppress(OSError):
            kept.unlink()  # a copy the KB never took in

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        """Written down first, then told: whoever sees the job finished finds it so in the store too."""
        finished = time.time()
        try:
            self.store.save_job(dataclasses.replace(job, status=status, error=error, finished=finished))
        except RagqaError as exc:
            log.warning("ingest: %s", exc)
        job.status, job.error, job.finished = status, error, finished


def _reason(exc: BaseException) -> str:
    if is_disk_full(exc):
        return "the disk is full"
    return getattr(exc, "strerror", None) or one_line(exc)


def _strip(message: str, path: str, name: str) -> str:
    """A file's error without the server's folder: the user knows the file by its name."""
    return message.replace(path, name)

