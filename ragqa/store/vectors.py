"""The local engine's vector index, derived from the KB's SQLite truth: FAISS over the chunks' vectors.

A base file (``base-<max_id>-<ms>.faiss``, named in ``state.json``) holds the chunks up to
``max_id``; newer chunks (the *delta*) are read from SQLite and searched exactly in memory;
deleted chunks stay in the base and are filtered out by id (``dead_chunks``). When the delta or
the dead outgrow ``max(COMPACT_MIN, COMPACT_RATIO x base)`` the writer rebuilds the base from
SQLite: flat (exact) below ``HNSW_MIN`` chunks, HNSW above. Never re-embedded, never pickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa.paths import atomic_path
from ragqa.store.base import faiss_module, read_state, write_state

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

HNSW_MIN = 50_000  # chunks from which the base index is HNSW (a flat scan of 100k x 384 takes ~30 ms)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_MAX = 1024  # a scoped HNSW search explores up to this much
SCOPE_SCAN_MAX = 5_000  # chunks in a scope up to which it is scanned exactly instead (~1 ms at 384-d)
WIDE_SCOPE = 0.2  # a scope with this share of the chunks or more starts from the unscoped search's head
COMPACT_MIN = 5_000  # delta or dead chunks tolerated before the base is rebuilt, at least
COMPACT_RATIO = 0.1  # ... or this share of the base


class ChunkScope:
    """The chunks a scoped search may return (a bool per chunk id), with what the searches derive
    from it computed once: a KB keeps one per scope until it changes."""

    def __init__(self, mask: "np.ndarray") -> None:
        self.mask = mask
        self._derived: dict[Any, Any] = {}

    def _base_part(self, max_id: int) -> "np.ndarray":
        import numpy as np

        part = self.mask[: max_id + 1]
        return part if len(part) == max_id + 1 else np.concatenate([part, np.zeros(max_id + 1 - len(part), dtype=bool)])

    def _get(self, key: Any, make: Any) -> Any:
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def count(self, max_id: int) -> int:
        return self._get(("count", max_id), lambda: int(self._base_part(max_id).sum()))

    def share(self, max_id: int) -> float:
        return self.count(max_id) / max(1, max_id + 1)

    def ids(self, max_id: int) -> "np.ndarray":
        import numpy as np

        return self._get(("ids", max_id), lambda: np.flatnonzero(self._base_part(max_id)))

    def selector(self, max_id: int) -> Any:
        """A FAISS bitmap selector over the base's ids (it holds its bitmap alive)."""
        import numpy as np

        def make() -> Any:
            bits = np.packbits(self._base_part(max_id), bitorder="little")
            sel = faiss_module().IDSelectorBitmap(max_id + 1, faiss_module().swig_ptr(bits))
            sel.ragqa_bits = bits
            return sel

        return self._get(("selector", max_id), make)


