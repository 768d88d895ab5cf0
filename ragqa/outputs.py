"""Where batch summaries go: a JSONL file or a folder of Markdown files, written so that no work
is lost.

Every record is written as soon as its document is done, atomically: the new state goes to a
temporary file in the same folder, is fsynced, and is renamed over the old one. A process killed
at any moment (``kill -9``) leaves either the previous complete output or the new one, never half
a line or half a file. Each record carries a key (content hash + settings); a later run skips
documents whose key is already recorded with status ``ok``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ragqa.errors import InputError, RagqaError

log = logging.getLogger(__name__)

MANIFEST = "summaries.json"
INDEX = "index.md"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename; the old content stays until then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class SummaryStore:
    """Records by source path; ``done(source, key)`` says whether a document can be skipped."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.records: dict[str, dict[str, Any]] = {}

    @staticmethod
    def open(out: str | Path) -> "SummaryStore":
        out = Path(out).expanduser()
        if out.suffix.lower() == ".jsonl":
            if out.exists() and not out.is_file():
                raise InputError(f"--out {out}: exists and is not a file")
            store: SummaryStore = JsonlStore(out)
        else:
            if out.exists() and not out.is_dir():
                raise InputError(f"--out {out}: exists and is not a folder (use a .jsonl name for one file)")
            store = MarkdownStore(out)
        try:
            store.load()
        except OSError as exc:
            raise InputError(f"--out {out}: cannot read ({exc.strerror or exc})") from None
        return store

    def load(self) -> None:
        raise NotImplementedError

    def done(self, source: str, key: str) -> bool:
        rec = self.records.get(source)
        return bool(rec and rec.get("status") == "ok" and rec.get("key") == key)

    def put(self, record: dict[str, Any]) -> None:
        self.records[record["source"]] = record
        try:
            self.flush(record)
        except OSError as exc:
            raise RagqaError(f"cannot write {self.out}: {exc.strerror or exc}") from None

    def flush(self, record: dict[str, Any]) -> None:
        raise NotImplementedError


class JsonlStore(SummaryStore):
    """One JSON object per line: source, summary, chain, chunks, seconds, status, error?, key."""

    def load(self) -> None:
        if not self.out.exists():
            return
        for n, line in enumerate(self.out.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.records[rec["source"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s line %d is not a summary record; it will be dropped", self.out, n)

    def flush(self, record: dict[str, Any]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) for r in self.records.values()]
        write_atomic(self.out, "\n".join(lines) + "\n")


class MarkdownStore(SummaryStore):
    """``OUT/<name>.md`` per document, ``OUT/index.md`` linking them, ``OUT/summaries.json`` records."""

    def load(self) -> None:
        manifest = self.out / MANIFEST
        if manifest.is_file():
            try:
                self.records = {r["source"]: r for r in json.loads(manifest.read_text("utf-8"))}
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s is unreadable; starting a new one", manifest)

    def _name(self, source: str) -> str:
        rec = self.records.get(source, {})
        if rec.get("file"):
            return rec["file"]
        stem = re.sub(r"[^\w.-]+", "_", Path(source).stem, flags=re.UNICODE).strip("._") or "document"
        taken = {r.get("file") for r in self.records.values()}
        name, n = f"{stem}.md", 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}.md"
        return name

    def flush(self, record: dict[str, Any]) -> None:
        if record.get("status") == "ok":
            record["file"] = self._name(record["source"])
            body = f"# {Path(record['source']).name}\n\n{record['summary']}\n\n---\n" \
                   f"source: `{record['source']}` · chain: {record['chain']} · chunks: {record['chunks']}\n"
            write_atomic(self.out / record["file"], body)
        write_atomic(self.out / MANIFEST, json.dumps(list(self.records.values()), ensure_ascii=False, indent=1))
        rows = ["# Summaries", "", "| document | status | chain | summary |", "|---|---|---|---|"]
        for r in self.records.values():
            link = f"[{Path(r['source']).name}]({r['file']})" if r.get("file") and r.get("status") == "ok" else Path(r["source"]).name
            first = (r.get("summary") or r.get("error") or "").replace("\n", " ").replace("|", "\\|")
            rows.append(f"| {link} | {r['status']} | {r.get('chain') or ''} | {first[:120]} |")
        write_atomic(self.out / INDEX, "\n".join(rows) + "\n")
