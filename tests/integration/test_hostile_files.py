"""Hostile files uploaded to a real `ragqa serve` next to a good one: each fails alone in one line
naming the limit it passed, the good file is indexed, the server's memory stays flat, and no
program a reader started outlives its file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from hostilefiles import blank_pdf, jpeg_claiming, nested_mime, png_header, zip_bomb
from netfixtures import start_ragqa_serve, stop

GOOD = "The Orvane Lighthouse stands on Kestrel Point. It was built in 1871 by the engineer Marta Quell."


HOSTILE = {  # name -> (bytes, what the one-line reason must name)
    "bomb.docx": (lambda: zip_bomb("word/document.xml"), "decompression bomb"),
    "bomb.xlsx": (lambda: zip_bomb("xl/sharedStrings.xml"), "decompression bomb"),
    "bomb.pptx": (lambda: zip_bomb("ppt/slides/slide1.xml"), "decompression bomb"),
    "bomb.epub": (lambda: zip_bomb("OEBPS/chapter1.xhtml"), "decompression bomb"),
    "bomb.odt": (lambda: zip_bomb("content.xml"), "decompression bomb"),
    "huge.png": (lambda: png_header(50_000, 50_000), "max_image_pixels"),
    "huge.jpg": (lambda: jpeg_claiming(50_000, 50_000), "max_image_pixels"),
    "one-line.txt": (lambda: b"word " * 1_000_000, "max_line_chars"),
    "blank.pdf": (lambda: blank_pdf(3000), "max_pages"),
    "deep.json": (lambda: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep.eml": (lambda: nested_mime(2000), "nested too deeply"),
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``: pid -> its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = {}, list(children.get(pid, []))
    while stack:
        p = stack.pop()
        try:
            found[p] = (Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        stack.extend(children.get(p, []))
    return found


def wait_job(api: str, job_id: str) -> dict:
    while True:  # the job reports its end; pytest-timeout bounds a hang
        job = httpx.get(f"{api}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)


def test_hostile_files_fail_alone_naming_their_limit_and_the_server_is_untouched(tmp_path: Path) -> None:
    proc, api = start_ragqa_serve(tmp_path / "srv", "--no-page")
    try:
        warm = httpx.post(f"{api}/kbs/k/documents", files=[("file", ("warm.md", b"A first document."))], timeout=60)
        assert wait_job(api, warm.json()["id"])["status"] == "done"  # models loaded, a reader started
        before = rss_mb(proc.pid)
        files = [("file", (name, make())) for name, (make, _) in HOSTILE.items()]
        files.append(("file", ("lighthouse.md", GOOD.encode())))
        reply = httpx.post(f"{api}/kbs/k/documents", files=files, timeout=300)
        assert reply.status_code == 202, reply.text
        job = wait_job(api, reply.json()["id"])
        outcome = {f["name"]: f for f in job["files"]}
        assert outcome["lighthouse.md"]["status"] == "added"
        for name, (_, limit) in HOSTILE.items():
            f = outcome[name]
            assert f["status"] == "failed" and limit in f["error"] and "\n" not in f["error"], (name, f)
        after = rss_mb(proc.pid)
        assert after - before < 150, f"the server grew from {before:.0f} MB to {after:.0f} MB"
        left = {pid: cmd for pid, cmd in descendants(proc.pid).items() if "ragqa.isolation" not in cmd}
        assert left == {}, left  # only the kept reader workers remain; nothing they started
        listed = {d["source"]: d["status"] for d in httpx.get(f"{api}/kbs/k/documents", timeout=30).json()["data"]}
        assert listed["lighthouse.md"] == "ok" and all(listed[name] == "failed" for name in HOSTILE)
        kept = sorted(p.name for p in (tmp_path / "srv" / "data" / "uploads" / "k").iterdir())
        assert kept == ["lighthouse.md", "warm.md"]  # no copy of a failed file
        answer = httpx.post(f"{api}/chat/completions", timeout=300, json={
            "model": "k", "max_tokens": 20, "messages": [{"role": "user", "content": "Who built the lighthouse?"}]})
        assert answer.status_code == 200 and answer.json()["sources"][0]["source"] == "lighthouse.md"
    finally:
        stop(proc)
    assert "Traceback" not in Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    assert os.environ.get("RAGQA_PARSE_ISOLATION", "process") == "process"
