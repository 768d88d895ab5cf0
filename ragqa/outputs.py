"""Where batch summaries go: a JSONL file or a folder of Markdown files, written so that no work
is lost.

Every record is written as soon as its document is done, atomically: the new state goes to a
temporary file in the same folder, is fsynced, and is renamed over the old one. A process killed
at any moment (``kill -9``) leaves either the previous complete output or the new one, never half
a line or half a file. Each record carries a key (content hash + settings); a later run skips
documents whose key is already recorded with status ``ok``.

Several processes may write to the same output at once: each write holds an exclusive lock
(``.<name>.lock`` beside a JSONL file, ``.summaries.lock`` inside a folder), re-reads what is on
disk and merges its record into it, so no process overwrites another's records. An existing
output that ragqa did not write (other JSON lines, a foreign ``summaries.json``, binary data) is
refused before anything is written, and left as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ragqa.errors import InputError, RagqaError
from ragqa.paths import write_atomic

log = logging.getLogger(__name__)

MANIFEST = "summaries.json"
INDEX = "index.md"
LOCK_TIMEOUT_S = 120.0
MAX_STEM_BYTES = 200  # of a summary's .md name: room for "-NN.md" within any file system's 255 bytes  # a write takes milliseconds; this long means a stuck process holds the lock


def _is_record(value: Any) -> bool:
    """A summary record as ragqa writes it: an object with a text ``source`` and a ``status``."""
    return isinstance(value, dict) and isinstance(value.get("source"), str) and isinstance(value.get("status"), str)


class SummaryStore:
    """Records by source path; ``done(source, key)`` says whether a document can be skipped."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.records: dict[str, dict[str, Any]] = {}

    @staticmethod
    def open(out: str | Path) -> "SummaryStore":
        """Check ``out`` and read what it holds; a foreign or unreadable output is an InputError."""
        out = Path(out).expanduser()
        if out.suffix.lower() == ".jsonl":
            if out.exists() and not out.is_file():
                raise InputError(f"--out {out}: exists and is not a file")
            store: SummaryStore = JsonlStore(out)
        else:
            if out.exists() and not out.is_dir():
                raise InputError(f"--out {out}: exists and is not a folder (use a .jsonl name for one file)")
            store = MarkdownStore(out)
        store.records = store.read()
        return store

    @property
    def lock_path(self) -> Path:
        raise NotImplementedError

    def read(self) -> dict[str, dict[str, Any]]:
        """The records on disk now (empty when there is no output yet)."""
        raise NotImplementedError

    def _read_text(self, path: Path) -> str | None:
        """``path`` as UTF-8 text, None when absent; refuse binary or non-UTF-8 content."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"--out {self.out}: cannot read {path} ({exc.strerror or exc})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._foreign(path, "not UTF-8 text") from None

    def _foreign(self, path: Path, why: str) -> InputError:
        what = "this file is" if path == self.out else f"{path} is"
        return InputError(
            f"--out {self.out}: {what} not ragqa's summary output ({why}); it was left unchanged: "
            f"choose another --out, or move that file away"
        )

    def done(self, source: str, key: str) -> bool:
        rec = self.records.get(source)
        return bool(rec and rec.get("status") == "ok" and rec.get("key") == key)

    def put(self, record: dict[str, Any]) -> None:
        """Record one document: under the lock, merge it into the output on disk and write that."""
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            # a lock file that cannot be made at all is not "another process": say so at once
            # (filelock would retry until the timeout, then blame a holder that does not exist)
            os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            raise RagqaError(f"cannot write {self.out}: cannot create its lock file {self.lock_path} "
                             f"({exc.strerror or exc})") from None
        try:
            with FileLock(self.lock_path, timeout=LOCK_TIMEOUT_S):
                records = self.read()
                self.flush(record, records)
                self.records = records
        except Timeout:
            raise RagqaError(
                f"cannot write {self.out}: another process has held {self.lock_path} for "
                f"{LOCK_TIMEOUT_S:.0f} s (stop it, or choose another --out)"
            ) from None
        except OSError as exc:
            raise RagqaError(f"cannot write {self.out}: {exc.strerror or exc}") from None

    def flush(self, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
        """Add ``record`` to ``records`` (what is on disk now) and write them; the lock is held."""
        raise NotImplementedError


class JsonlStore(SummaryStore):
    """One JSON object per line: source, summary, chain, chunks, seconds, status, error?, key."""

    @property
    def lock_path(self) -> Path:
        return self.out.with_name(f".{self.out.name}.lock")

    def read(self) -> dict[str, dict[str, Any]]:
        text = self._read_text(self.out)
        records: dict[str, dict[str, Any]] = {}
        for n, line in enumerate((text or "").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not _is_record(rec):
                raise self._foreign(self.out, f"line {n} is not a summary record")
            records[rec["source"]] = rec
        return records

    def flush(self, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
        records[record["source"]] = record
        lines = [json.dumps(r, ensure_ascii=False) for r in records.values()]
        write_atomic(self.out, "\n".join(lines) + "\n")


class MarkdownStore(SummaryStore):
    """``OUT/<name>.md`` per document, ``OUT/index.md`` linking them, ``OUT/summaries.json`` records."""

    @property
    def lock_path(self) -> Path:
        return self.out / ".summaries.lock"

    def read(self) -> dict[str, dict[str, Any]]:
        manifest = self.out / MANIFEST
        if manifest.exists() and not manifest.is_file():
            raise self._foreign(manifest, "not a file")
        text = self._read_text(manifest)
        if text is None:
            if (self.out / INDEX).exists():  # ragqa writes the manifest before the index
                raise self._foreign(self.out / INDEX, f"there is no {MANIFEST} beside it")
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._foreign(manifest, f"not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(value, list) or not all(_is_record(r) for r in value):
            raise self._foreign(manifest, 'not a list of records with "source" and "status"')
        for r in value:
            name = r.get("file")
            if name is not None and not (isinstance(name, str) and name.endswith(".md") and Path(name).name == name):
                raise self._foreign(manifest, f"the file name {name!r} is not a .md file in this folder")
        return {r["source"]: r for r in value}

    def _name(self, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> str:
        """The record's .md name: kept once given; otherwise the stem, numbered past the names
        other records hold and past files in OUT that no record owns (never overwrite those)."""
        if record.get("file"):
            return record["file"]
        stem = re.sub(r"[^\w.-]+", "_", Path(record["source"]).stem, flags=re.UNICODE).strip("._") or "document"
        while len(stem.encode("utf-8")) > MAX_STEM_BYTES:  # file systems take 255 bytes a name
            stem = stem[:-1]
        taken = {r["file"].lower() for r in records.values() if r.get("file")} | {INDEX}
        name, n = f"{stem}.md", 1
        while name.lower() in taken or (self.out / name).exists():
            n += 1
            name = f"{stem}-{n}.md"
        return name

    def flush(self, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
        previous = records.get(record["source"], {})
        if previous.get("file"):
            record["file"] = previous["file"]  # a redo, or a failure after a success, keeps its name
        if record.get("status") == "ok":
            record["file"] = self._name(record, records)
            body = f"# {Path(record['source']).name}\n\n{record['summary']}\n\n---\n" \
                   f"source: `{record['source']}` · chain: {record['chain']} · chunks: {record['chunks']}\n"
            write_atomic(self.out / record["file"], body)
        records[record["source"]] = record
        write_atomic(self.out / MANIFEST, json.dumps(list(records.values()), ensure_ascii=False, indent=1))
        rows = ["# Summaries", "", "| document | status | chain | summary |", "|---|---|---|---|"]
        for r in records.values():
            first = (r.get("summary") or r.get("error") or "").replace("\n", " ").replace("|", "\\|")
            name = Path(r["source"]).name.replace("\n", " ").replace("|", "\\|")  # a newline in a name breaks the table
            link = f"[{name}]({r['file']})" if r.get("file") and r.get("status") == "ok" else name
            rows.append(f"| {link} | {r['status']} | {r.get('chain') or ''} | {first[:120]} |")
        write_atomic(self.out / INDEX, "\n".join(rows) + "\n")
