"""Caps on what one file may make a reader do, checked before the heavy work.

A hostile file is small on disk and huge once read: an Office or EPUB file is a zip whose members
can inflate a thousandfold (a zip bomb), an image can declare 50,000 × 50,000 pixels, a PDF can
hold 20,000 blank pages for OCR, a text file can be one 50 MB line. Each is refused from what the
file says about itself (the zip's directory, the image's header, the PDF's page count, the line
lengths) before anything is inflated, decoded or rendered, in one line that names the limit.
The worker process that reads it (``ragqa.isolation``) is the second wall: memory, CPU and time.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ragqa.errors import InputError

ZIP_SUFFIXES = {".docx", ".xlsx", ".pptx", ".epub", ".odt"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
TEXT_LIKE = {".txt", ".text", ".md", ".markdown", ".csv", ".json", ".jsonl", ".html", ".htm", ".eml", ".rtf"}
MAX_RATIO = 200  # a member that inflates more than this is a bomb, not a document (XML packs 5-30x)
RATIO_FLOOR = 1024 * 1024  # ... once it inflates past 1 MB: tiny members of any ratio are harmless


@dataclass(frozen=True)
class Caps:
    max_unpacked_mb: float = 512.0
    max_pages: int = 2000
    max_image_pixels: int = 100_000_000
    max_line_chars: int = 1_000_000

    @classmethod
    def of(cls, settings: object) -> "Caps":
        """The caps a Settings object sets (its fields of the same names)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__ if hasattr(settings, name)})


def check_caps(path: Path, data: bytes, caps: Caps) -> None:
    """Refuse ``data`` (the bytes of ``path``) when reading it would pass a cap; cheap: headers only."""
    suffix = path.suffix.lower()
    if suffix in ZIP_SUFFIXES:
        _check_zip(path, data, caps)
    elif suffix in IMAGE_SUFFIXES:
        _check_image(path, data, caps)
    elif suffix == ".pdf":
        _check_pdf(path, data, caps)
    if suffix in TEXT_LIKE:
        _check_lines(path, data, caps)


def _check_zip(path: Path, data: bytes, caps: Caps) -> None:
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # not a zip at all: the reader says what is wrong with it
    total = sum(m.file_size for m in members)
    limit = caps.max_unpacked_mb * 1024 * 1024
    if total > limit:
        raise InputError(f"{path}: unpacks to {total / 2**20:,.0f} MB, over the {caps.max_unpacked_mb:g} MB "
                         "limit (max_unpacked_mb)")
    for m in members:
        if m.file_size > RATIO_FLOOR and m.file_size > MAX_RATIO * max(m.compress_size, 1):
            raise InputError(f"{path}: {m.filename} inflates {m.file_size / max(m.compress_size, 1):,.0f} times "
                             f"(over {MAX_RATIO}:1, a decompression bomb)")


def _check_image(path: Path, data: bytes, caps: Caps) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            pixels = img.size[0] * img.size[1]
    except Image.DecompressionBombError as exc:  # Pillow's own guard, past twice its limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else caps.max_image_pixels + 1
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the reader says so
        return
    if pixels > caps.max_image_pixels:
        raise InputError(f"{path}: {pixels:,} pixels, over the {caps.max_image_pixels:,} pixel limit "
                         "(max_image_pixels)")


def _check_pdf(path: Path, data: bytes, caps: Caps) -> None:
    try:
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(data)
    except Exception:  # noqa: BLE001 - damaged or encrypted: the reader says which
        return
    try:
        pages = len(pdf)
    finally:
        pdf.close()
    if pages > caps.max_pages:
        raise InputError(f"{path}: {pages:,} pages, over the {caps.max_pages:,} page limit (max_pages)")


def _check_lines(path: Path, data: bytes, caps: Caps) -> None:
    """The longest line, in bytes (a character is at least one): over the cap in characters is
    checked on the decoded line only when the bytes could be."""
    if len(data) <= caps.max_line_chars:
        return
    longest = max(data.split(b"\n"), key=len)
    if len(longest) > caps.max_line_chars and len(longest.decode("utf-8", "replace")) > caps.max_line_chars:
        raise InputError(f"{path}: a line of {len(longest):,} bytes, over the {caps.max_line_chars:,} character "
                         "line limit (max_line_chars)")
