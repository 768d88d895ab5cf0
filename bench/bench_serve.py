"""ragqa serve under load, beside the raw model server it sits in front of, in one run.

1. **ragqa vs raw llama-server.** llama.cpp's `llama-server --parallel 4` (continuous batching)
   serves the starter GGUF. Closed-loop clients (N = 1, 4, 16, 32 by default), each asking
   `--questions` questions one after another, stream answers from ragqa's
   `/v1/chat/completions` (ragqa serve --backend openai in front of that server: retrieval, the
   prompt, the gate, SSE); then the same clients send the *same prompts* (the ones ragqa built,
   taken from `ask --dry-run` through the pipeline) straight to llama-server's `/v1/completions`.
   Per N and side: questions per minute, p50/p95 latency and time to first token, errors, and
   ragqa's RSS (VmRSS after each N, VmHWM at the end). Ratios: ragqa/raw throughput, ragqa's p95
   TTFT against raw p95 TTFT plus ragqa's median retrieval time.
2. **The in-process llama.cpp backend** (`ragqa serve` with the default backend: one generation
   at a time) at N = 4 and 32: throughput, errors, and whether answers come back first come,
   first served (the share of request pairs that finish in the order they were sent); then
   N = 32 against `--max-queue 8`, where the requests past 1 + 8 are turned away with 429.

    make llama-server && .venv/bin/python bench/bench_serve.py [--clients 1,4,16,32] [--questions 4]
        [--at-least 24] [--rounds 3] [--pin] [--markdown]

Everything runs on this machine (127.0.0.1); the two servers share its cores, as they would on a
small box, or with ``--pin`` llama-server keeps the first core to itself (one thread) and ragqa and
the clients run on the rest. ``--rounds`` repeats each N (ragqa and raw back to back each round)
and pools them. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from netfixtures import free_port, start_ragqa_serve, stop, wait_http  # noqa: E402

DOC = ROOT / "corpora" / "en" / "heron_festival.md"
QUESTIONS = [
    "When is the Zorblat festival held?",
    "What does the Zorblat festival celebrate?",
    "How tall was the largest heron ever built for the festival?",
    "Who built the largest heron?",
    "How often does the ferry cross the Ember River?",
    "Where is the nearest railway station?",
    "What is the town known for eating?",
    "How many members does the Quillby Guild of Cooks have?",
    "When was Quillby founded?",
    "How many people live in Quillby?",
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stream_one(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, float, str | None]:
    """-> (time to first token, latency, error or None) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    try:
        with client.stream("POST", url, json=body, timeout=600) as reply:
            if reply.status_code != 200:
                reply.read()
                return 0.0, time.perf_counter() - t0, f"HTTP {reply.status_code}"
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return 0.0, time.perf_counter() - t0, event["error"].get("message", "error")
                choice = (event.get("choices") or [{}])[0]
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                if text and first is None:
                    first = time.perf_counter() - t0
    except httpx.HTTPError as exc:
        return 0.0, time.perf_counter() - t0, type(exc).__name__
    return (first if first is not None else time.perf_counter() - t0), time.perf_counter() - t0, None


