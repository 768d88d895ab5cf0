"""Knowledge bases at 1k, 10k and 100k chunks: indexing, re-indexing, one more file, retrieval
beside the raw engines, a warm `ragqa ask --kb --dry-run` process, and `ragqa ask DIR` on the
cached folder. Everything printed side by side in one run.

Text: real Chinese and English paragraphs from ../shared/eval (DRCD, CMRC2018, CSL abstracts,
SQuAD), cut into sentences and dealt into files of ~50 chunks each, as many files as a size
needs (sentences repeat across files at 100k; their order and mix differ).

Embeddings while indexing: a stand-in that derives a 384-dimension unit vector from each text's
hash (the same dimension as the default multilingual-e5-small), so embedding cost does not
dominate; the KBs are stamped with the default embedding model, so `ragqa ask --kb` below runs
the real e5 model on the question against them, as a user would. Retrieval quality is not
measured here (see `ragqa eval`), only cost.

    .venv/bin/python bench/bench_scale.py                      # 1k, 10k, 100k; ~10 min on 2 cores
    .venv/bin/python bench/bench_scale.py --sizes 1000,10000   # quicker
    .venv/bin/python bench/bench_scale.py --markdown           # tables for the README

Each size runs in its own process, so "peak RSS (index)" is that size's indexing process alone.
Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
CHUNKS_PER_FILE = 50
CHUNK_SIZE = 200  # characters; small chunks make 100k chunks from ~20 MB of text
DIM = 384
QUERIES = [
    "飞行器姿态控制系统的数学模型", "熊猫的主要食物是什么", "What did the Broncos win", "台湾的高速铁路",
    "非线性控制器设计方法", "Which team won Super Bowl 50", "诺贝尔文学奖得主", "深度学习图像分割",
    "长江流域的气候特点", "the Normans in France", "城市交通拥堵治理", "基于平方和方法的镇定控制器",
]


# -- text --------------------------------------------------------------------------------------------


def sentences() -> list[str]:
    out: list[str] = []
    for name in ("zh_mrc/DRCD_dev.json", "zh_mrc/cmrc2018_trial.squad.json", "en_mrc/squad_dev_v1.1.json"):
        path = EVAL / name
        if path.is_file():
            data = json.loads(path.read_text("utf-8"))["data"]
            for article in data:
                for para in article["paragraphs"]:
                    out += [s for s in re.split(r"(?<=[。！？.!?])\s*", para["context"]) if len(s) > 8]
    csl = EVAL / "zh_sum" / "csl_ts_dev.tsv"
    if csl.is_file():
        for line in csl.read_text("utf-8").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 2:
                out += [s for s in re.split(r"(?<=[。！？.])", parts[1]) if len(s) > 8]
    if not out:
        sys.exit(f"no eval data under {EVAL}")
    return out


def write_corpus(folder: Path, chunks: int, pool: list[str], seed: int = 0) -> list[Path]:
    """Files of about CHUNKS_PER_FILE chunks of CHUNK_SIZE characters each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(max(1, chunks // CHUNKS_PER_FILE)):
        paras, size = [], 0
        while size < CHUNKS_PER_FILE * CHUNK_SIZE * 0.93:
            para = "".join(rng.choice(pool) for _ in range(3))[:CHUNK_SIZE - 20]
            paras.append(para)
            size += len(para) + 2
        path = folder / f"doc{n:05d}.txt"
        path.write_text("\n\n".join(paras), "utf-8")
        files.append(path)
    return files


# -- the stand-in embeddings ----------------------------------------------------------------------------


class HashEmbeddings:
    """A unit vector per text from its hash: ~free, deterministic, the default model's dimension."""

    def _one(self, text: str):
        import numpy as np

        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype("float32")
        return v / np.linalg.norm(v)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


# -- one size, in its own process ----------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run_size(chunks: int, work: Path, repeats: int) -> dict:
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline
    from ragqa.retrieval import make_retriever
    from ragqa.words import tokenize

    pool = sentences()
    corpus = work / "corpus"
    files = write_corpus(corpus, chunks, pool)
    settings = load_settings(data_dir=work / "data", cache_dir=work / "cache", chunk_size=CHUNK_SIZE, chunk_overlap=0)

    def pipeline() -> Pipeline:
        p = Pipeline(settings)
        p._embeddings = HashEmbeddings()  # the KB is still stamped with the default embedding model
        return p

    r: dict = {"chunks_target": chunks, "files": len(files)}
    p = pipeline()
    kb = p.open_kb("bench", create=True)
    t = time.perf_counter()
    rep = p.index_paths(kb, [corpus], progress=False)
    r["index_s"] = time.perf_counter() - t
    r["chunks"] = kb.count()
    r["rss_index_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert rep.added == len(files), rep.line()

    p2 = pipeline()
    kb2 = p2.open_kb("bench")
    t = time.perf_counter()
    rep = p2.index_paths(kb2, [corpus], progress=False)
    r["reindex_s"] = time.perf_counter() - t
    assert rep.unchanged == len(files), rep.line()

    extra = write_corpus(work / "extra", CHUNKS_PER_FILE, pool, seed=99)[0]
    t = time.perf_counter()
    rep = p2.index_paths(kb2, [extra], progress=False)
    r["add_one_s"] = time.perf_counter() - t
    r["add_one_chunks"] = rep.chunks

    # in-process retrieval through ragqa's retrievers, beside the raw engines on the same data
    kb3 = pipeline().open_kb("bench")
    view = kb3.view(None)
    emb = HashEmbeddings()
    qvecs = {q: [float(x) for x in emb.embed_query(q)] for q in QUERIES}
    import numpy as np
    import tantivy

    base = kb3._vectors._base
    raw_vectors = base is not None
    if base is None:  # a small KB searches its vectors in memory: the raw engine is a flat FAISS index
        import faiss

        rows = kb3.db.execute("SELECT id, vector FROM chunks").fetchall()
        base = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
        base.add_with_ids(np.vstack([np.frombuffer(v, dtype="float32") for _, v in rows]),
                          np.asarray([i for i, _ in rows], dtype="int64"))
    kw = kb3._keywords._open()
    schema = kw.schema
    searcher = kw.searcher()

    import faiss

    from ragqa.store.vectors import HNSW_EF_SEARCH

    # the same search effort ragqa asks of an HNSW base (faiss's own default efSearch is 16)
    raw_params = faiss.SearchParametersHNSW(efSearch=HNSW_EF_SEARCH) if kb3._vectors._kind == "hnsw" else None

    faiss.omp_set_num_threads(1)  # one query at a time, as ragqa searches (threads only add overhead here)

    def raw_vector(q: str) -> None:
        base.search(np.asarray([qvecs[q]], dtype="float32"), 20, params=raw_params)

    def raw_bm25(q: str) -> None:
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "words", w)) for w in dict.fromkeys(tokenize(q))])
        hits = searcher.search(query, 20).hits
        searcher.fast_field_values("chunk_id", [a for _, a in hits])

    for kind in ("vector", "bm25", "hybrid"):
        retriever = make_retriever(kind, view, emb, 4)
        for q in QUERIES[:2]:
            retriever.invoke(q)  # warm
        ours = [x for q in QUERIES for x in timed(lambda q=q: retriever.invoke(q), repeats)]
        if kind == "vector":
            raw = [x for q in QUERIES for x in timed(lambda q=q: raw_vector(q), repeats)]
        elif kind == "bm25":
            raw = [x for q in QUERIES for x in timed(lambda q=q: raw_bm25(q), repeats)]
        else:
            raw = [x for q in QUERIES for x in timed(lambda q=q: (raw_vector(q), raw_bm25(q)), repeats)]
        r[f"{kind}_p50"], r[f"{kind}_p95"] = percentiles(ours)
        r[f"{kind}_raw_p50"], r[f"{kind}_raw_p95"] = percentiles(raw)
    r["vector_index"] = kb3._vectors._kind if raw_vectors else "delta only (in memory)"

    # warm CLI processes with the real default embeddings on the question
    env = {**os.environ, "RAGQA_DATA_DIR": str(work / "data"), "RAGQA_CACHE_DIR": str(work / "cache"),
           "RAGQA_CHUNK_SIZE": str(CHUNK_SIZE), "RAGQA_CHUNK_OVERLAP": "0"}
    ragqa = [sys.executable, "-m", "ragqa"]

    def cli(args: list[str]) -> tuple[float, float]:
        code = ("import resource, subprocess, sys, time\n"
                "t = time.perf_counter()\n"
                "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
                "w = time.perf_counter() - t\n"
                "if p.returncode: sys.exit(p.stderr)\n"
                "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
        out = subprocess.run([sys.executable, "-c", code, *ragqa, *args], env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"ragqa {' '.join(args)} failed: {out.stderr[-500:]}")
        wall, rss = out.stdout.split()
        return float(wall), float(rss)

    q = QUERIES[0]
    cli(["ask", "--kb", "bench", q, "--dry-run"])  # warm the page cache
    runs = [cli(["ask", "--kb", "bench", q, "--dry-run"]) for _ in range(3)]
    r["ask_kb_s"] = statistics.median(w for w, _ in runs)
    r["ask_kb_rss_mb"] = max(m for _, m in runs)

    # ragqa ask DIR on the cached folder: the internal files KB filled once with the stand-in
    p4 = pipeline()
    p4.build_index([corpus])
    cli(["ask", str(corpus), q, "--dry-run"])
    runs = [cli(["ask", str(corpus), q, "--dry-run"]) for _ in range(3)]
    r["ask_dir_s"] = statistics.median(w for w, _ in runs)
    r["ask_dir_rss_mb"] = max(m for _, m in runs)
    return r


# -- report ------------------------------------------------------------------------------------------------


def report(results: list[dict], markdown: bool) -> str:
    cols = [f"{r['chunks']:,} chunks" for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("files", [str(r["files"]) for r in results]),
        ("vector index", [r["vector_index"] for r in results]),
        ("index (stand-in embeddings)", [f"{r['index_s']:.1f} s" for r in results]),
        ("re-index, all unchanged", [f"{r['reindex_s']:.2f} s" for r in results]),
        ("add one file (~50 chunks)", [f"{r['add_one_s']:.2f} s" for r in results]),
    ]
    for kind in ("vector", "bm25", "hybrid"):
        rows.append((f"{kind}: ragqa p50 / p95", [f"{r[kind + '_p50']:.2f} / {r[kind + '_p95']:.2f} ms" for r in results]))
        rows.append((f"{kind}: raw engine p50 / p95", [f"{r[kind + '_raw_p50']:.2f} / {r[kind + '_raw_p95']:.2f} ms"
                                                        for r in results]))
        rows.append((f"{kind}: ratio (p50)", [f"{r[kind + '_p50'] / max(r[kind + '_raw_p50'], 1e-6):.1f}x"
                                              for r in results]))
    rows += [
        ("`ask --kb --dry-run` process", [f"{r['ask_kb_s']:.2f} s" for r in results]),
        ("`ask DIR --dry-run` process (cached)", [f"{r['ask_dir_s']:.2f} s" for r in results]),
        ("peak RSS: index / ask --kb / ask DIR",
         [f"{r['rss_index_mb']:.0f} / {r['ask_kb_rss_mb']:.0f} / {r['ask_dir_rss_mb']:.0f} MB" for r in results]),
    ]
    if markdown:
        lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    else:
        w = max(len(n) for n, _ in rows) + 2
        lines = [" " * w + "  ".join(f"{c:>24}" for c in cols)]
        lines += [f"{name:<{w}}" + "  ".join(f"{v:>24}" for v in vals) for name, vals in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeats", type=int, default=5, help="Timed runs per query (12 queries).")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one, args.work, args.repeats)))
        return
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"ragqa-scale-{size}-") as work:
            print(f"size {size:,}…", file=sys.stderr, flush=True)
            t = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--one", str(size), "--work", work,
                                  "--repeats", str(args.repeats)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1), "utf-8")
    print(f"{os.cpu_count()} CPUs; ragqa retrievers (search + fetching the chunks) vs the raw engine calls "
          "(FAISS search; tantivy search + chunk ids)")
    print(report(results, args.markdown))


if __name__ == "__main__":
    main()
