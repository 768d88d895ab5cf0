"""Hostile files, made small on disk (for tests and bench/bench_isolation.py): zip bombs, images and
PDFs whose headers claim too much, deep nesting. One copy of each maker."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib


def zip_bomb(member: str = "word/document.xml", mb: int = 200) -> bytes:
    """A zip whose ``member`` inflates to ``mb`` MB of one repeated byte (a few hundred KB packed);
    streamed, so the maker never holds the inflated member."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mimetype", "application/zip")
        with z.open(member, "w") as part:
            block = b"0" * (1024 * 1024)
            for _ in range(mb):
                part.write(block)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels: only its header is read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim ``width`` x ``height``."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(out, "JPEG")
    data = bytearray(out.getvalue())
    at = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def blank_pdf(pages: int) -> bytes:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for _ in range(pages):
        pdf.new_page(200, 200)
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def nested_mime(depth: int) -> bytes:
    head = "From: a@example.com\nTo: b@example.com\nSubject: nested\nMIME-Version: 1.0\n"
    body = "text at the bottom\n"
    for i in range(depth):
        body = f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n{body}\n--b{i}--\n'
    return (head + body).encode()
