"""The web page's start-up and answer latency, measured from outside like a user's browser would.

Starts `python app.py` on a free port (its own cache and data folders) and times: the page
answering HTTP 200, the upload of the file into the "default" knowledge base (loads the embedding
model, indexes the file), the same upload again (unchanged), the first question (loads the LLM),
the same question again (all loaded), and two clients asking at once (queued one after the other)
against the same two asked in turn. For comparison it times `ragqa ask --kb default` on the same
KB and question (a fresh process each time).

    .venv/bin/python bench/bench_web.py [--doc corpora/en/heron_festival.md] [--question "..."]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", default=str(ROOT / "corpora/en/heron_festival.md"))
    ap.add_argument("--question", default="When is the Zorblat festival held, and what does it celebrate?")
    args = ap.parse_args()
    from gradio_client import Client, handle_file

    cache = tempfile.mkdtemp(prefix="ragqa-bench-web-")
    env = {**os.environ, "RAGQA_CACHE_DIR": os.path.join(cache, "cache"), "RAGQA_DATA_DIR": os.path.join(cache, "data"),
           "RAGQA_TEMPERATURE": "0", "GRADIO_ANALYTICS_ENABLED": "False"}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("the server exited")
                time.sleep(0.05)
        page_up = time.perf_counter() - t0

        def upload(client: Client) -> float:
            t = time.perf_counter()
            client.predict("default", [handle_file(args.doc)], api_name="/index")
            return time.perf_counter() - t

        def ask(client: Client) -> float:
            t = time.perf_counter()
            client.predict("default", args.question, [], "stuff", 4, "hybrid", api_name="/ask")
            return time.perf_counter() - t

        indexed = upload(Client(url, verbose=False))
        unchanged = upload(Client(url, verbose=False))
        first = ask(Client(url, verbose=False))
        again = ask(Client(url, verbose=False))
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        t = time.perf_counter()
        jobs = [c.submit("default", args.question, [], "stuff", 4, "hybrid", api_name="/ask") for c in (a, b)]
        for j in jobs:
            j.result(timeout=600)
        together = time.perf_counter() - t
        in_turn = ask(a) + ask(b)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    cli = []
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragqa", "ask", "--kb", "default", args.question, "--json"], env=env,
                       check=True, capture_output=True)
        cli.append(time.perf_counter() - t)

    print("| measure | seconds |")
    print("|---|---|")
    print(f"| `python app.py` until the page answers | {page_up:.2f} |")
    print(f"| upload into the KB (loads the embedding model, indexes the file) | {indexed:.2f} |")
    print(f"| the same upload again (unchanged) | {unchanged:.2f} |")
    print(f"| first question (loads the LLM) | {first:.2f} |")
    print(f"| same question again (models loaded) | {again:.2f} |")
    print(f"| two clients at once, until both are answered | {together:.2f} |")
    print(f"| the same two asked one after the other | {in_turn:.2f} |")
    print(f"| `ragqa ask --kb default` CLI (fresh process) | {cli[1]:.2f} |")
    print(f"\nweb (warm) vs CLI: {cli[1] / again:.1f}x faster per question")


if __name__ == "__main__":
    main()
