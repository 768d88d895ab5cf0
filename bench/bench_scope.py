"""Scoped questions (`ragqa ask --kb NAME --doc PATTERN`): what a scope costs at ~100k chunks.

One KB of 2000 files x ~50 chunks (bench_scale.py's corpus and stand-in embeddings: real Chinese
and English text, a 384-d vector from each chunk's hash). For each retriever, the time of what
`ask --kb` does before the prompt — open the KB's view (with --doc: match the patterns against
the KB's documents), then retrieve the top 4 — with no scope, with a scope of 1 % of the
documents (20 files) and of 50 % (1000 files), side by side with the raw engines' unfiltered
search on the same data. Also the recall@4 of the scoped vector search against an exact search
over the scoped chunks alone (HNSW's filtered search may miss what a scan finds).

    .venv/bin/python bench/bench_scope.py               # ~100k chunks: ~3 min on 2 cores
    .venv/bin/python bench/bench_scope.py --chunks 20000

Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import CHUNK_SIZE, DIM, QUERIES, HashEmbeddings, percentiles, sentences, timed, write_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5, help="runs of each question")
    ap.add_argument("--work", type=Path, help="keep the corpus and KB in this folder, and reuse them when there")
    args = ap.parse_args()

    import faiss
    import numpy as np
    import tantivy

    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline
    from ragqa.retrieval import make_retriever
    from ragqa.store.vectors import HNSW_EF_SEARCH
    from ragqa.words import tokenize

    with tempfile.TemporaryDirectory(prefix="ragqa-bench-scope-") as tmp:
        work = args.work or Path(tmp)
        settings = load_settings(data_dir=work / "data", cache_dir=work / "cache", chunk_size=CHUNK_SIZE, chunk_overlap=0)
        if (work / "corpus").is_dir():
            files = sorted((work / "corpus").glob("doc*.txt"))
        else:
            files = write_corpus(work / "corpus", args.chunks, sentences())
            p = Pipeline(settings)
            p._embeddings = HashEmbeddings()
            t = time.perf_counter()
            p.index_paths(p.open_kb("bench", create=True), [work / "corpus"], progress=False)
            print(f"indexed {len(files)} files in {time.perf_counter() - t:.0f} s", file=sys.stderr)

        p = Pipeline(settings)  # a fresh process's view of the KB, as `ask --kb` opens it
        p._embeddings = emb = HashEmbeddings()
        kb = p.kb("bench")
        kb.view(None).search_ids(emb.embed_query("warm"), 4)
        n_files = len(files)
        # of 2000 files: 1 % = doc00000..doc00019, 50 % = doc00000..doc00999 (a smaller corpus picks
        # other shares: the line below prints how many files each scope holds)
        scopes = {"none": None, "1 %": ["doc000[01]*"], "50 %": ["doc00*"]}
        picked = {label: len(p.kb_index("bench", docs)[0].file_ids or files) for label, docs in scopes.items()}
        print(f"{kb.count()} chunks, {n_files} files; vector index {kb._vectors._kind}; "
              f"scopes: " + ", ".join(f"{label} = {n} files" for label, n in picked.items()))

        qvecs = {q: np.asarray([emb.embed_query(q)], dtype="float32") for q in QUERIES}
        base = kb._vectors._base
        params = faiss.SearchParametersHNSW(efSearch=HNSW_EF_SEARCH) if kb._vectors._kind == "hnsw" else None
        faiss.omp_set_num_threads(1)
        index = kb._keywords._open()
        searcher = index.searcher()

        def raw_vector(q: str) -> None:
            base.search(qvecs[q], 20, params=params)

        def raw_bm25(q: str) -> None:
            query = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(index.schema, "words", w))
                                                 for w in dict.fromkeys(tokenize(q))])
            searcher.fast_field_values("chunk_id", [a for _, a in searcher.search(query, 20).hits])

        raw = {"vector": raw_vector, "bm25": raw_bm25, "hybrid": lambda q: (raw_vector(q), raw_bm25(q))}
        rows: dict[str, dict[str, tuple[float, float]]] = {}
        for kind in ("vector", "bm25", "hybrid"):
            rows[kind] = {}
            for label, docs in scopes.items():
                def ask(q: str, docs=docs) -> None:
                    view, _ = p.kb_index("bench", docs)
                    make_retriever(kind, view, emb, 4).invoke(q)
                for q in QUERIES[:2]:
                    ask(q)
                rows[kind][label] = percentiles([x for q in QUERIES for x in timed(lambda q=q: ask(q), args.repeats)])
            rows[kind]["raw engine, no scope"] = percentiles(
                [x for q in QUERIES for x in timed(lambda q=q: raw[kind](q), args.repeats)])

        recall: dict[str, float] = {}
        for label, docs in scopes.items():
            view, _ = p.kb_index("bench", docs)
            where = "" if view.file_ids is None else f" WHERE file_id IN ({','.join(map(str, view.file_ids))})"
            rows_ = kb.db.execute("SELECT vector FROM chunks" + where).fetchall()
            mat = np.vstack([np.frombuffer(v, dtype="float32") for (v,) in rows_])
            hit = 0
            for q in QUERIES:
                # by score, not id: the corpus repeats sentences, so equal chunks tie
                kth = np.sort(mat @ qvecs[q][0])[-4]
                hit += sum(1 for _, score in view.search_ids(qvecs[q][0].tolist(), 4) if score >= kth - 1e-5)
            recall[label] = hit / (4 * len(QUERIES))

    print(f"\nretrieval before the prompt (open the view, match --doc, top 4), ms; {len(QUERIES)} questions x {args.repeats}")
    labels = [*scopes, "raw engine, no scope"]
    print(f"{'':8}" + "".join(f"{label:>24}" for label in labels))
    for kind, row in rows.items():
        print(f"{kind:8}" + "".join(f"{f'{row[label][0]:.2f} / {row[label][1]:.2f}':>24}" for label in labels))
    for kind, row in rows.items():
        print(f"{kind}: p50 scoped / unscoped: " + ", ".join(
            f"{label} {row[label][0] / row['none'][0]:.2f}x" for label in scopes if label != "none"))
    print("vector recall@4 against an exact scan of the same chunks (by score; hash vectors are HNSW's worst case): " +
          ", ".join(f"{label} {value:.2f}" for label, value in recall.items()))
    print(f"(p50 / p95; dimension {DIM})")


if __name__ == "__main__":
    main()