def closed_loop(n: int, per_client: int, make_body: Any, url: str) -> dict[str, Any]:
    """N clients, each sending ``per_client`` requests back to back; -> the figures."""
    ttft: list[float] = []
    latency: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        # a new connection per request, on both sides alike: llama-server's HTTP library closes kept-alive
        # connections after a few requests, which a reusing client sees as spurious RemoteProtocolErrors
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for i in range(per_client):
                first, total, error = stream_one(http, url, make_body(c * per_client + i))
                with lock:
                    if error:
                        errors.append(error)
                    else:
                        ttft.append(first)
                        latency.append(total)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": n, "questions": len(latency), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "per_minute": 60 * len(latency) / wall, "p50_s": pct(latency, 0.5), "p95_s": pct(latency, 0.95),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95), "wall_s": wall,
            "ttft": ttft, "latency": latency, "error_list": errors}


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one N and side as one: questions over total wall time, percentiles over all answers."""
    ttft = [x for r in runs for x in r["ttft"]]
    latency = [x for r in runs for x in r["latency"]]
    errors = [x for r in runs for x in r["error_list"]]
    wall = sum(r["wall_s"] for r in runs)
    return {"clients": runs[0]["clients"], "questions": len(latency), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "per_minute": 60 * len(latency) / wall,
            "p50_s": pct(latency, 0.5), "p95_s": pct(latency, 0.95), "ttft_p50_s": pct(ttft, 0.5),
            "ttft_p95_s": pct(ttft, 0.95), "wall_s": wall,
            "round_ratios": []}


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(url: str) -> None:
    job = httpx.post(f"{url}/kbs/bench/documents", files=[("file", (DOC.name, DOC.read_bytes()))], timeout=120).json()
    while (status := httpx.get(f"{url}/jobs/{job['id']}", timeout=30).json())["status"] not in ("done", "failed"):
        time.sleep(0.2)
    if status["status"] != "done":
        raise SystemExit(f"ingest failed: {status}")


def prompts_of(folder: Path, llama_url: str, max_tokens: int) -> tuple[list[str], float]:
    """The exact prompts ragqa sends for QUESTIONS (the pipeline's dry run against the same server
    and KB), and the median retrieval time ragqa spends before the model."""
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline

    settings = load_settings(None, backend="openai", base_url=llama_url, chat_format="chatml", n_ctx=2048,
                             max_new_tokens=max_tokens, data_dir=folder / "data", cache_dir=folder / "cache")
    pipeline = Pipeline(settings)
    prompts, retrieve = [], []
    for q in QUESTIONS:
        answer = pipeline.ask([], q, kb="bench", dry_run=True)
        prompts.append(answer.prompts[0])
        retrieve.append(answer.timings["retrieve_s"])
    return prompts, statistics.median(retrieve)


def fifo_burst(url: str, n: int) -> dict[str, Any]:
    """N requests sent 30 ms apart, all open together: errors by kind and how FIFO the finishes were."""
    done: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client() as http:
            _, _, error = stream_one(http, f"{url}/chat/completions", {
                "model": "bench", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "stream": True, "max_tokens": 16, "temperature": 0})
        with lock:
            (errors.append(error) if error else done.append(i))

    threads = []
    t0 = time.perf_counter()
    for i in range(n):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(0.03)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    pairs = [(a, b) for x, a in enumerate(done) for b in done[x + 1:]]
    in_order = sum(a < b for a, b in pairs) / len(pairs) if pairs else 1.0
    return {"clients": n, "answered": len(done), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "fifo": in_order, "per_minute": 60 * len(done) / wall}


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]], markdown: bool) -> str:
    head = [c[1] for c in cols]
    body = [[format(r[c[0]], c[2]) if isinstance(r.get(c[0]), (int, float)) else str(r.get(c[0], ""))
             for c in cols] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--questions", type=int, default=4, help="questions per client per N and round")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds per N, ragqa and raw back to back in each (which goes first alternates): "
                         "the figures pool all rounds, so a noisy minute on a shared machine weighs less")
    ap.add_argument("--at-least", type=int, default=24,
                    help="questions per N, round and side at the least: a client asks more than --questions when "
                         "N is small, so N = 1 is not measured on a couple of seconds")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    ap.add_argument("--llama-server", default=os.environ.get("RAGQA_LLAMA_SERVER"))
    ap.add_argument("--model", default="smollm2", help="smollm2 (the starter), qwen (Qwen2.5-Coder-0.5B Q4_K_M from "
                    "bench/requirements.txt) or a .gguf path")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--serve-args", default="", help="more `ragqa serve` flags, e.g. '--max-concurrency 32'")
    ap.add_argument("--pin", action="store_true",
                    help="llama-server on the first core (one thread), ragqa and the clients on the others: the "
                         "engine keeps its own core, as on a team server where ragqa runs beside it")
    ap.add_argument("--llama-args", default="", help="more llama-server flags, e.g. '--threads-http 40'")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    from ragqa.models import resolve_llm_path

    exe = args.llama_server or next(iter(sorted(Path.home().glob(".cache/ragqa/bin/llama-server-*"))), None)
    if not exe or not Path(exe).is_file():
        raise SystemExit("no llama-server: run `make llama-server` (or pass --llama-server PATH)")
    counts = [int(x) for x in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-bench-serve-"))
    if args.model == "qwen":
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_summarize import qwen_gguf

        model = qwen_gguf(Path.home() / ".cache" / "ragqa" / "bench")
    else:
        model = resolve_llm_path(args.model)
    port = free_port()
    llama_log = tmp / "llama-server.log"
    cores = sorted(os.sched_getaffinity(0))
    engine_cores, own_cores = (cores[:1], cores[1:]) if args.pin and len(cores) > 1 else (cores, cores)
    threads = str(len(engine_cores))
    with open(llama_log, "w") as out:
        llama = subprocess.Popen([str(exe), "-m", str(model), "--host", "127.0.0.1",
                                  "--port", str(port), "--parallel", str(args.parallel), "-c", str(2048 * args.parallel),
                                  "--threads", threads, "--no-webui", *args.llama_args.split()], stdout=out, stderr=subprocess.STDOUT,
                                 preexec_fn=lambda: os.sched_setaffinity(0, engine_cores))
    os.sched_setaffinity(0, own_cores)  # this process (the clients) and the ragqa serve it starts
    llama_url = f"http://127.0.0.1:{port}/v1"
    results: dict[str, Any] = {"ragqa": [], "raw": []}
    try:
        wait_http(f"http://127.0.0.1:{port}/health", llama, llama_log)
        # ragqa's defaults for a server backend: max_concurrency 8, max_queue 32
        proc, url = start_ragqa_serve(tmp / "srv", "--no-page", "--backend", "openai", "--base-url", llama_url,
                                      "--chat-format", "chatml", "--n-ctx", "2048", *args.serve_args.split())
        try:
            upload(url)
            prompts, retrieve_s = prompts_of(tmp / "srv", llama_url, args.max_tokens)
            print(f"median retrieval before the model: {retrieve_s * 1000:.0f} ms", file=sys.stderr)

            def ragqa_body(i: int) -> dict[str, Any]:
                return {"model": "bench", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                        "stream": True, "max_tokens": args.max_tokens, "temperature": 0}

            from ragqa.config import Settings

            d = Settings.model_fields  # ragqa's own sampling defaults, sent to the raw server too: same requests

            def raw_body(i: int) -> dict[str, Any]:
                return {"prompt": prompts[i % len(prompts)], "stream": True, "max_tokens": args.max_tokens,
                        "temperature": 0, "stop": ["<|im_end|>"], "top_p": d["top_p"].default,
                        "top_k": d["top_k"].default, "repeat_penalty": d["repeat_penalty"].default,
                        "seed": d["seed"].default}

            closed_loop(args.parallel, 2, ragqa_body, f"{url}/chat/completions")  # every slot warm, both paths
            closed_loop(args.parallel, 2, raw_body, f"{llama_url}/completions")
            k = 0
            for n in counts:
                runs: dict[str, list[dict[str, Any]]] = {"ragqa": [], "raw": []}
                sides = [("ragqa", ragqa_body, f"{url}/chat/completions"), ("raw", raw_body, f"{llama_url}/completions")]
                for _ in range(args.rounds):
                    for side, body, target in (sides if k % 2 == 0 else sides[::-1]):  # which goes first alternates
                        runs[side].append(closed_loop(n, max(args.questions, -(-args.at_least // n)), body, target))
                    k += 1
                    print(f"N={n}: ragqa {runs['ragqa'][-1]['per_minute']:.0f}/min, raw {runs['raw'][-1]['per_minute']:.0f}"
                          f"/min (errors {runs['ragqa'][-1]['errors']}/{runs['raw'][-1]['errors']})", file=sys.stderr)
                row = pooled(runs["ragqa"])
                row["rss_mb"] = rss_mb(proc.pid)
                results["ragqa"].append(row)
                results["raw"].append(pooled(runs["raw"]))
                row["round_ratios"] = [a["per_minute"] / b["per_minute"] for a, b in zip(runs["ragqa"], runs["raw"])]
            results["ragqa_peak_rss_mb"] = rss_mb(proc.pid, "VmHWM")
            results["retrieve_s"] = retrieve_s
        finally:
            stop(proc)
    finally:
        stop(llama)

    rows = []
    for r, w in zip(results["ragqa"], results["raw"]):
        rows.append({"N": r["clients"], "q/min ragqa": r["per_minute"], "q/min raw": w["per_minute"],
                     "ratio": r["per_minute"] / w["per_minute"], "p50 s ragqa": r["p50_s"], "p50 s raw": w["p50_s"],
                     "p95 s ragqa": r["p95_s"], "p95 s raw": w["p95_s"], "TTFT p95 ragqa": r["ttft_p95_s"],
                     "TTFT p95 raw": w["ttft_p95_s"],
                     "TTFT/(raw+retr)": r["ttft_p95_s"] / (w["ttft_p95_s"] + results["retrieve_s"]),
                     "errors": f"{r['errors']}/{w['errors']}", "RSS MB": r["rss_mb"],
                     "rounds": " ".join(f"{x:.2f}" for x in r["round_ratios"])})
    cols = [("N", "N", "d"), ("q/min ragqa", "q/min ragqa", ".0f"), ("q/min raw", "q/min raw", ".0f"),
            ("ratio", "ragqa/raw", ".2f"), ("p50 s ragqa", "p50 s", ".2f"), ("p50 s raw", "p50 s raw", ".2f"),
            ("p95 s ragqa", "p95 s", ".2f"), ("p95 s raw", "p95 s raw", ".2f"),
            ("TTFT p95 ragqa", "TTFT p95", ".2f"), ("TTFT p95 raw", "TTFT p95 raw", ".2f"),
            ("TTFT/(raw+retr)", "TTFT / (raw + retrieval)", ".2f"), ("errors", "errors ragqa/raw", "s"),
            ("RSS MB", "ragqa RSS MB", ".0f"), ("rounds", "ratio per round", "s")]
    placement = (f"llama-server pinned to core {engine_cores[0]} (1 thread), ragqa + clients on {own_cores}"
                 if args.pin and len(cores) > 1 else f"all on {len(cores)} shared cores, llama-server {threads} threads")
    print(f"\nragqa serve -> llama-server --parallel {args.parallel} ({Path(model).name}, {args.max_tokens} new tokens, "
          f"{placement}, "
          f"{args.questions} questions per client (at least {args.at_least} per N) x {args.rounds} rounds; median retrieval {results['retrieve_s'] * 1000:.0f} ms; "
          f"ragqa peak RSS {results['ragqa_peak_rss_mb']:.0f} MB)")
    print(table(rows, cols, args.markdown))

    if args.skip_inprocess:
        return
    burst_rows = []
    for n, queue in ((4, 32), (32, 32), (32, 8)):
        proc, url = start_ragqa_serve(tmp / f"inproc-{n}-{queue}", "--no-page", "--max-queue", str(queue))
        try:
            upload(url)
            fifo_burst(url, 1)  # load the model
            row = fifo_burst(url, n)
            row["max_queue"] = queue
            row["kinds"] = ", ".join(row["error_kinds"]) or "-"
            burst_rows.append(row)
        finally:
            stop(proc)
    print("\nin-process llama.cpp backend (max_concurrency 1): a burst of N questions sent 30 ms apart")
    print(table(burst_rows, [("clients", "N", "d"), ("max_queue", "max_queue", "d"), ("answered", "answered", "d"),
                             ("errors", "turned away", "d"), ("kinds", "as", "s"), ("fifo", "finished in order", ".2f"),
                             ("per_minute", "q/min", ".0f")], args.markdown))


if __name__ == "__main__":
    main()
