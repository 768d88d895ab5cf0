"""The Milvus engine: the same ``KnowledgeBase`` over a Milvus server.

One code path for Milvus Standalone, Distributed and Zilliz Cloud (``store = "http://host:19530"``
or ``https://...``; the token from ``RAGQA_STORE_TOKEN`` or ``MILVUS_TOKEN``). Needs a server with
full-text search (Milvus 2.5 or later): Milvus tokenizes the chunks with jieba and scores BM25 itself.

Two collections per KB (``<key>``: see ``collection_key``)::

    ragqa_<key>     the chunks: chunk_id INT64 (ours, never reused), file_id, ord, text (what is
                    shown), words (the text folded to one script, ``ragqa.words.fold``; jieba
                    analyzer), meta (JSON), dense FLOAT_VECTOR (COSINE, AUTOINDEX) and sparse, which
                    Milvus's BM25 function fills from words (SPARSE_INVERTED_INDEX, metric BM25)
    ragqakb_<key>   the KB's own records: id 0 = the KB (its real name, manifest, id counters),
                    id >= 1 = one per file, id -1 = the write lock; and a 2-d dummy vector, since
                    Milvus wants a vector field in every collection

Why two and not one with a kind field: the chunks' vector dimension is known only once the first
file is embedded, file rows must not take part in searches or in BM25's corpus statistics, and
listing or opening a KB should not touch the (large) chunk collection.

The script fold is the KB's own (``keyword_fold`` in the KB row), set from the settings when its
chunk collection is made; questions are folded the same way. A KB from before the fold has no
words field (its BM25 function reads text) and stays unfolded: Milvus cannot add a BM25 input to
a collection, and remaking one means copying every chunk with its vector (not crash-safe without
a second collection). Opened by a run that folds, it says in one line how to rebuild it.

Milvus has no transactions, so writes are ordered to survive a crash at any step. Each file owns
a contiguous range of chunk ids, recorded in its file row; only chunks inside that range are
live. Replacing a file: (1) reserve a new id range in the KB row and mark the file dirty, (2) insert
the new chunks, (3) point the file row at the new range, (4) delete the file's chunks outside it.
A crash leaves either the old range or the new one live, never a file without chunks; the next
writer deletes what a dirty file has outside its range. Chunk ids only grow (the counter is moved
before the ids are used), so an id is never reused.

One writer at a time: within a process a lock per KB; across processes and machines a lock
record with a heartbeat (a crashed writer's lock expires after ``LOCK_TTL_S``). Milvus has no
compare-and-set, so the lock record is taken by write, wait ``LOCK_SETTLE_S``, read back: two
writers starting within the same fraction of a second could in theory both win. Readers never wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from langchain_core.documents import Document

from ragqa.errors import InputError, MissingDependencyError, RagqaError, one_line
from ragqa.store.base import (
    FileRecord, KBStats, KnowledgeBase, Manifest,
    batches, chunk_document, chunk_meta, unit_rows,
)
from ragqa.words import fold

if TYPE_CHECKING:
    import numpy as np

    from ragqa.config import Settings

log = logging.getLogger(__name__)

FORMAT = 1
CHUNKS_PREFIX = "ragqa_"
KB_PREFIX = "ragqakb_"  # never a chunk collection's name: those have "_" where this has "k"
KB_ROW, LOCK_ROW, NOTES_ROW = 0, -1, -2
CONNECT_TIMEOUT_S = 5.0  # an address where nothing answers fails within this
CALL_TIMEOUT_S = 120.0  # any one call (a server that dies mid-run does not hang ragqa)
CONNECT_RETRY_S = 0.5
# gRPC servers refuse a client's keepalive pings that come more often than every 5 minutes (the default
# of gRPC's C core, which milvus-lite's Python server keeps): three in a row and the server drops the
# connection with GOAWAY "too_many_pings", failing whatever was starting on it. pymilvus pings every
# 10 s; ragqa pings every 6 minutes, and every call has its own deadline (CALL_TIMEOUT_S) for a dead server.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 360_000, "grpc.keepalive_timeout_ms": 20_000}
LOCK_TTL_S = 60.0  # a lock whose heartbeat is older than this is free
LOCK_HEARTBEAT_S = 15.0
LOCK_SETTLE_S = 0.25
LOCK_POLL_S = 1.0
LOCK_WAIT_NOTE_S = 0.5
INSERT_BATCH = 256
READ_BATCH = 500  # rows per query (Milvus caps a query window at 16384)
MAX_TOPK = 16384
VARCHAR_MAX = 65535
ANALYZER = {"tokenizer": "jieba", "filter": ["lowercase", "cnalphanumonly"]}  # = Milvus's "chinese", lower-cased
_PUNCT = re.compile(r"[^\w\s]+")
_RECORD_FIELDS = ["id", "path", "size", "mtime_ns", "hash", "parser", "status", "error", "chunks", "first_chunk", "updated"]

_process_locks: dict[tuple[str, str], threading.Lock] = {}
_process_locks_guard = threading.Lock()


# -- names ----------------------------------------------------------------------------------------


def collection_key(name: str) -> str:
    """A KB name as a Milvus collection name part: letters, digits and '_' only.

    Other names keep their ASCII letters and digits and get a hash, so they stay apart:

    >>> collection_key("notes_2024")
    'notes_2024'
    >>> collection_key("合同-2024")
    '2024_0b3c40c1d7'
    """
    if re.fullmatch(r"[A-Za-z0-9_]+", name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    ascii_part = re.sub(r"[^A-Za-z0-9_]", "", name).strip("_")
    return f"{ascii_part}_{digest}" if ascii_part else digest


def chunks_collection(name: str) -> str:
    return CHUNKS_PREFIX + collection_key(name)


def kb_collection(name: str) -> str:
    return KB_PREFIX + collection_key(name)


def display_uri(uri: str) -> str:
    """The URI without user:password (the token never reaches a message)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


