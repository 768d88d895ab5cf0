"""OCR for scanned PDF pages and images: Tesseract (Debian's ``tesseract-ocr`` with the
``chi_sim``, ``chi_tra`` and ``eng`` models), run as a subprocess per page.

Nothing is downloaded: the language models are the system's traineddata files. Pages are rendered
with pypdfium2 (PDFs) or read with Pillow (images) and recognised in parallel, one single-threaded
Tesseract per core, which on small machines is faster than one Tesseract using OpenMP threads.
Tesseract puts spaces between Chinese characters and breaks lines where the scan did; both are
undone for Han text (:func:`clean_ocr_text`).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa.errors import InputError, MissingDependencyError, OcrUnavailableError

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

OCR_MODES = ("auto", "never", "always")
# "auto": per file, the first page with text is read as Simplified and as Traditional Chinese (each
# with English) and the script chosen by TRADITIONAL_MARGIN is used for every later page. One model
# set with all three is slower and worse (README "Supported files": CER 5.6% vs 2.5% on Simplified).
DEFAULT_OCR_LANGUAGES = "auto"
AUTO_CANDIDATES = ("chi_sim+eng", "chi_tra+eng")
# Traditional wins only by this many points of mean confidence: on real pages it leads by 9-14 on
# Traditional text and trails by 3-6 on Simplified, but it can edge ahead on a few lines of
# Simplified (and then writes them in Traditional characters). Chinese-first: a tie is Simplified.
TRADITIONAL_MARGIN = 3.0
OCR_DPI = 300  # Tesseract's models are trained on ~300 dpi text; lower loses small Chinese characters
# Page segmentation: Tesseract's automatic layout (3) reads columns in order, but on sparse pages
# it can cut a Chinese line at the wide gap after a colon and drop the rest ("扫描件第一页：西湖龙井
# 茶……" -> "扫描件第一页:"). So a page is read with 3, and read again as one column (4) when more than
# UNREAD_INK of its dark pixels lie outside every word 3 found; the reading with more text wins
# (by MORE_TEXT). Two-column pages keep their order; sparse pages keep all their words.
OCR_PSM = "3"
FALLBACK_PSM = "4"
UNREAD_INK = 0.15
MORE_TEXT = 1.1
OCR_TIMEOUT_S = 300  # one page; a pathological image should not hang an index run forever
INSTALL_HINT = "apt install tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-chi-tra, or `make setup`"

PageProgress = Callable[[int, int], None]  # (pages done, pages in all)


def tesseract_path() -> str | None:
    """The tesseract program: $RAGQA_TESSERACT if set, else the one on PATH; None if there is none."""
    given = os.environ.get("RAGQA_TESSERACT")
    if given:
        return given if os.access(given, os.X_OK) and not os.path.isdir(given) else None
    return shutil.which("tesseract")


def check_languages(languages: str) -> str:
    """The Tesseract binary, or an OcrUnavailableError naming what to install."""
    if languages == "auto":
        languages = "+".join(dict.fromkeys("+".join(AUTO_CANDIDATES).split("+")))
    exe = tesseract_path()
    if exe is None:
        raise OcrUnavailableError(f"OCR needs Tesseract, which is not installed: {INSTALL_HINT}")
    have = installed_languages(exe)
    missing = [lang for lang in languages.split("+") if lang and lang not in have]
    if missing:
        debs = " ".join("tesseract-ocr-" + m.replace("_", "-") for m in missing)
        raise OcrUnavailableError(
            f"Tesseract has no {'+'.join(missing)} model (apt install {debs}, or set ocr_languages; "
            f"installed: {'+'.join(sorted(have)) or 'none'})"
        )
    return exe


_LANGS: dict[str, frozenset[str]] = {}


def installed_languages(exe: str) -> frozenset[str]:
    if exe not in _LANGS:
        try:
            out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _LANGS[exe] = frozenset(line.strip() for line in out.splitlines()[1:] if line.strip())
    return _LANGS[exe]


def ocr_image(image: "Image", languages: str, exe: str | None = None) -> tuple[str, float]:
    """One page image -> (its cleaned text, Tesseract's mean word confidence 0-100); ('', 0) when
    Tesseract finds no text. See OCR_PSM for the second reading of pages with unread ink."""
    import tempfile

    exe = exe or check_languages(languages)
    with tempfile.TemporaryDirectory(prefix="ragqa-ocr-") as tmp:
        page = os.path.join(tmp, "page.png")
        image.save(page, format="PNG")
        text, conf, boxes = _tesseract(exe, page, os.path.join(tmp, "layout"), languages, OCR_PSM)
        if _unread_ink(image, boxes) > UNREAD_INK:
            text4, conf4, _ = _tesseract(exe, page, os.path.join(tmp, "column"), languages, FALLBACK_PSM)
            if len("".join(text4.split())) > MORE_TEXT * len("".join(text.split())):
                text, conf = text4, conf4
    return clean_ocr_text(text), conf


def _tesseract(exe: str, page: str, base: str, languages: str, psm: str) -> tuple[str, float, list[tuple[int, int, int, int]]]:
    """(text, mean word confidence, word boxes as (left, top, width, height)) of one run."""
    # one thread per Tesseract: pages run in parallel instead (faster on 2-8 cores than OpenMP)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        proc = subprocess.run([exe, page, base, "-l", languages, "--psm", psm, "txt", "tsv"],
                              capture_output=True, timeout=OCR_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise InputError(f"OCR took over {OCR_TIMEOUT_S}s on one page") from None
    if proc.returncode != 0:
        reason = " ".join(proc.stderr.decode("utf-8", "replace").split())[-200:]
        raise InputError(f"Tesseract failed ({reason or proc.returncode})")
    text = Path(base + ".txt").read_text("utf-8", "replace")
    confs, boxes = [], []
    for row in Path(base + ".tsv").read_text("utf-8", "replace").splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) >= 12 and cols[0] == "5" and cols[11].strip():  # level 5: a word
            boxes.append((int(cols[6]), int(cols[7]), int(cols[8]), int(cols[9])))
            if float(cols[10]) >= 0:
                confs.append(float(cols[10]))
    return text, (sum(confs) / len(confs) if confs else 0.0), boxes


def _unread_ink(image: "Image", boxes: list[tuple[int, int, int, int]]) -> float:
    """The share of the page's dark pixels outside every word box (0 for a blank page)."""
    import numpy as np

    dark = np.asarray(image.convert("L")) < 128
    total = int(dark.sum())
    if not total:
        return 0.0
    covered = np.zeros_like(dark)
    pad = max(2, image.height // 300)  # word boxes are tight; a glyph's stray pixels are not unread text
    for left, top, width, height in boxes:
        covered[max(0, top - pad):top + height + pad, max(0, left - pad):left + width + pad] = True
    return float((dark & ~covered).sum()) / total


def ocr_pages(
    images: Iterable["Image"], total: int, languages: str = DEFAULT_OCR_LANGUAGES,
    on_page: PageProgress | None = None, workers: int | None = None,
) -> list[str]:
    """OCR page images in parallel, in order; ``on_page(done, total)`` after each page.

    ``languages`` is Tesseract's ``-l`` (``chi_sim+eng``), or ``auto`` (see DEFAULT_OCR_LANGUAGES).
    """
    exe = check_languages(languages)
    workers = max(1, min(workers or os.cpu_count() or 1, total or 1, 8))
    texts: list[str] = []
    done = 0

    def finished(text: str) -> None:
        nonlocal done
        texts.append(text)
        done += 1
        if on_page:
            on_page(done, total)

    decided = None if languages == "auto" else languages
    with ThreadPoolExecutor(max(workers, 2)) as pool:
        # render lazily, at most 2 pages per worker ahead: a 500-page scan at 300 dpi is gigabytes
        pending: list = []
        for image in images:
            if decided is None:  # read as both scripts until a page has text (a blank cover decides nothing)
                readings = [pool.submit(ocr_image, image, cand, exe) for cand in AUTO_CANDIDATES]
                results = [r.result() for r in readings]
                best = 1 if results[1][1] > results[0][1] + TRADITIONAL_MARGIN else 0
                finished(results[best][0])
                if any(text for text, _ in results):
                    decided = AUTO_CANDIDATES[best]
                    log.info("OCR: reading as %s (confidence %s)", decided,
                             " vs ".join(f"{c:.0f}" for _, c in results))
                continue
            pending.append(pool.submit(ocr_image, image, decided, exe))
            if len(pending) >= 2 * workers:
                finished(pending.pop(0).result()[0])
        for fut in pending:
            finished(fut.result()[0])
    return texts


def render_pdf_pages(data: bytes, pages: list[int], dpi: int = OCR_DPI) -> Iterator["Image"]:
    """The given 1-based pages of a PDF as grayscale images."""
    try:
        import pypdfium2 as pdfium
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "pypdfium2") from None
    pdf = pdfium.PdfDocument(data)
    try:
        for number in pages:
            page = pdf[number - 1]
            try:
                yield page.render(scale=dpi / 72, grayscale=True).to_pil()
            finally:
                page.close()
    finally:
        pdf.close()


def pdf_page_count(data: bytes) -> int:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        return len(pdf)
    finally:
        pdf.close()


def image_frames(path: Path, data: bytes) -> list["Image"]:
    """Every frame of an image file (a multi-page TIFF has several), ready for Tesseract."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        frames = [frame.convert("L") for frame in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({' '.join(str(exc).split())[:120]})") from None
    if not frames:
        raise InputError(f"{path}: the image has no frames")
    return [_upscale_small(frame) for frame in frames]


def _upscale_small(img: "Image") -> "Image":
    """Screenshots and phone crops are often ~100 dpi; Tesseract reads Chinese far better when
    characters are ~30+ pixels tall, so small images are doubled."""
    if max(img.size) < 1400:
        from PIL import Image

        return img.resize((img.width * 2, img.height * 2), Image.Resampling.LANCZOS)
    return img


_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_PUNCT = r"\u3000-\u303f\uff00-\uffef"
_CJK = _HAN + _CJK_PUNCT
# a space (or several) with a Han character or CJK punctuation on both sides
_SPACE_IN_CJK = re.compile(rf"(?<=[{_CJK}])[ \t]+(?=[{_CJK}])")
# one line break inside a Chinese paragraph (the scan's line end), not a blank line
_BREAK_IN_CJK = re.compile(rf"(?<=[{_CJK}])[ \t]*\n[ \t]*(?=[{_CJK}])")


# ASCII punctuation Tesseract reads inside Chinese text ("第一页: 龙井"), and its full-width form
_ASCII_PUNCT_IN_CJK = re.compile(rf"(?<=[{_HAN}])[ \t]*([,:;!?])[ \t]*(?=[{_HAN}])")
_FULL_WIDTH = {",": "，", ":": "：", ";": "；", "!": "！", "?": "？"}


def clean_ocr_text(text: str) -> str:
    """Undo Tesseract's layout artefacts in Chinese text; leave Latin text as it is.

    >>> clean_ocr_text("龙 井 茶 产 于\\n杭 州 。 Tea  is good.\\n\\n第二 段: 红 茶")
    '龙井茶产于杭州。 Tea  is good.\\n\\n第二段：红茶'
    """
    text = text.replace("\f", "\n").replace("\r\n", "\n")
    text = _SPACE_IN_CJK.sub("", text)
    text = _ASCII_PUNCT_IN_CJK.sub(lambda m: _FULL_WIDTH[m.group(1)], text)
    text = _BREAK_IN_CJK.sub("", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
