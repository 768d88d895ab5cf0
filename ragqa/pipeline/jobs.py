"""Background ingest: uploaded files indexed into a KB by a worker thread per KB, while questions go on.

One worker per KB takes that KB's jobs in order (the KB's own write lock also orders it against
``ragqa index`` in another process); workers of different KBs run side by side. A job writes
through a KB handle of its own, so the long-lived handle questions read through sees each file
once its commit lands. Jobs live in memory (``GET /v1/jobs/{id}``); the oldest finished ones are
forgotten past ``KEEP_FINISHED``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.errors import RagqaError, one_line

if TYPE_CHECKING:
    from ragqa.pipeline import Pipeline

log = logging.getLogger(__name__)

KEEP_FINISHED = 1000


@dataclass
class JobFile:
    name: str
    status: str = "queued"  # queued | added | updated | unchanged | failed
    chunks: int = 0
    error: str | None = None


@dataclass
class Job:
    id: str
    kb: str
    files: list[JobFile]
    staged: list[Path]
    status: str = "queued"  # queued | running | done | failed
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        done = sum(1 for f in self.files if f.status != "queued")
        return {
            "id": self.id, "object": "ingest.job", "kb": self.kb, "status": self.status,
            "files": [{"name": f.name, "status": f.status, "chunks": f.chunks, "error": f.error} for f in self.files],
            "progress": {"files_done": done, "files_total": len(self.files)},
            "error": self.error, "created": int(self.created),
            "finished": int(self.finished) if self.finished else None,
        }


class IngestJobs:
    """Queues of ingest jobs, one worker thread per KB (started on its first job)."""

    def __init__(self, pipeline: "Pipeline") -> None:
        self.pipeline = pipeline
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queues: dict[str, queue.Queue[Job]] = {}
        self._lock = threading.Lock()

    def submit(self, kb: str, staged: list[Any]) -> Job:
        """A job for files already received (``Staged``: name + path in the staging folder)."""
        job = Job(uuid.uuid4().hex, kb, [JobFile(s.name) for s in staged], [s.path for s in staged])
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            q = self._queues.get(kb)
            if q is None:
                q = self._queues[kb] = queue.Queue()
                threading.Thread(target=self._work, args=(kb, q), name=f"ingest-{kb}", daemon=True).start()
        q.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[old.id]

    def _work(self, kb: str, q: "queue.Queue[Job]") -> None:
        while True:
            job = q.get()
            try:
                self._run(job)
            except Exception as exc:  # never let one job kill the KB's worker
                log.error("ingest job %s failed", job.id, exc_info=exc)
                job.status, job.error = "failed", one_line(exc)
            finally:
                job.finished = time.time()
                for path in job.staged:  # whatever was not moved into the uploads folder
                    path.unlink(missing_ok=True)

    def _run(self, job: Job) -> None:
        from ragqa.errors import InputError
        from ragqa.loaders import check_supported

        job.status = "running"
        uploads = self.pipeline.uploads
        by_path: dict[str, JobFile] = {}
        try:
            kept = []
            for staged, f in zip(job.staged, job.files):
                try:
                    check_supported(Path(f.name))  # an unsupported type fails alone; the others go on
                except InputError as exc:
                    f.status, f.error = "failed", one_line(exc)
                    continue
                path = uploads.keep(job.kb, staged, f.name, move=True)
                by_path[str(path)] = f
                kept.append(path)
            if not kept:
                job.status = "done"
                return

            def on_file(path: str, status: str, detail: str) -> None:
                f = by_path.get(path)
                if f is None:
                    return
                f.status = status
                if status == "failed":
                    f.error = _strip(detail, path, f.name)
                else:
                    f.chunks = int(detail.split()[0]) if detail.split() and detail.split()[0].isdigit() else 0

            self.pipeline.ingest(job.kb, kept, on_file=on_file)
        except RagqaError as exc:
            job.status, job.error = "failed", one_line(exc)
            for f in job.files:
                if f.status == "queued":
                    f.status, f.error = "failed", job.error
            return
        job.status = "done"


def _strip(message: str, path: str, name: str) -> str:
    """A file's error without the server's folder: the user knows the file by its name."""
    return message.replace(path, name)
