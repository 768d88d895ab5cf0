"""Reading files in worker processes that cannot hurt the server.

Every file ``ragqa index``, an upload or a watched folder brings in is parsed (read, decoded,
OCR'd, converted) by a worker process, never by the server itself:

- the worker runs in a process group of its own with ``RLIMIT_DATA`` (``parse_memory_mb``) and a
  CPU-time limit per file (``parse_cpu_seconds``); every program it starts (pandoc, Tesseract,
  LibreOffice) inherits both and dies with it;
- the parent waits at most ``parse_timeout`` seconds of wall time for a file, then kills the whole
  group: a file that hangs, exhausts its memory or crashes its reader fails alone, in one line
  naming the limit, and the next file gets a fresh worker;
- the caps of ``ragqa.caps`` (decompressed size, pixels, pages, line length) are checked inside
  the worker before the heavy work.

Workers are started once and kept (``ReaderPool``, at most ``ingest_concurrency`` at a time), so
a small file costs a pipe round trip, not a Python start-up. ``parse_isolation = "off"`` reads in
the calling process instead (tests with fakes, or a user who trusts every file).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from ragqa.caps import Caps
from ragqa.errors import InputError, RagqaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLimits:
    memory_mb: int = 4096
    cpu_seconds: int = 600
    timeout: float = 900.0

    @classmethod
    def of(cls, settings: Any) -> "WorkerLimits":
        return cls(settings.parse_memory_mb, settings.parse_cpu_seconds, settings.parse_timeout)


class ReaderCrashed(InputError):
    """A worker died or was killed reading a file: the file fails, the next one gets a new worker."""


class ReaderPool:
    """Worker processes that read files: ``read`` blocks until one is free (at most ``size``)."""

    def __init__(self, size: int, limits: WorkerLimits) -> None:
        self.size, self.limits = size, limits
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()

    def read(self, path: Path, data: bytes, *, ocr: str, ocr_languages: str, caps: Caps,
             on_page: Callable[[int, int], None] | None = None) -> list[Document]:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive():
                worker = _Worker(self.limits)
                with self._lock:
                    self._all.add(worker)
            try:
                docs = worker.read(path, data, ocr=ocr, ocr_languages=ocr_languages, caps=caps, on_page=on_page)
            except ReaderCrashed:
                worker.kill()
                with self._lock:
                    self._all.discard(worker)
                raise
            with self._lock:
                self._idle.append(worker)
            return docs

    def close(self) -> None:
        with self._lock:
            workers, self._all, self._idle = list(self._all), set(), []
        for worker in workers:
            worker.kill()


class _Worker:
    """One worker process and the socket to it.

    A fresh interpreter (``python -c``), not multiprocessing's spawn: spawn re-imports the caller's
    ``__main__``, so a user's script without an ``if __name__ == "__main__"`` guard would run again
    inside every worker."""

    def __init__(self, limits: WorkerLimits) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        import ragqa

        self.limits = limits
        ours, theirs = socket.socketpair()
        package_root = str(Path(ragqa.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                            if p)}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from ragqa.isolation import worker_main; worker_main()",
                 str(theirs.fileno()), str(limits.memory_mb)],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                start_new_session=True)  # a process group of its own: killed with everything it starts
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def read(self, path: Path, data: bytes, *, ocr: str, ocr_languages: str, caps: Caps,
             on_page: Callable[[int, int], None] | None) -> list[Document]:
        try:
            self.conn.send(("read", str(path), ocr, ocr_languages, caps, self.limits.cpu_seconds))
            self.conn.send_bytes(data)
        except (OSError, EOFError):
            raise self._died(path) from None
        deadline = time.monotonic() + self.limits.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(min(left, 1.0)):
                if left <= 0:
                    self.kill()
                    raise ReaderCrashed(f"{path}: reading it took longer than {self.limits.timeout:g} s "
                                        "(parse_timeout)")
                if self.proc.poll() is not None:
                    raise self._died(path)
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                raise self._died(path) from None
            kind = message[0]
            if kind == "page" and on_page is not None:
                on_page(message[1], message[2])
            elif kind == "ok":
                return [Document(page_content=text, metadata=meta) for text, meta in message[1]]
            elif kind == "error":
                _, name, text = message
                raise _rebuild(name, text)

    def _died(self, path: Path) -> ReaderCrashed:
        try:
            code = self.proc.wait(5)
        except Exception:  # noqa: BLE001 - still there: it is killed by the caller
            code = None
        if code == -signal.SIGXCPU:
            why = f"it used more than {self.limits.cpu_seconds} s of CPU (parse_cpu_seconds)"
        elif code == -signal.SIGKILL:
            why = f"its reader was killed (memory over {self.limits.memory_mb} MB? parse_memory_mb)"
        else:
            why = f"its reader crashed (exit {code})"
        return ReaderCrashed(f"{path}: {why}")

    def kill(self) -> None:
        """The worker and everything it started (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except Exception:  # noqa: BLE001 - a process that will not go: nothing more to do here
            pass
        self.conn.close()


def _rebuild(name: str, text: str) -> RagqaError:
    """The worker's error as the same kind of ragqa error (the caller tells them apart)."""
    import ragqa.errors as errors

    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, RagqaError) and cls is not errors.MissingDependencyError:
        return cls(text)
    return InputError(text)


