"""What reading files in worker processes costs, and what it protects: side by side in one run.

1. `ragqa index DIR` on the same corpus with parse_isolation=process and =off, alternating rounds,
   a fresh data folder each time: seconds and files/s, and the ratio process/off.
2. API ingest: `ragqa serve --no-page` under each mode, the corpus uploaded in one request, timed
   from the upload to the job's end.
3. The server's RSS while a set of hostile files (zip bombs, image and page bombs, a one-line
   text, deep JSON) is uploaded next to a good file: before, peak (sampled every 50 ms) and after.

The corpus: the CMRC 2018 trial contexts (../shared/eval), one small Markdown file each (the case
where per-file start-up would show), plus corpora/.

    .venv/bin/python bench/bench_isolation.py [--files 200] [--rounds 3] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from hostilefiles import png_header, zip_bomb  # noqa: E402

CMRC = ROOT.parent / "shared" / "eval" / "zh_mrc" / "cmrc2018_trial.squad.json"


def corpus(folder: Path, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    contexts = []
    for article in json.loads(CMRC.read_text("utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            contexts.append(paragraph["context"])
    out = []
    for i, text in enumerate(contexts[:files]):
        path = folder / f"cmrc-{i:04}.md"
        path.write_text(text, "utf-8")
        out.append(path)
    for path in (ROOT / "corpora").rglob("*"):
        if path.is_file():
            target = folder / path.name
            shutil.copy(path, target)
            out.append(target)
    return out


def env_for(mode: str, home: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
            "RAGQA_PARSE_ISOLATION": mode, "RAGQA_DATA_DIR": str(home / "data"), "RAGQA_CACHE_DIR": str(home / "cache")}


def time_index(docs: Path, mode: str) -> float:
    home = Path(tempfile.mkdtemp(prefix=f"ragqa-iso-{mode}-"))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragqa", "index", str(docs), "--kb", "bench"], env=env_for(mode, home),
                       check=True, capture_output=True)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, mode: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"ragqa-iso-serve-{mode}-"))
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/v1"
        self.proc = subprocess.Popen([sys.executable, "-m", "ragqa", "serve", "--no-page", "--port", str(port)],
                                     env=env_for(mode, self.home), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        while True:
            try:
                httpx.get(self.api + "/models", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    sys.exit("the server exited")
                time.sleep(0.1)

    def upload(self, files: list[tuple[str, bytes]], kb: str = "bench") -> str:
        reply = httpx.post(f"{self.api}/kbs/{kb}/documents", files=[("file", f) for f in files], timeout=600)
        reply.raise_for_status()
        return reply.json()["id"]

    def wait(self, job_id: str, on_tick=None) -> dict:
        while True:
            job = httpx.get(f"{self.api}/jobs/{job_id}", timeout=30).json()
            if job["status"] in ("done", "failed"):
                return job
            if on_tick:
                on_tick()
            time.sleep(0.05)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.home, ignore_errors=True)


def time_api(paths: list[Path], mode: str) -> float:
    server = Server(mode)
    try:
        server.wait(server.upload([("warm.md", "先加载模型。".encode())], kb="warm"))  # models loaded first
        files = [(p.name, p.read_bytes()) for p in paths]
        t = time.perf_counter()
        ids = [server.upload(files[i:i + 100]) for i in range(0, len(files), 100)]  # 100 files a request at most
        jobs = [server.wait(i) for i in ids]
        elapsed = time.perf_counter() - t
        assert all(job["status"] == "done" for job in jobs), jobs
        return elapsed
    finally:
        server.close()


def hostile_rss() -> dict[str, float]:
    server = Server("process")
    try:
        server.wait(server.upload([("warm.md", b"A first document, to load the models.")]))
        before = server.rss_mb()
        files = [("bomb.docx", zip_bomb("word/document.xml", 400)), ("bomb.xlsx", zip_bomb("xl/sharedStrings.xml", 400)),
                 ("bomb.epub", zip_bomb("OEBPS/c1.xhtml", 400)), ("huge.png", png_header(50_000, 50_000)),
                 ("one-line.txt", b"word " * 2_000_000), ("deep.json", b"[" * 100_000 + b"]" * 100_000),
                 ("good.md", b"The lighthouse was built in 1871 by Marta Quell.")]
        peak = [before]
        job = server.wait(server.upload(files), on_tick=lambda: peak.append(server.rss_mb()))
        failed = sum(f["status"] == "failed" for f in job["files"])
        return {"before": before, "peak": max(peak), "after": server.rss_mb(), "failed": failed,
                "files": len(files)}
    finally:
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200, help="CMRC contexts, one file each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragqa-iso-corpus-"))
    try:
        paths = corpus(work / "docs", args.files)
        rows = []
        for label, fn in (("ragqa index", lambda m: time_index(work / "docs", m)), ("API ingest", lambda m: time_api(paths, m))):
            runs: dict[str, list[float]] = {"process": [], "off": []}
            for _ in range(args.rounds):  # alternating, so drift hits both alike
                for mode in ("process", "off"):
                    runs[mode].append(fn(mode))
            proc, off = statistics.median(runs["process"]), statistics.median(runs["off"])
            rows.append((label, len(paths), proc, off, off / proc))
            print(f"{label}: {len(paths)} files; process {proc:.2f} s ({len(paths) / proc:.1f} files/s), "
                  f"off {off:.2f} s ({len(paths) / off:.1f} files/s); throughput process/off {off / proc:.3f} "
                  f"(rounds: process {[round(x, 2) for x in runs['process']]}, off {[round(x, 2) for x in runs['off']]})",
                  flush=True)
        rss = hostile_rss()
        print(f"hostile upload: {rss['failed']}/{rss['files'] - 1} hostile files failed alone; server RSS "
              f"{rss['before']:.0f} MB before, {rss['peak']:.0f} MB peak, {rss['after']:.0f} MB after", flush=True)
        if args.markdown:
            print("\n| run | files | workers (s) | in-process (s) | throughput workers/in-process |\n|---|---|---|---|---|")
            for label, n, proc, off, ratio in rows:
                print(f"| {label} | {n} | {proc:.2f} | {off:.2f} | {ratio:.3f} |")
            print(f"\n| hostile upload | RSS before | peak | after |\n|---|---|---|---|\n| {rss['failed']} hostile "
                  f"files + 1 good | {rss['before']:.0f} MB | {rss['peak']:.0f} MB | {rss['after']:.0f} MB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
