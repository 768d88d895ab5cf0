"""Files read where they cannot hurt (ragqa.caps, ragqa.isolation): caps checked from headers before
the heavy work, and real worker processes killed for their time, a crash, or their memory. The
hostile-file table through a real server is tests/integration/test_hostile_files.py."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from hostilefiles import blank_pdf, png_header, zip_bomb

from ragqa.caps import Caps, check_caps
from ragqa.errors import InputError
from ragqa.isolation import ReaderCrashed, ReaderPool, WorkerLimits


def small_bomb(member: str = "word/document.xml", mb: int = 5) -> bytes:
    return zip_bomb(member, mb)


@pytest.mark.parametrize(("name", "data", "caps", "limit"), [
    ("bomb.docx", small_bomb(), Caps(), "decompression bomb"),
    ("big.xlsx", small_bomb("xl/sharedStrings.xml", 3), Caps(max_unpacked_mb=1), "max_unpacked_mb"),
    ("huge.png", png_header(50_000, 50_000), Caps(), "max_image_pixels"),
    ("blank.pdf", blank_pdf(6), Caps(max_pages=5), "max_pages"),
    ("line.txt", b"x" * 5000, Caps(max_line_chars=1000), "max_line_chars"),
])
def test_a_file_over_a_cap_is_refused_from_its_header_naming_the_limit(name: str, data: bytes, caps: Caps,
                                                                       limit: str) -> None:
    with pytest.raises(InputError, match=limit) as err:
        check_caps(Path(name), data, caps)
    assert "\n" not in str(err.value)


def test_ordinary_files_pass_the_caps() -> None:
    check_caps(Path("ok.png"), png_header(2000, 1000), Caps())
    check_caps(Path("ok.pdf"), blank_pdf(3), Caps())
    check_caps(Path("ok.txt"), ("一行中文。\n" * 10_000).encode(), Caps())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", "<w:t>" + "正文 text " * 50_000 + "</w:t>")
    check_caps(Path("ok.docx"), out.getvalue(), Caps())


@pytest.fixture
def pool():
    made: list[ReaderPool] = []

    def make(**limits) -> ReaderPool:
        made.append(ReaderPool(1, WorkerLimits(**limits)))
        return made[-1]

    yield make
    for p in made:
        p.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read(pool: ReaderPool, path: Path, **kw) -> list:
    return pool.read(path, path.read_bytes(), ocr="auto", ocr_languages="auto", caps=Caps(), **kw)


def test_a_worker_reads_as_the_server_would_and_is_kept_for_the_next_file(pool, tmp_path: Path) -> None:
    from ragqa.loaders import load_file

    doc = tmp_path / "熊猫.md"
    doc.write_text("# 熊猫\n\n熊猫吃竹子。", "utf-8")
    readers = pool()
    docs = read(readers, doc)
    assert [(d.page_content, d.metadata) for d in docs] == [(d.page_content, d.metadata) for d in load_file(doc)]
    [worker] = readers._idle
    for _ in range(3):
        read(readers, doc)
    assert readers._idle == [worker]  # the same process: no start-up per file
    # the CPU limit is per file: a worker that has spent seconds on earlier files reads the next one
    spin = tmp_path / "many.md"
    spin.write_text("\n\n".join(f"## 第{i}节\n\n" + "熊猫吃竹子。" * 50 for i in range(3000)), "utf-8")
    while cpu_seconds(worker.proc.pid) < 3:
        assert read(readers, spin)
    assert read(readers, doc) and readers._idle == [worker]


def test_a_refused_file_fails_alone_and_the_worker_goes_on(pool, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.docx"
    bomb.write_bytes(small_bomb())
    good = tmp_path / "good.txt"
    good.write_text("fine text", "utf-8")
    readers = pool()
    with pytest.raises(InputError, match="decompression bomb"):
        read(readers, bomb)
    assert read(readers, good)[0].page_content == "fine text"


def group_gone(pgid: int) -> bool:
    """Whether no process of process group ``pgid`` is left (waits while they are being reaped)."""
    while True:  # a killed group empties at once; pytest's timeout bounds a group that never does
        found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
        if not found:
            return True
        time.sleep(0.1)


def scan(tmp_path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (2400, 3200), "white")
    draw = ImageDraw.Draw(img)
    for y in range(40, 3100, 40):
        draw.text((40, y), "The harbour master logged the ferry at dawn, with wool and slate. " * 3, fill="black")
    path = tmp_path / "scan.png"
    img.save(path)
    return path


@pytest.mark.skipif(subprocess.run(["which", "tesseract"], capture_output=True).returncode != 0,
                    reason="tesseract is not installed")
def test_a_file_past_its_time_is_killed_with_everything_it_started(pool, tmp_path: Path) -> None:
    readers = pool(timeout=1.0)
    good = tmp_path / "good.txt"
    good.write_text("after the kill", "utf-8")
    read(readers, good)
    [worker] = readers._idle
    pgid = worker.proc.pid  # the worker leads a process group of its own: Tesseract runs inside it
    with pytest.raises(ReaderCrashed, match=r"longer than 1 s \(parse_timeout\)"):
        read(readers, scan(tmp_path))
    assert group_gone(pgid)  # the worker and the OCR program it started, killed together
    assert read(readers, good)[0].page_content == "after the kill"  # a fresh worker


def test_a_worker_that_dies_fails_its_file_in_one_line(pool, tmp_path: Path) -> None:
    readers = pool(timeout=120)
    slow = scan(tmp_path) if subprocess.run(["which", "tesseract"], capture_output=True).returncode == 0 else None
    if slow is None:
        pytest.skip("tesseract is not installed")
    good = tmp_path / "good.txt"
    good.write_text("warm", "utf-8")
    read(readers, good)
    [worker] = readers._idle
    threading.Timer(0.5, lambda: os.kill(worker.proc.pid, 9)).start()
    with pytest.raises(ReaderCrashed, match="killed|crashed") as err:
        read(readers, slow)
    assert "\n" not in str(err.value)
    assert read(readers, good)[0].page_content == "warm"


def test_a_worker_over_its_memory_fails_the_file_not_the_server(pool, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"  # 160 MB of text: the bytes and their decoded copy alone pass 300 MB
    line = b"the harbour master logged the ferry at dawn with wool and slate\n"
    with open(big, "wb") as out:
        for _ in range(160):
            out.write(line * (1024 * 1024 // len(line)))
    readers = pool(memory_mb=300)
    t = time.monotonic()
    with pytest.raises(InputError, match="parse_memory_mb|killed|crashed"):
        read(readers, big)
    assert time.monotonic() - t < 600
    small = tmp_path / "small.txt"
    small.write_text("still here", "utf-8")
    assert read(readers, small)[0].page_content == "still here"