# -- the worker's side ----------------------------------------------------------------------------


def worker_main() -> None:
    """The worker process's entry point: ``python -c ... FD MEMORY_MB``."""
    import sys
    from multiprocessing.connection import Connection

    _die_with_parent()
    conn = Connection(int(sys.argv[1]))
    _serve(conn, int(sys.argv[2]))


def _serve(conn: Any, memory_mb: int) -> None:
    """The worker's loop: one file at a time, until the pipe closes. Never a traceback on the
    server's stderr: whatever goes wrong is the file's one-line error, or the worker's exit code."""
    import sys

    try:
        _loop(conn, memory_mb)
    except BaseException as exc:  # noqa: BLE001 - the parent reports the worker's end in one line
        print(f"ragqa reader: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        sys.exit(1)


def _loop(conn: Any, memory_mb: int) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    # RLIMIT_DATA, not RLIMIT_AS: it counts memory written to (heap, anonymous maps), not address space
    # reserved (onnxruntime, torch and pandoc's runtime reserve gigabytes they never touch)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _children_die_with_this_process()
    from ragqa.loaders import load_file

    while True:
        try:
            message = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        _, path, ocr, ocr_languages, caps, cpu_seconds = message
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        # the soft limit only (SIGXCPU ends the worker there); a hard limit, once lowered, cannot be raised
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = spent + cpu_seconds if hard == resource.RLIM_INFINITY else min(spent + cpu_seconds, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        try:
            docs = load_file(Path(path), data, ocr=ocr, ocr_languages=ocr_languages, caps=caps,
                             on_page=lambda done, total: conn.send(("page", done, total)))
            conn.send(("ok", [(d.page_content, d.metadata) for d in docs]))
        except RagqaError as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
        except MemoryError:
            conn.send(("error", "InputError", f"{path}: reading it needs more than {memory_mb} MB of memory "
                                              "(parse_memory_mb)"))
        except RecursionError:
            conn.send(("error", "InputError", f"{path}: nested too deeply to read"))
        except Exception as exc:  # noqa: BLE001 - a reader's bug on this file: the file fails, the worker goes on
            conn.send(("error", "InputError", f"{path}: cannot be read ({type(exc).__name__}: {exc})"[:500]))
        finally:
            del data


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the server dies (even by kill -9)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _children_die_with_this_process() -> None:
    """Every program the readers start here (pandoc, Tesseract, LibreOffice) dies with this worker."""
    import subprocess

    original = subprocess.Popen.__init__

    def popen(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("preexec_fn") is None:
            kwargs["preexec_fn"] = _die_with_parent
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = popen  # type: ignore[method-assign]