# -- the client -----------------------------------------------------------------------------------


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise MissingDependencyError("pymilvus", "milvus") from None
    # pymilvus logs failed calls with tracebacks on its own stderr handler; ragqa reports them
    # as one-line RagqaErrors instead
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def _error(exc: BaseException, location: str, *, connecting: bool = False) -> RagqaError:
    """A pymilvus/grpc error as one line that says what to do."""
    message = one_line(getattr(exc, "message", None) or exc, limit=300)
    low = message.lower()
    if "auth" in low or "permission" in low or "denied" in low:
        return RagqaError(f"Milvus at {location} refused access: {message} (set the token in RAGQA_STORE_TOKEN "
                          "or MILVUS_TOKEN)")
    if connecting or any(w in low for w in ("fail connecting", "unavailable", "connection refused")):
        return RagqaError(f"cannot reach Milvus at {location}: {message}")
    if "deadline" in low or "timeout" in low or "timed out" in low:
        return RagqaError(f"Milvus at {location} did not answer in time: {message}")
    return RagqaError(f"Milvus at {location}: {message}")


def _errors_of(pymilvus: Any) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [pymilvus.MilvusException]
    with contextlib.suppress(ImportError):
        import grpc

        errors.append(grpc.RpcError)
    return tuple(errors)


def connect(settings: "Settings") -> Any:
    """A MilvusClient for ``settings.store``; one line, quickly, when nothing answers there."""
    pymilvus = _pymilvus()
    uri = settings.store
    if uri.startswith("grpc://"):  # pymilvus speaks gRPC over http:// and https:// URIs
        uri = "http://" + uri[len("grpc://"):]
    token = settings.store_token.get_secret_value() if settings.store_token else ""
    for attempt in (1, 2):
        started = time.monotonic()
        try:
            # dedicated: a channel of its own. pymilvus otherwise shares one channel between the clients of
            # a URI, and a client closed in one thread (a finished KB listing in the server) tore down the
            # channel another thread was using: gRPC aborted the whole process ("epoll_wait: Bad file descriptor")
            return pymilvus.MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT_S, dedicated=True,
                                         grpc_options=GRPC_OPTIONS)
        except _errors_of(pymilvus) as exc:
            # gRPC shares one connection between the channels to an address: a client opened just as the
            # server sent that connection a GOAWAY gets UNAVAILABLE at once, and a second try connects afresh
            if attempt == 1 and _unavailable(exc) and time.monotonic() - started < CONNECT_TIMEOUT_S / 2:
                time.sleep(CONNECT_RETRY_S)
                continue
            raise _error(exc, display_uri(settings.store), connecting=True) from None
    raise AssertionError("unreachable")


def _unavailable(exc: BaseException) -> bool:
    """Whether gRPC said UNAVAILABLE (a connection refused or dropped, not a refusal by Milvus itself):
    the grpc.RpcError itself, or the one pymilvus raised its error from."""
    for err in (exc, exc.__cause__):
        code = getattr(err, "code", None)  # a method on gRPC's errors; MilvusException's is a number
        if callable(code) and "UNAVAILABLE" in str(code()):
            return True
    return False


