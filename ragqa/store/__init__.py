"""Storage: knowledge bases behind one interface, and the in-memory index.

- ``base``: the ``KnowledgeBase`` interface, file records, the KB manifest, name rules.
- ``local``: the embedded engine (SQLite truth + FAISS + tantivy), the default.
- ``milvus``: the same interface over a Milvus server (``store = "http://host:19530"``).
- ``memory``: ``ChunkIndex``, an in-memory index for texts outside any KB.

``open_kb`` picks the engine from ``settings.store``; the pipeline, CLI, web page and LangChain
classes call only what this module exports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa.errors import InputError, RagqaError
from ragqa.store.base import (
    DEFAULT_KB,
    DamagedKBError,
    TEXT_PARSER,
    TEXT_PREFIX,
    FileRecord,
    KBStats,
    KBView,
    KnowledgeBase,
    Manifest,
    SyncReport,
    check_kb_name,
    content_hash,
)
from ragqa.store.memory import ChunkIndex, FileIndex

if TYPE_CHECKING:
    from ragqa.config import Settings

__all__ = [
    "DEFAULT_KB", "DamagedKBError", "TEXT_PARSER", "TEXT_PREFIX", "ChunkIndex", "FileIndex", "FileRecord", "KBStats", "KBView", "KnowledgeBase", "Manifest",
    "SyncReport", "check_kb_name", "content_hash", "drop_kb", "kb_exists", "kb_names", "list_kbs", "open_kb",
    "open_cache_kb",
]


def is_local(settings: "Settings") -> bool:
    return settings.store == "local"


def local_root(settings: "Settings") -> Path:
    return Path(settings.data_dir) / "kb"


def open_kb(settings: "Settings", name: str, manifest: Manifest | None = None, *, create: bool = False) -> KnowledgeBase:
    """The KB called ``name`` in the configured engine. ``manifest`` (this run's embedding and
    splitter) is checked against the KB's; ``create`` makes the KB when it does not exist."""
    name = check_kb_name(name)
    manifest = manifest or Manifest("", {})
    if is_local(settings):
        from ragqa.store.local import LocalKB

        data = Path(settings.data_dir)
        if data.exists() and not data.is_dir():
            raise RagqaError(f"cannot use the data folder {data}: it is a file (set --data-dir to a folder)")
        return LocalKB(local_root(settings) / name, name, manifest, create=create)
    from ragqa.store.milvus import MilvusKB

    return MilvusKB(settings, name, manifest, create=create)


def open_cache_kb(settings: "Settings", manifest: Manifest, purpose: str = "files") -> KnowledgeBase:
    """An internal local KB under the cache folder, one per embedding + splitter: what
    ``ragqa ask PATH...`` syncs the named files into, so a large folder is indexed once."""
    from ragqa.store.local import LocalKB

    key = hashlib.sha256(json.dumps({"e": manifest.embedding, "s": manifest.splitter}, sort_keys=True).encode())
    name = f"{purpose}-{key.hexdigest()[:12]}"
    folder = Path(settings.cache_dir) / "kb" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagqaError(f"cannot use the cache folder {settings.cache_dir}: {exc.strerror or exc}") from None
    try:
        return LocalKB(folder, name, manifest, create=True)
    except DamagedKBError:
        pass
    # a cache, not the user's data: a damaged one is set aside and made anew (its files re-indexed)
    import logging
    import time

    aside = folder.with_name(f"{folder.name}.damaged-{int(time.time())}")
    logging.getLogger(__name__).warning("the cache in %s is damaged; moved to %s and rebuilt", folder, aside)
    folder.rename(aside)
    return LocalKB(folder, name, manifest, create=True)


def kb_exists(settings: "Settings", name: str) -> bool:
    name = check_kb_name(name)
    if is_local(settings):
        from ragqa.store.local import DB_NAME

        return (local_root(settings) / name / DB_NAME).is_file()
    from ragqa.store.milvus import milvus_kb_names

    return name in milvus_kb_names(settings)


def kb_names(settings: "Settings") -> list[str]:
    """The KBs' names, sorted, without opening any (a page that must start in seconds)."""
    if is_local(settings):
        from ragqa.store.local import DB_NAME

        root = local_root(settings)
        return sorted(p.parent.name for p in root.glob(f"*/{DB_NAME}")) if root.is_dir() else []
    from ragqa.store.milvus import milvus_kb_names

    return sorted(milvus_kb_names(settings))


def list_kbs(settings: "Settings") -> list[KBStats]:
    """Every KB of the configured engine, by name, with its counts and size."""
    out = []
    for name in kb_names(settings):
        try:
            kb = open_kb(settings, name)
        except RagqaError as exc:  # a damaged KB is listed as such and never hides the others
            where = str(local_root(settings) / name) if is_local(settings) else settings.store
            out.append(KBStats(name, "local" if is_local(settings) else "milvus", 0, 0, 0, "", 0, where, error=str(exc)))
            continue
        try:
            out.append(kb.stats())
        finally:
            kb.close()
    return out


def drop_kb(settings: "Settings", name: str) -> None:
    """Delete a KB. A local one is deleted without being opened, so a damaged one can be dropped."""
    if not kb_exists(settings, name):
        raise InputError(f"no knowledge base named {name!r} (see: ragqa kb list)")
    if is_local(settings):
        from ragqa.store.local import drop_folder

        drop_folder(local_root(settings) / check_kb_name(name))
        return
    kb = open_kb(settings, name)
    kb.drop()
