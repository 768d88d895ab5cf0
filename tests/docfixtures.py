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