class VectorIndex:
    """FAISS over the chunks' vectors: a base file up to ``max_id`` plus the delta from SQLite."""

    def __init__(self, folder: Path, db: sqlite3.Connection) -> None:
        self.folder = folder
        self.db = db
        self._base: Any = None
        self._max_id = 0
        self._kind = "none"
        self._delta: tuple[Any, Any] | None = None  # (ids, vectors), loaded on first search
        self._dead: Any = None
        self._stored: tuple[Any, Any] | None = None  # the base's vectors and ids, for scoped scans
        self._generation: str | None = None  # of the truth when the delta was read
        self._load_base()

    def _load_base(self) -> None:
        state = read_state(self.folder / "state.json")
        if not state:
            return
        path = self.folder / str(state.get("file", ""))
        faiss = faiss_module()
        try:
            try:  # memory-mapped: 100k vectors open in ~0.02 s instead of ~0.15 s; never written to
                base = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            except (RuntimeError, AttributeError):  # an older faiss, or an index type it cannot map
                base = faiss.read_index(str(path))
        except (RuntimeError, OSError) as exc:
            log.warning("vector index %s is unreadable (%s); searching from the database until it is rebuilt",
                        path, exc)
            return
        if base.ntotal != state.get("count"):
            log.warning("vector index %s does not match its state; ignoring it", path)
            return
        self._base, self._max_id, self._kind = base, int(state["max_id"]), str(state.get("kind", "flat"))
        self._stored = None

    def _load_delta(self) -> tuple[Any, Any]:
        import numpy as np

        if self._delta is None:
            rows = self.db.execute("SELECT id, vector FROM chunks WHERE id > ? ORDER BY id", (self._max_id,)).fetchall()
            ids = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
            vectors = np.vstack([np.frombuffer(r[1], dtype="float32") for r in rows]) if rows else None
            self._delta = (ids, vectors)
        return self._delta

    def _dead_ids(self) -> "np.ndarray":
        import numpy as np

        if self._dead is None:
            rows = self.db.execute("SELECT id FROM dead_chunks WHERE id <= ?", (self._max_id,)).fetchall()
            self._dead = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
        return self._dead

    def _refresh(self) -> None:
        """Forget the delta and dead ids when the truth has changed since they were read (another
        process may write while a long-lived page searches)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        generation = row[0] if row else None
        if generation != self._generation:
            self._delta, self._dead, self._generation = None, None, generation
            state = read_state(self.folder / "state.json") or {}
            if state.get("file") and state.get("max_id") != self._max_id:
                self._load_base()  # another process rebuilt the base (its old dead ids are gone)

    def search(self, q: "np.ndarray", k: int, scope: "ChunkScope | None") -> list[list[tuple[int, float]]]:
        """The top ``k`` (id, cosine) of each query row; with ``scope``, only its chunks.

        A scope of a few chunks is scanned exactly (from the base's own vectors). On an HNSW base a
        wide one first takes the unscoped search's head and keeps the chunks in scope (what a
        filtered graph walk would also find, for the cost of an unscoped search); a head too short,
        or a middling scope, is searched with a bitmap selector, HNSW looking further (1 / sqrt(share))."""
        self._refresh()
        results: list[list[tuple[int, float]]] = [[] for _ in range(len(q))]
        if self._base is not None and self._base.ntotal:
            faiss = faiss_module()
            faiss.omp_set_num_threads(1 if len(q) == 1 else max(1, os.cpu_count() or 1))
            n = min(k, self._base.ntotal)
            if scope is not None and scope.count(self._max_id) <= SCOPE_SCAN_MAX:
                return self._with_delta(q, k, self._scan(q, k, scope.ids(self._max_id)), scope)
            keep: list[Any] = []  # the selectors must outlive the search call
            dead = self._dead_ids()
            unscoped = None
            if len(dead):
                keep.append(faiss.IDSelectorBatch(dead))
                keep.append(faiss.IDSelectorNot(keep[-1]))
                unscoped = keep[-1]
            share = scope.share(self._max_id) if scope is not None else 1.0
            effort = max(HNSW_EF_SEARCH, 2 * k)
            if scope is not None and self._kind == "hnsw" and share >= WIDE_SCOPE:
                head_n = min(effort, int(1.5 * k / share) + 4)
                params = faiss.SearchParametersHNSW(efSearch=effort)
                if unscoped is not None:
                    params.sel = unscoped
                scores, ids = self._base.search(q, head_n, params=params)
                inside = scope.mask
                heads = [[(int(i), float(s)) for s, i in zip(srow, irow) if 0 <= i < len(inside) and inside[i]]
                         for srow, irow in zip(scores, ids)]
                if all(len(h) >= n for h in heads):
                    return self._with_delta(q, k, [h[:k] for h in heads], scope)
            sel = scope.selector(self._max_id) if scope is not None else unscoped
            if self._kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=min(HNSW_EF_SEARCH_MAX, int(effort / max(share, 1e-6) ** 0.5)))
                if sel is not None:
                    params.sel = sel
            else:
                params = faiss.SearchParameters(sel=sel) if sel is not None else None
            scores, ids = self._base.search(q, n, params=params)
            for row, (srow, irow) in enumerate(zip(scores, ids)):
                results[row] = [(int(i), float(s)) for s, i in zip(srow, irow) if i >= 0]
        return self._with_delta(q, k, results, scope)

    def _with_delta(self, q: "np.ndarray", k: int, results: list[list[tuple[int, float]]],
                    scope: "ChunkScope | None") -> list[list[tuple[int, float]]]:
        """The base's hits merged with an exact search of the delta (the chunks newer than the base)."""
        import numpy as np

        delta_ids, delta_vectors = self._load_delta()
        if delta_vectors is not None:
            mask = None
            if scope is not None:  # a chunk written after the scope was read is not in it
                mask = np.zeros(len(delta_ids), dtype=bool)
                inside = delta_ids < len(scope.mask)
                mask[inside] = scope.mask[delta_ids[inside]]
            ids, vecs = (delta_ids[mask], delta_vectors[mask]) if mask is not None else (delta_ids, delta_vectors)
            if len(ids):
                scores = q @ vecs.T
                results = [_ranked(results[row] + _top(scores[row], ids, k), k) for row in range(len(q))]
        return results

    def _scan(self, q: "np.ndarray", k: int, ids: "np.ndarray") -> list[list[tuple[int, float]]]:
        """Exact top ``k`` among the base's chunks ``ids``, from the base's stored vectors."""
        import numpy as np

        if not len(ids):
            return [[] for _ in range(len(q))]
        stored, order = self._base_vectors()
        rows = np.searchsorted(order, ids)
        rows = rows[(rows < len(order)) & (order[np.minimum(rows, len(order) - 1)] == ids)]  # dead ones are gone
        scores = q @ stored[rows].T
        return [_top(scores[row], order[rows], k) for row in range(len(q))]

    def _base_vectors(self) -> tuple["np.ndarray", "np.ndarray"]:
        """(the base's vectors, their chunk ids, ascending): views of the index itself, no copy."""
        import numpy as np

        if self._stored is None:
            faiss = faiss_module()
            order = faiss.vector_to_array(self._base.id_map).astype("int64")
            inner = faiss.downcast_index(self._base.index)
            flat = faiss.downcast_index(inner.storage) if hasattr(inner, "storage") else inner
            codes = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
            stored = np.asarray(codes).reshape(flat.ntotal, flat.d)
            if len(order) > 1 and not (np.diff(order) > 0).all():  # built in id order; sort if ever not
                sort = np.argsort(order)
                order, stored = order[sort], stored[sort]
            self._stored = (stored, order)
        return self._stored

    def compact_if_needed(self) -> None:
        """Rebuild the base when the delta or the dead chunks outgrow it (writer only)."""
        base_n = self._base.ntotal if self._base is not None else 0
        delta_n = self.db.execute("SELECT count(*) FROM chunks WHERE id > ?", (self._max_id,)).fetchone()[0]
        dead_n = self.db.execute("SELECT count(*) FROM dead_chunks WHERE id <= ?", (self._max_id,)).fetchone()[0]
        limit = max(COMPACT_MIN, COMPACT_RATIO * base_n)
        if delta_n > limit or dead_n > limit or (dead_n and dead_n >= base_n):
            self.rebuild()

    def rebuild(self) -> None:
        """Write a new base from every chunk in SQLite, atomically (file, then state.json)."""
        import numpy as np

        faiss = faiss_module()
        total, max_id = self.db.execute("SELECT count(*), coalesce(max(id), 0) FROM chunks").fetchone()
        dim_row = self.db.execute("SELECT length(vector) FROM chunks LIMIT 1").fetchone()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not total or not dim_row:
            index, kind = None, "none"
        else:
            dim = dim_row[0] // 4
            kind = "hnsw" if total >= HNSW_MIN else "flat"
            if kind == "hnsw":
                inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
                log.warning("building the HNSW vector index over %d chunks (once; about a minute per 100k)", total)
            else:
                inner = faiss.IndexFlatIP(dim)
            index = faiss.IndexIDMap(inner)
            faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))
            cur = self.db.execute("SELECT id, vector FROM chunks WHERE id <= ? ORDER BY id", (max_id,))
            while rows := cur.fetchmany(20_000):
                ids = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
                index.add_with_ids(np.vstack([np.frombuffer(r[1], dtype="float32") for r in rows]), ids)
        name = f"base-{max_id}-{int(time.time() * 1000)}.faiss"
        if index is not None:
            with atomic_path(self.folder / name) as tmp:
                faiss.write_index(index, str(tmp))
        write_state(self.folder / "state.json",
                           {"file": name if index is not None else "", "max_id": int(max_id),
                            "count": int(index.ntotal) if index is not None else 0, "kind": kind})
        self.db.execute("DELETE FROM dead_chunks WHERE id <= ?", (max_id,))
        for stale in self.folder.glob("*.faiss"):
            if stale.name != name:
                with contextlib.suppress(OSError):
                    stale.unlink()
        for tmp_file in self.folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp_file.unlink()
        self._base, self._max_id, self._kind, self._delta, self._dead = index, int(max_id), kind, None, None
        self._stored = None



def _ranked(hits: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """The best ``k`` (id, score) pairs, best first, ties by id."""
    return sorted(hits, key=lambda t: (-t[1], t[0]))[:k]


def _top(scores: "np.ndarray", ids: "np.ndarray", k: int) -> list[tuple[int, float]]:
    """The top ``k`` (id, score) of one query's ``scores`` against the chunks ``ids``, best first."""
    import numpy as np

    n = min(k, len(ids))
    best = np.argpartition(-scores, n - 1)[:n] if n < len(ids) else np.arange(len(ids))
    return _ranked([(int(ids[j]), float(scores[j])) for j in best], k)
