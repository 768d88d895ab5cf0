"""A watched folder: from a file's last write to its being answerable, and the watcher's CPU while idle.

Runs ``ragqa index DIR --kb bench --watch`` (the starter embedding model, default settings) in a
temporary data folder, then:

1. **Latency.** Writes a 1-page and a 100-page Markdown file (``--page-chars`` characters a page,
   default 2000: a printed page of English), ``--runs`` times each under new names, each with a
   word found nowhere else on its last page. Measured: wall time from the moment the file is
   closed to the moment a BM25 search of the KB, from this process (as another reader would),
   returns that page's chunk. It covers the settle wait (1 s without change), the pick-up tick,
   reading, splitting, embedding every chunk, and the commit. Median and max are printed, and per
   run the share of the CPUs other processes took meanwhile (embedding wants every core: a busy
   neighbour slows it; treat a run with a high share as noise).
   For reference, the same 100-page file is then indexed by a plain ``ragqa index FILE --kb ref``
   (its own report's seconds: reading, embedding, committing, without the watch).
2. **Idle CPU.** Once the folder is quiet, the watcher process's own CPU seconds (user + system,
   from /proc) over ``--idle-s`` seconds (default 30), and as a share of one core.

    .venv/bin/python bench/bench_watch.py                # about 2-3 minutes on 2 cores
    .venv/bin/python bench/bench_watch.py --runs 5 --idle-s 60
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = ("The keeper of the lighthouse on Kestrel Point wrote in the log that the ferry from Dunmore "
            "crossed in forty minutes, and that the lamp could be seen from thirty-one kilometres away. ")


def page(n: int, chars: int) -> str:
    text = f"## Page {n}\n\n"
    while len(text) < chars:
        text += SENTENCE + ("\n\n" if len(text) % 700 < len(SENTENCE) else "")
    return text[:chars]


def document(pages: int, chars: int, word: str) -> str:
    body = [page(i + 1, chars) for i in range(pages)]
    body[-1] += f"\n\nThe last page names the {word} festival.\n"
    return "\n\n".join(body)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def ours(pid: int) -> float:
    """CPU seconds of the watcher and of this process (which polls the KB)."""
    mine = os.times()
    return cpu_seconds(pid) + mine.user + mine.system


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)  # idle, iowait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="files written per size")
    parser.add_argument("--page-chars", type=int, default=2000, help="characters per page")
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle CPU measured")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one file")
    args = parser.parse_args()

    from ragqa.config import load_settings
    from ragqa.store import open_kb

    with tempfile.TemporaryDirectory(prefix="ragqa-watch-") as tmp:
        docs, cache = Path(tmp) / "docs", Path(tmp) / "cache"
        docs.mkdir()
        (docs / "seed.md").write_text(page(1, args.page_chars), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
        env.update(RAGQA_CACHE_DIR=str(cache), RAGQA_DATA_DIR=str(cache / "data"))
        log = Path(tmp) / "watch.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "ragqa", "index", str(docs), "--kb", "bench", "--watch"],
                                    stdout=subprocess.DEVNULL, stderr=fh, env=env)
        try:
            end = time.monotonic() + args.timeout
            while "watching 1 folder" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > end:
                    raise SystemExit(f"the watcher did not start:\n{log.read_text()}")
                time.sleep(0.2)
            kb = open_kb(load_settings(None, data_dir=cache / "data", cache_dir=cache), "bench")

            def answerable(path: Path, word: str) -> bool:
                hits = kb.bm25_search(word, 1)
                return bool(hits) and kb.get_chunks([hits[0][0]])[0].metadata.get("source") == str(path)

            results: dict[int, list[float]] = {}
            results_other: dict[int, list[float]] = {}
            for pages in (1, 100):
                for run in range(args.runs):
                    word = f"zorblat{pages}x{run}q"
                    path = docs / f"doc-{pages}p-{run}.md"
                    with open(path, "w", encoding="utf-8") as fh:
                        fh.write(document(pages, args.page_chars, word))
                    written, ticks, mine = time.perf_counter(), machine_ticks(), ours(proc.pid)
                    while not answerable(path, word):
                        if proc.poll() is not None or time.perf_counter() - written > args.timeout:
                            raise SystemExit(f"{path.name} was not answerable in time:\n{log.read_text()[-3000:]}")
                        time.sleep(0.05)
                    results.setdefault(pages, []).append(time.perf_counter() - written)
                    busy, total = (b - a for a, b in zip(ticks, machine_ticks()))
                    others = max(0.0, busy - (ours(proc.pid) - mine) * os.sysconf("SC_CLK_TCK")) / max(total, 1)
                    results_other.setdefault(pages, []).append(others)
                    print(f"  {pages:>3} page(s), run {run + 1}: {results[pages][-1]:.2f} s "
                          f"(other processes {100 * others:.0f}% of the CPUs)", file=sys.stderr)
            chunks = {r.path: r.chunks for r in kb.files()}
            kb.close()

            time.sleep(3)  # quiet: nothing pending
            before, t = cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(args.idle_s)
            idle, wall = cpu_seconds(proc.pid) - before, time.perf_counter() - t
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        plain = subprocess.run([sys.executable, "-m", "ragqa", "index", str(docs / "doc-100p-0.md"), "--kb", "ref"],
                               env=env, capture_output=True, text=True, check=True).stderr
        reference = float(re.search(r"chunks in ([0-9.]+)s", plain).group(1))

    print(f"watch: last write -> answerable (BM25 finds the last page), {args.runs} runs each, "
          f"{args.page_chars} chars/page, {os.cpu_count()} CPUs")
    for pages, times in results.items():
        n = chunks.get(str(docs / f"doc-{pages}p-0.md"), 0)
        print(f"  {pages:>3} page(s) ({n} chunks): median {statistics.median(times):.2f} s, max {max(times):.2f} s"
              f" (other processes took {100 * statistics.median(results_other[pages]):.0f}% of the CPUs)")
    print(f"  reference: ragqa index of the 100-page file alone: {reference:.2f} s")
    print(f"idle: {idle:.3f} CPU s over {wall:.1f} s ({100 * idle / wall:.2f}% of one core)")
    print(f"SIGTERM: exit code {rc}")


if __name__ == "__main__":
    main()