def milvus_kb_names(settings: "Settings") -> list[str]:
    """The ragqa knowledge bases on the server, by their real names."""
    client = connect(settings)
    errors = _errors_of(_pymilvus())
    location = display_uri(settings.store)
    try:
        names = []
        for coll in client.list_collections(timeout=CALL_TIMEOUT_S):
            if not coll.startswith(KB_PREFIX):
                continue
            _ensure_loaded(client, coll)
            rows = client.get(coll, ids=[KB_ROW], output_fields=["kind", "path", "info"], timeout=CALL_TIMEOUT_S,
                              consistency_level="Strong")
            name = str(rows[0].get("path", "")) if rows and rows[0].get("kind") == "kb" else ""
            if name and kb_collection(name) == coll and '"format"' in str(rows[0].get("info", "")):
                names.append(name)
        return sorted(names)
    except errors as exc:
        raise _error(exc, location) from None
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _ensure_loaded(client: Any, collection: str) -> None:
    """Milvus searches only loaded collections; a restarted or released one is loaded again."""
    state = client.get_load_state(collection, timeout=CALL_TIMEOUT_S)
    if "NotLoad" in str(state.get("state", "")):
        client.load_collection(collection, timeout=CALL_TIMEOUT_S)


# -- the engine -----------------------------------------------------------------------------------


