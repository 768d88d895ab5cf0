"""Documents of every supported type, generated for the tests and bench/bench_ocr.py.

Office files are written by the libraries users' tools use (python-pptx, openpyxl, pandoc via
pypandoc-binary); scans are text drawn by Pillow in a CJK font, saved as images or as an image-only
PDF (no text layer: only OCR can read them).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

# Debian's fonts-noto-cjk (`make browser` installs it); Simplified Chinese is face 2 of the .ttc
CJK_FONTS = [
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
]


def cjk_font(size: int, traditional: bool = False):
    """A Pillow font that has Chinese glyphs (Simplified or Traditional forms), or None."""
    from PIL import ImageFont

    for path, index in CJK_FONTS:
        if Path(path).exists():
            return ImageFont.truetype(path, size, index=index + (traditional and "Noto" in path))
    return None


def render_page(text: str, *, width_px: int = 2480, height_px: int = 3508, font_px: int = 42,
                chars_per_line: int | None = None, traditional: bool = False):
    """Text on a white A4 page at 300 dpi (42 px ≈ 10 pt), wrapped, as a grayscale Pillow image."""
    from PIL import Image, ImageDraw

    font = cjk_font(font_px, traditional)
    if font is None:
        raise RuntimeError("no CJK font installed (apt install fonts-noto-cjk)")
    img = Image.new("L", (width_px, height_px), 255)
    draw = ImageDraw.Draw(img)
    margin = width_px // 10
    y = margin
    for para in text.split("\n"):
        for line in _wrap(para, font, width_px - 2 * margin, chars_per_line):
            draw.text((margin, y), line, font=font, fill=0)
            y += int(font_px * 1.6)
            if y > height_px - margin:
                return img
        y += font_px // 2
    return img


def _wrap(para: str, font, max_px: int, chars_per_line: int | None) -> list[str]:
    if chars_per_line:
        return textwrap.wrap(para, chars_per_line) or [""]
    lines, line = [], ""
    for token in _tokens(para):
        if font.getlength(line + token) > max_px and line:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    lines.append(line.rstrip())
    return lines


def _tokens(text: str) -> list[str]:
    """Latin words with their trailing space stay whole; every CJK character is a token."""
    out, word = [], ""
    for ch in text:
        if ch.isascii():
            word += ch
            if ch == " ":
                out.append(word)
                word = ""
        else:
            if word:
                out.append(word)
                word = ""
            out.append(ch)
    if word:
        out.append(word)
    return out


def scanned_pdf(path: Path, pages: Sequence[str], **render) -> Path:
    """An image-only PDF: one rendered page per text, no text layer."""
    images = [render_page(t, **render) for t in pages]
    images[0].save(path, "PDF", resolution=300.0, save_all=True, append_images=images[1:])
    return path


def mixed_pdf(path: Path, text_page: str, scanned_page: str) -> Path:
    """Page 1 has a text layer (reportlab), page 2 is a scan (an image only)."""
    import io

    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    c = canvas.Canvas(str(path), pagesize=A4)
    c.setFont("STSong-Light", 12)
    y = 780
    for line in textwrap.wrap(text_page, 40):
        c.drawString(60, y, line)
        y -= 18
    c.showPage()
    buf = io.BytesIO()
    render_page(scanned_page).save(buf, "PNG")
    buf.seek(0)
    c.drawImage(ImageReader(buf), 0, 0, width=A4[0], height=A4[1])
    c.showPage()
    c.save()
    return path


def pptx_file(path: Path, slides: Sequence[tuple[str, str]]) -> Path:
    from pptx import Presentation

    deck = Presentation()
    for title, body in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(path)
    return path


def xlsx_file(path: Path, sheets: dict[str, list[list]]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def xls_file(path: Path, sheets: dict[str, list[list]]) -> Path:
    """An Excel 97-2003 workbook (xlwt: nothing else writes .xls)."""
    import xlwt

    book = xlwt.Workbook()
    for name, rows in sheets.items():
        sheet = book.add_sheet(name)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                sheet.write(r, c, value)
    book.save(str(path))
    return path


def visible(text: str) -> str:
    """The characters OCR accuracy is judged on: NFKC ("，" is ","), no whitespace."""
    import unicodedata

    return "".join(unicodedata.normalize("NFKC", text).split())


def cer(got: str, want: str) -> float:
    """Character error rate: edit distance / len(want), over visible characters."""
    a, b = visible(got), visible(want)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] / max(len(b), 1)


def pandoc_file(path: Path, markdown: str) -> Path:
    """.epub, .odt or .rtf (by the suffix) written by pandoc from Markdown."""
    import pypandoc

    fmt = path.suffix.lstrip(".")
    extra = ["--metadata", "title=Fixture"] if fmt == "epub" else ["-s"] if fmt == "rtf" else []
    pypandoc.convert_text(markdown, fmt, format="md", outputfile=str(path), extra_args=extra)
    return path


def eml_file(path: Path, subject: str, body: str) -> Path:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "li.wei@example.com"
    msg["To"] = "team@example.com"
    msg["Subject"] = subject
    msg.set_content(body)
    path.write_bytes(bytes(msg))
    return path


def json_file(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=True), "utf-8")  # \\u escapes, as many tools write
    return path


def docx_file(path: Path, blocks: Sequence[tuple[str, object]]) -> Path:
    """A .docx written by python-docx from ("heading", text), ("para", text), ("table", rows) and
    ("page", None) (a page break) blocks."""
    from docx import Document

    doc = Document()
    for kind, value in blocks:
        if kind == "heading":
            doc.add_heading(str(value), 1)
        elif kind == "para":
            doc.add_paragraph(str(value))
        elif kind == "page":
            doc.add_page_break()
        elif kind == "table":
            rows = list(value)  # type: ignore[call-overload]
            table = doc.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = str(cell)
        else:
            raise ValueError(kind)
    doc.save(path)
    return path


def soffice_convert(source: Path, fmt: str, out_dir: Path, timeout: float = 180) -> Path:
    """``source`` saved by LibreOffice in another format: ``fmt`` is "ext:Filter", e.g.
    "doc:MS Word 97" (a private profile per call, so conversions in parallel do not collide)."""
    import subprocess
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fixture-lo-") as profile:
        subprocess.run(["soffice", "--headless", "--norestore", f"-env:UserInstallation={Path(profile).as_uri()}",
                        "--convert-to", fmt, "--outdir", str(out_dir), str(source)],
                       capture_output=True, timeout=timeout, check=True)
    out = out_dir / f"{source.stem}.{fmt.split(':')[0]}"
    if not out.is_file():
        raise RuntimeError(f"LibreOffice did not write {out}")
    return out


def ole2_file(path: Path, streams: dict[str, bytes]) -> Path:
    """A minimal OLE2 (Compound File Binary, version 3) container holding up to three streams: the
    shape of .doc, .ppt, .xls and WPS files, without an Office suite to write one. Streams are
    padded to the 4096-byte mini-stream cutoff so that all live in ordinary 512-byte sectors."""
    import struct

    assert 1 <= len(streams) <= 3
    end, free, fat_sect, no_stream = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF
    data = [body.ljust(max(4096, -(-len(body) // 512) * 512), b"\x00") for body in streams.values()]
    fat = [fat_sect, end]  # sector 0: the FAT, sector 1: the directory
    starts = []
    for body in data:
        starts.append(len(fat))
        n = len(body) // 512
        fat.extend(range(len(fat) + 1, len(fat) + n))
        fat.append(end)
    assert len(fat) <= 128, "too much data for one FAT sector"
    fat.extend([free] * (128 - len(fat)))

    def entry(name: str, kind: int, right: int, child: int, start: int, size: int) -> bytes:
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        return (encoded.ljust(64, b"\x00") + struct.pack("<HBBIII", len(encoded), kind, 1, no_stream, right, child)
                + b"\x00" * 16 + b"\x00" * 4 + b"\x00" * 16 + struct.pack("<IQ", start, size))

    names = list(streams)
    directory = entry("Root Entry", 5, no_stream, 1, end, 0)
    for k, (name, body) in enumerate(zip(names, data), 1):
        directory += entry(name, 2, k + 1 if k < len(names) else no_stream, no_stream, starts[k - 1], len(body))
    directory = directory.ljust(512, b"\x00")
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16
              + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
              + struct.pack("<IIIIIIIII", 0, 1, 1, 0, 4096, end, 0, end, 0)
              + struct.pack("<I", 0) + struct.pack("<I", free) * 108)
    path.write_bytes(header + struct.pack("<128I", *fat) + directory + b"".join(data))
    return path


def word97_stream(encrypted: bool = False) -> bytes:
    """The start of a WordDocument stream: a Word 97 file information block (FibBase), with the
    fEncrypted flag a password sets."""
    import struct

    flags = 0x0200 | (0x0100 if encrypted else 0)  # fExtChar; fEncrypted is bit 8 of the flag word
    return struct.pack("<HHHHHH", 0xA5EC, 0x00C1, 0, 0x0804, 0, flags) + b"\x00" * 26