class MilvusKB(KnowledgeBase):
    """A KB on a Milvus server (see the module docstring)."""

    engine = "milvus"

    def __init__(self, settings: "Settings", name: str, manifest: Manifest, *, create: bool = False) -> None:
        self.name = name
        self.location = display_uri(settings.store)
        self._pm = _pymilvus()
        self._errors = _errors_of(self._pm)
        self.client = connect(settings)
        self.chunks_name = chunks_collection(name)
        self.kb_name = kb_collection(name)
        self._writing = False
        self._records: dict[str, FileRecord] | None = None  # path -> record; authoritative while writing
        self._paths: dict[int, str] = {}  # file id -> path (ids are never reused: safe to keep)
        self._ranges: dict[int, tuple[int, int]] = {}  # file id -> (first chunk id, chunks)
        self._lease: _Lease | None = None
        self._has_chunks = False
        self._wanted_fold = settings.keyword_fold
        self._fold = "none"  # the KB's own, read from its row in _open
        try:
            self._open(manifest, create)
        except BaseException:
            self.close()
            raise

    # -- calls
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One client call with a timeout; errors become one-line RagqaErrors."""
        kwargs.setdefault("timeout", CALL_TIMEOUT_S)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except self._errors as exc:
            raise _error(exc, self.location) from None

    def _open(self, manifest: Manifest, create: bool) -> None:
        if not self._call("has_collection", self.kb_name):
            if not create:
                raise InputError(f"no knowledge base named {self.name!r} (see: ragqa kb list --store {self.location})")
            self._create_kb_collection()
        else:
            self._call_loaded(self.kb_name)
        meta = self._read_meta()
        if meta is None:
            if not create:
                raise RagqaError(f"Milvus collection {self.kb_name} at {self.location} is not a ragqa knowledge base; "
                                 "drop it or choose another name")
            meta = {"format": FORMAT, "manifest": json.loads(manifest.to_json()), "next_chunk": 1, "next_file": 1,
                    "dirty": [], "created": time.time(), "keyword_fold": self._wanted_fold}
            self._meta = meta
            self._write_meta()
        if self._meta_name != self.name:
            raise RagqaError(f"Milvus collection {self.kb_name} at {self.location} holds knowledge base "
                             f"{self._meta_name!r}, not {self.name!r}; choose another name")
        if meta.get("format") != FORMAT:
            raise RagqaError(f"knowledge base {self.name!r} at {self.location} is not a ragqa knowledge base of this "
                             f"version (format {meta.get('format')})")
        self.manifest = Manifest.from_json(json.dumps(meta["manifest"]))
        if manifest.embedding:
            self.manifest.check(manifest, self.name)
        self._has_chunks = bool(self._call("has_collection", self.chunks_name))
        if self._has_chunks:
            self._call_loaded(self.chunks_name)
        self._fold = str(meta.get("keyword_fold", "none"))  # a KB from before the fold: unfolded
        if self._has_chunks and self._fold != self._wanted_fold:
            log.warning("knowledge base %s keeps its keyword fold %s (this run's is %s); to change it, rebuild it: "
                        "ragqa kb drop %s --store %s && ragqa index PATH... --kb %s --store %s",
                        self.name, self._fold, self._wanted_fold, self.name, self.location, self.name, self.location)

    def _call_loaded(self, collection: str) -> None:
        try:
            _ensure_loaded(self.client, collection)
        except self._errors as exc:
            raise _error(exc, self.location) from None

    def _create_kb_collection(self) -> None:
        pm = self._pm
        dt = pm.DataType
        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                               description=f"ragqa knowledge base records: {self.name}")
        schema.add_field("id", dt.INT64, is_primary=True)
        schema.add_field("kind", dt.VARCHAR, max_length=16)  # kb | file | lock
        schema.add_field("path", dt.VARCHAR, max_length=VARCHAR_MAX)  # kb: its name; lock: the holder
        schema.add_field("size", dt.INT64)
        schema.add_field("mtime_ns", dt.INT64)
        schema.add_field("hash", dt.VARCHAR, max_length=128)
        schema.add_field("parser", dt.VARCHAR, max_length=1024)
        schema.add_field("status", dt.VARCHAR, max_length=16)
        schema.add_field("error", dt.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("chunks", dt.INT64)
        schema.add_field("first_chunk", dt.INT64)
        schema.add_field("updated", dt.DOUBLE)  # lock: the holder's last heartbeat
        schema.add_field("info", dt.VARCHAR, max_length=VARCHAR_MAX)  # kb: manifest, counters (JSON)
        schema.add_field("v", dt.FLOAT_VECTOR, dim=2)
        index = pm.MilvusClient.prepare_index_params()
        index.add_index(field_name="v", index_type="AUTOINDEX", metric_type="L2")
        self._create(self.kb_name, schema, index)

    def _create_chunks_collection(self, dimension: int) -> None:
        pm = self._pm
        dt = pm.DataType
        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                               description=f"ragqa knowledge base chunks: {self.name}")
        schema.add_field("chunk_id", dt.INT64, is_primary=True)
        schema.add_field("file_id", dt.INT64)
        schema.add_field("ord", dt.INT64)
        if self._fold != self._wanted_fold:  # no chunks yet (a KB from before the fold too): this run's fold
            self._meta["keyword_fold"] = self._fold = self._wanted_fold
            self._write_meta()  # before the collection: a crash in between leaves a KB that makes it so
        folded = self._fold != "none"
        analyzed = {"enable_analyzer": True, "analyzer_params": ANALYZER}
        schema.add_field("text", dt.VARCHAR, max_length=VARCHAR_MAX, **({} if folded else analyzed))
        if folded:
            schema.add_field("words", dt.VARCHAR, max_length=VARCHAR_MAX, **analyzed)
        schema.add_field("meta", dt.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("dense", dt.FLOAT_VECTOR, dim=dimension)
        schema.add_field("sparse", dt.SPARSE_FLOAT_VECTOR)
        schema.add_function(pm.Function(name="text_bm25", function_type=pm.FunctionType.BM25,
                                        input_field_names=["words" if folded else "text"], output_field_names=["sparse"]))
        index = pm.MilvusClient.prepare_index_params()
        index.add_index(field_name="file_id", index_type="INVERTED")
        index.add_index(field_name="dense", index_type="AUTOINDEX", metric_type="COSINE")
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"inverted_index_algo": "DAAT_MAXSCORE"})
        self._create(self.chunks_name, schema, index)
        self._has_chunks = True

    def _create(self, collection: str, schema: Any, index: Any) -> None:
        try:
            self.client.create_collection(collection, schema=schema, index_params=index, consistency_level="Strong",
                                          timeout=CALL_TIMEOUT_S)
        except self._errors as exc:
            if not self._call("has_collection", collection):  # not merely created meanwhile by another process
                raise _error(exc, self.location) from None
            self._call_loaded(collection)

    # -- the KB row
    def _read_meta(self) -> dict[str, Any] | None:
        rows = self._call("get", self.kb_name, ids=[KB_ROW], output_fields=["path", "info"], consistency_level="Strong")
        if not rows:
            return None
        try:
            meta = json.loads(rows[0]["info"])
        except (ValueError, TypeError):
            return None
        self._meta, self._meta_name = meta, str(rows[0]["path"])
        return meta

    def _write_meta(self) -> None:
        self._meta_name = self.name
        self._call("upsert", self.kb_name, [self._row(KB_ROW, "kb", self.name, info=json.dumps(self._meta))])

    def read_note(self, key: str) -> str | None:
        rows = self._call("get", self.kb_name, ids=[NOTES_ROW], output_fields=["info"])
        try:
            notes = json.loads(rows[0]["info"]) if rows else {}
        except (ValueError, TypeError):
            notes = {}
        value = notes.get(key) if isinstance(notes, dict) else None
        return value if isinstance(value, str) else None

    def write_note(self, key: str, value: str) -> None:
        """In a row of their own (not the KB row a writer keeps its counters in)."""
        rows = self._call("get", self.kb_name, ids=[NOTES_ROW], output_fields=["info"])
        try:
            notes = json.loads(rows[0]["info"]) if rows else {}
        except (ValueError, TypeError):
            notes = {}
        notes = {**(notes if isinstance(notes, dict) else {}), key: value}
        while len(json.dumps(notes)) > VARCHAR_MAX and len(notes) > 1:
            notes.pop(next(k for k in notes if k != key))  # the oldest other note goes
        self._call("upsert", self.kb_name, [self._row(NOTES_ROW, "notes", "", info=json.dumps(notes))])

    @staticmethod
    def _row(rid: int, kind: str, path: str, *, size: int = 0, mtime_ns: int = 0, hash: str = "", parser: str = "",
             status: str = "", error: str = "", chunks: int = 0, first_chunk: int = 0, updated: float = 0.0,
             info: str = "") -> dict[str, Any]:
        return {"id": rid, "kind": kind, "path": path, "size": size, "mtime_ns": mtime_ns, "hash": hash,
                "parser": parser, "status": status, "error": error[:4000], "chunks": chunks,
                "first_chunk": first_chunk, "updated": updated, "info": info, "v": [0.0, 0.0]}

    # -- file records

    def _remember(self, row: dict[str, Any]) -> FileRecord:
        rid = int(row["id"])
        rec = FileRecord(str(row["path"]), int(row["size"]), int(row["mtime_ns"]), str(row["hash"]),
                         str(row["parser"]), str(row["status"]), str(row["error"]), int(row["chunks"]),
                         float(row["updated"]), rid)
        self._paths[rid] = rec.path
        self._ranges[rid] = (int(row["first_chunk"]), rec.chunks)
        return rec

    def _load_records(self) -> dict[str, FileRecord]:
        """Every file row, read in windows of ids (file ids run from 1 to the KB row's counter)."""
        meta = self._read_meta() or {}
        records: dict[str, FileRecord] = {}
        top = int(meta.get("next_file", 1))
        for lo in range(1, top, READ_BATCH):
            rows = self._call("query", self.kb_name, filter=f'kind == "file" and id >= {lo} and id < {lo + READ_BATCH}',
                              output_fields=_RECORD_FIELDS, limit=READ_BATCH, consistency_level="Strong")
            for row in rows:
                rec = self._remember(row)
                records[rec.path] = rec
        return records

    def _fetch_records(self, file_ids: Sequence[int]) -> None:
        """Refresh these files' paths and live ranges (another process may have changed them)."""
        for part in batches(sorted(set(file_ids)), READ_BATCH):
            rows = self._call("query", self.kb_name, filter=f"kind == \"file\" and id in {_ints(part)}",
                              output_fields=_RECORD_FIELDS, limit=len(part), consistency_level="Strong")
            found = set()
            for row in rows:
                found.add(self._remember(row).id)
            for fid in set(part) - found:
                self._ranges.pop(fid, None)

    def _current(self) -> dict[str, FileRecord]:
        if self._writing and self._records is not None:
            return self._records
        return self._load_records()

    def files(self) -> list[FileRecord]:
        return [FileRecord(**vars(r)) for _, r in sorted(self._current().items())]

    def find_by_hash(self, file_hash: str, parser: str) -> FileRecord | None:
        for rec in sorted(self._current().values(), key=lambda r: r.id or 0):
            if rec.hash == file_hash and rec.parser == parser and rec.status == "ok" and rec.chunks > 0:
                return FileRecord(**vars(rec))
        return None

    # -- writing
    @contextlib.contextmanager
    def writing(self, on_wait: Callable[[str], None] | None = None) -> Iterator["MilvusKB"]:
        """Hold the write lock (this process's, then the lock record); repair a crashed writer's leftovers."""
        local = _process_lock(self.location, self.kb_name)
        if not local.acquire(timeout=LOCK_WAIT_NOTE_S):
            if on_wait:
                on_wait(f"waiting for another writer to knowledge base {self.name!r}…")
            local.acquire()
        try:
            lease = _Lease(self, on_wait)
            lease.acquire()
            self._lease = lease
            try:
                self._read_meta()
                self.manifest.dimension = int(self._meta.get("manifest", {}).get("dimension", 0))
                self._chunks_ready()  # another writer may have created the chunk collection since this one opened
                self._repair()
                self._records = self._load_records()
                self._writing = True
                yield self
                if self._meta.get("dirty"):  # after an error it stays, for the next writer to clean up
                    self._meta["dirty"] = []
                    self._write_meta()
            finally:
                self._writing = False
                self._records = None
                self._lease = None
                lease.release()
        finally:
            local.release()

    def _require_writer(self) -> None:
        if not self._writing or self._records is None:
            raise RuntimeError("write to a knowledge base inside `with kb.writing():`")
        if self._lease is not None and self._lease.lost:
            raise RagqaError(f"lost the write lock of knowledge base {self.name!r} at {self.location} (another "
                             "process took it after this one stopped answering); run the command again")

    def _repair(self) -> None:
        """Delete what a crashed writer left: chunks of its dirty files outside their live ranges."""
        dirty = [int(i) for i in self._meta.get("dirty", [])]
        if not dirty:
            return
        if self._chunks_ready():
            self._fetch_records(dirty)
            for fid in dirty:
                self._delete_outside(fid, self._ranges.get(fid, (0, 0)))
            log.info("knowledge base %s: cleaned up after an interrupted write (%d files)", self.name, len(dirty))
        self._meta["dirty"] = []
        self._write_meta()

    def _delete_outside(self, fid: int, live: tuple[int, int]) -> None:
        if not self._has_chunks:
            return
        first, n = live
        expr = f"file_id == {fid}"
        if n:
            expr += f" and (chunk_id < {first} or chunk_id >= {first + n})"
        self._call("delete", self.chunks_name, filter=expr)

    def _reserve(self, record: FileRecord, n: int, dimension: int = 0) -> tuple[int, int]:
        """Step 1 of every change to a file: its id, a fresh chunk id range, the file marked dirty."""
        old = self._records.get(record.path) if self._records is not None else None
        fid = old.id if old is not None and old.id is not None else int(self._meta.get("next_file", 1))
        if old is None:
            self._meta["next_file"] = fid + 1
        first = int(self._meta.get("next_chunk", 1))
        self._meta["next_chunk"] = first + n
        self._meta["dirty"] = [fid]
        if dimension and self.manifest.record_vectors(dimension):
            self._meta["manifest"] = json.loads(self.manifest.to_json())
        self._write_meta()
        return fid, first

    def _commit(self, fid: int, record: FileRecord, first: int) -> FileRecord:
        """Steps 3 and 4: the file row points at its new range; chunks outside it go."""
        record.id, record.updated = fid, time.time()
        self._call("upsert", self.kb_name, [self._file_row(record, first)])
        self._paths[fid] = record.path
        self._ranges[fid] = (first, record.chunks)
        assert self._records is not None
        self._records[record.path] = FileRecord(**vars(record))
        self._delete_outside(fid, (first, record.chunks))
        return record

    def _file_row(self, record: FileRecord, first: int) -> dict[str, Any]:
        assert record.id is not None
        return self._row(record.id, "file", record.path, size=record.size, mtime_ns=record.mtime_ns,
                         hash=record.hash, parser=record.parser, status=record.status, error=record.error,
                         chunks=record.chunks, first_chunk=first, updated=record.updated)

    def _check_dimension(self, dimension: int) -> None:
        if self.manifest.dimension and dimension != self.manifest.dimension:
            raise RagqaError(f"vectors have {dimension} dimensions but knowledge base {self.name!r} has "
                             f"{self.manifest.dimension}")
        if not self._has_chunks:
            self._has_chunks = bool(self._call("has_collection", self.chunks_name))
            if not self._has_chunks:
                self._create_chunks_collection(dimension)

    def _insert_chunks(self, fid: int, first: int, rows: Sequence[tuple[int, str, str, Sequence[float]]]) -> None:
        """Step 2: (ord, text, meta JSON, unit vector) rows as chunks first, first + 1, ..."""
        for lo in range(0, len(rows), INSERT_BATCH):
            batch = [{"chunk_id": first + lo + i, "file_id": fid, "ord": int(o), "text": t, "meta": m,
                      "dense": [float(x) for x in v], **self._words(t)}
                     for i, (o, t, m, v) in enumerate(rows[lo:lo + INSERT_BATCH])]
            self._call("insert", self.chunks_name, batch)

    def _words(self, text: str) -> dict[str, str]:
        """The words field of a chunk row: its text folded, cut to what the field holds (a fold may
        change a character's UTF-8 length); none for a KB without the fold."""
        if self._fold == "none":
            return {}
        words = fold(text, self._fold)
        if len(words.encode("utf-8")) > VARCHAR_MAX:
            words = words.encode("utf-8")[:VARCHAR_MAX].decode("utf-8", "ignore")
        return {"words": words}

    def put_file(self, record: FileRecord, chunks: Sequence[Document], vectors: "np.ndarray",
                 tokens: Sequence[Sequence[str]]) -> FileRecord:
        """Store a file's chunks (``tokens`` are not needed: Milvus splits the text with jieba itself)."""
        import numpy as np

        self._require_writer()
        vectors = unit_rows(np.asarray(vectors, dtype="float32"))
        if len(vectors) != len(chunks):
            raise RagqaError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        dimension = int(vectors.shape[1]) if len(vectors) else 0
        if dimension:
            self._check_dimension(dimension)
        rows = []
        for i, (doc, vec) in enumerate(zip(chunks, vectors)):
            meta = json.dumps(chunk_meta(doc), ensure_ascii=False)
            for field, value in (("text", doc.page_content), ("metadata", meta)):
                if len(value.encode("utf-8")) > VARCHAR_MAX:
                    raise InputError(f"{record.path}: a chunk's {field} is over {VARCHAR_MAX} bytes, the most a "
                                     "Milvus text field holds; use a smaller --chunk-size")
            rows.append((i, doc.page_content, meta, vec))
        fid, first = self._reserve(record, len(rows), dimension)
        self._insert_chunks(fid, first, rows)
        record.chunks, record.status, record.error = len(rows), "ok", ""
        return self._commit(fid, record, first)

    def copy_file(self, source: FileRecord, record: FileRecord) -> FileRecord:
        self._require_writer()
        assert source.id is not None
        rows = [(int(r["ord"]), str(r["text"]), str(r["meta"]), r["dense"])
                for r in self._file_chunks(source.id, ["ord", "text", "meta", "dense"])]
        fid, first = self._reserve(record, len(rows))
        self._insert_chunks(fid, first, rows)
        record.chunks, record.status, record.error = len(rows), "ok", ""
        return self._commit(fid, record, first)

    def update_record(self, record: FileRecord) -> None:
        self._require_writer()
        assert self._records is not None
        old = self._records.get(record.path)
        if old is None or old.id is None:
            return
        old.size, old.mtime_ns, old.updated = record.size, record.mtime_ns, time.time()
        self._call("upsert", self.kb_name, [self._file_row(old, self._ranges.get(old.id, (0, 0))[0])])

    def mark_failed(self, record: FileRecord) -> None:
        self._require_writer()
        assert self._records is not None
        old = self._records.get(record.path)
        record.status, record.chunks = "failed", 0
        if old is None or old.chunks:
            fid, _ = self._reserve(record, 0)
        else:
            assert old.id is not None
            fid = old.id
        self._commit(fid, record, 0)

    def remove_files(self, paths: Iterable[str]) -> int:
        self._require_writer()
        assert self._records is not None
        gone = [self._records[p] for p in dict.fromkeys(paths) if p in self._records]
        ids = [int(r.id) for r in gone if r.id is not None]
        if not ids:
            return 0
        self._meta["dirty"] = ids  # a crash below: the next writer deletes these files' chunks
        self._write_meta()
        for part in batches(ids, READ_BATCH):
            self._call("delete", self.kb_name, ids=part)
            if self._has_chunks:
                self._call("delete", self.chunks_name, filter=f"file_id in {_ints(part)}")
        for rec in gone:
            del self._records[rec.path]
            self._ranges.pop(int(rec.id or 0), None)
        return len(gone)

    # -- searching
    def _chunks_ready(self) -> bool:
        if not self._has_chunks:  # another process may have added the first file since this one opened
            self._has_chunks = bool(self._call("has_collection", self.chunks_name))
            if self._has_chunks:
                self._call_loaded(self.chunks_name)
        return self._has_chunks

    def count(self) -> int:
        if not self._chunks_ready():
            return 0
        rows = self._call("query", self.chunks_name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def search_batch_ids(self, query_vectors: Sequence[Sequence[float]], k: int,
                         file_ids: Sequence[int] | None = None) -> list[list[tuple[int, float]]]:
        if not len(query_vectors):
            return []
        if not self._chunks_ready() or (file_ids is not None and not len(file_ids)):
            return [[] for _ in query_vectors]
        data = [[float(x) for x in v] for v in query_vectors]
        results = self._call("search", self.chunks_name, data=data, anns_field="dense", limit=min(k, MAX_TOPK),
                             filter=_file_filter(file_ids), search_params={"metric_type": "COSINE"},
                             output_fields=["file_id"], consistency_level="Strong")
        return [[(int(h["chunk_id"]), float(h["distance"])) for h in hits] for hits in results]

    def bm25_search(self, query: str, k: int, file_ids: Sequence[int] | None = None) -> list[tuple[int, float]]:
        """BM25 over Milvus's own jieba words of the chunks (folded as the KB folds them);
        punctuation in the question is ignored."""
        text = " ".join(_PUNCT.sub(" ", fold(query or "", self._fold)).split())
        if not text or not self._chunks_ready() or (file_ids is not None and not len(file_ids)):
            return []
        results = self._call("search", self.chunks_name, data=[text], anns_field="sparse", limit=min(k, MAX_TOPK),
                             filter=_file_filter(file_ids), search_params={"metric_type": "BM25"},
                             output_fields=["file_id"], consistency_level="Strong")
        # Milvus scores BM25 as a positive similarity; milvus-lite returns it negated
        hits = [(int(h["chunk_id"]), abs(float(h["distance"]))) for h in (results[0] if results else [])]
        return [(i, s) for i, s in hits if s > 0]

    def _live(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows inside their file's live range (a crash or a concurrent replace may leave others)."""
        def ok(row: dict[str, Any]) -> bool:
            rng = self._ranges.get(int(row["file_id"]))
            return rng is not None and rng[0] <= int(row["chunk_id"]) < rng[0] + rng[1]

        stale = {int(r["file_id"]) for r in rows if not ok(r)}
        if stale:
            self._fetch_records(list(stale))
        return [r for r in rows if ok(r)]

    def get_chunks(self, ids: Sequence[int]) -> list[Document]:
        wanted = [int(i) for i in ids]
        if not wanted or not self._chunks_ready():
            return []
        found: dict[int, Document] = {}
        for part in batches(sorted(set(wanted)), READ_BATCH):
            rows = self._call("query", self.chunks_name, filter=f"chunk_id in {_ints(part)}",
                              output_fields=["chunk_id", "file_id", "text", "meta"], limit=len(part),
                              consistency_level="Strong")
            for row in self._live(list(rows)):
                cid = int(row["chunk_id"])
                found[cid] = chunk_document(cid, str(row["text"]), str(row["meta"]), self._paths[int(row["file_id"])])
        return [found[i] for i in wanted if i in found]

    def _file_chunks(self, fid: int, fields: list[str]) -> list[dict[str, Any]]:
        """A file's live chunks in order, read by chunk id windows of its range."""
        if not self._chunks_ready():
            return []
        if fid not in self._ranges:
            self._fetch_records([fid])
        first, n = self._ranges.get(fid, (0, 0))
        out: list[dict[str, Any]] = []
        for lo in range(first, first + n, READ_BATCH):
            hi = min(lo + READ_BATCH, first + n)
            out += self._call("query", self.chunks_name,
                              filter=f"file_id == {fid} and chunk_id >= {lo} and chunk_id < {hi}",
                              output_fields=["chunk_id", *fields], limit=hi - lo, consistency_level="Strong")
        return sorted(out, key=lambda r: int(r["chunk_id"]))

    def iter_chunks(self, file_ids: Sequence[int] | None = None) -> Iterator[Document]:
        records = self._current()
        ids = sorted(int(r.id) for r in records.values() if r.id is not None and r.status == "ok")
        if file_ids is not None:
            ids = sorted(set(ids) & {int(i) for i in file_ids})
        for fid in ids:
            for row in self._file_chunks(fid, ["ord", "text", "meta"]):
                yield chunk_document(int(row["chunk_id"]), str(row["text"]), str(row["meta"]), self._paths[fid])

    # -- the KB as a whole
    def stats(self) -> KBStats:
        records = self._current().values()
        failed = sum(1 for r in records if r.status != "ok")
        # the server's disk use is not visible to a client: size is reported as 0
        return KBStats(self.name, self.engine, len(records) - failed, failed, self.count(), self.manifest.embedding,
                       0, self.location)

    def drop(self) -> None:
        """Both collections go (chunks first: a crash in between leaves a KB that can be dropped again)."""
        local = _process_lock(self.location, self.kb_name)
        with local:
            lease = _Lease(self, None)
            lease.acquire()
            lease.stop()
            if self._call("has_collection", self.chunks_name):
                self._call("drop_collection", self.chunks_name)
            self._call("drop_collection", self.kb_name)
        self.close()

    def close(self) -> None:
        if self._lease is not None:
            self._lease.stop()
        with contextlib.suppress(Exception):
            self.client.close()


class _Lease:
    """The lock record (id -1 in the KB collection): holder and heartbeat; see the module docstring."""

    def __init__(self, kb: MilvusKB, on_wait: Callable[[str], None] | None) -> None:
        self.kb = kb
        self.on_wait = on_wait
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> tuple[str, float] | None:
        rows = self.kb._call("get", self.kb.kb_name, ids=[LOCK_ROW], output_fields=["path", "updated"],
                             consistency_level="Strong")
        return (str(rows[0]["path"]), float(rows[0]["updated"])) if rows else None

    def _stamp(self) -> None:
        self.kb._call("upsert", self.kb.kb_name, [self.kb._row(LOCK_ROW, "lock", self.token, updated=time.time())])

    def acquire(self) -> None:
        noted = False
        while True:
            held = self._holder()
            if held and held[0] != self.token and time.time() - held[1] < LOCK_TTL_S:
                if not noted and self.on_wait:
                    self.on_wait(f"waiting for another ragqa process writing to knowledge base {self.kb.name!r} "
                                 f"({held[0].rsplit(':', 1)[0]})…")
                noted = True
                time.sleep(LOCK_POLL_S)
                continue
            self._stamp()
            time.sleep(LOCK_SETTLE_S)  # let a writer that read "free" at the same moment write too
            held = self._holder()
            if held and held[0] == self.token:
                break
        self._thread = threading.Thread(target=self._beat, name="ragqa-milvus-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                held = self._holder()
                if not held or held[0] != self.token:
                    self.lost = True
                    return
                self._stamp()
            except RagqaError as exc:  # the next write reports the server problem
                log.debug("lock heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=CALL_TIMEOUT_S)

    def release(self) -> None:
        self.stop()
        with contextlib.suppress(RagqaError):
            held = self._holder()
            if held and held[0] == self.token:
                self.kb._call("delete", self.kb.kb_name, ids=[LOCK_ROW])


# -- helpers ----------------------------------------------------------------------------------------


def _process_lock(location: str, collection: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault((location, collection), threading.Lock())


def _ints(values: Iterable[int]) -> str:
    """An expression list of integers (never user text: no quoting needed)."""
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def _file_filter(file_ids: Sequence[int] | None) -> str:
    return "" if file_ids is None else f"file_id in {_ints(file_ids)}"
