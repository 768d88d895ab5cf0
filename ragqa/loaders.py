"""Paths -> LangChain Documents.

Plain text (.txt, .md) is decoded with encoding detection, because Chinese files are often GBK.
JSON and JSON Lines are read as text, re-written with their non-ASCII characters unescaped.
Office documents, e-books, e-mail, HTML and PDF go through unstructured's partitioners; their
structure is kept in the text (headings on their own line as ``#`` headings, list items as
``- ``, each table row with its header). Scanned PDF pages and images are read by Tesseract OCR
(:mod:`ragqa.ocr`), never by models downloaded at run time. Word and PowerPoint 97-2003 files and
WPS Office's are converted to .docx/.pptx by LibreOffice first (:mod:`ragqa.office`).
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document

from ragqa.errors import InputError, MissingDependencyError, OcrUnavailableError

if TYPE_CHECKING:
    from ragqa.caps import Caps

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}
JSON_SUFFIXES = {".json", ".jsonl"}
PARTITIONED_SUFFIXES = {
    ".pdf", ".docx", ".html", ".htm", ".pptx", ".xlsx", ".xls", ".et", ".csv", ".epub", ".odt", ".rtf", ".eml",
}
# Word and PowerPoint 97-2003, and WPS Writer and Presentation files (the same binary formats under
# WPS's names): LibreOffice converts them to .docx/.pptx, read like those. Excel 97-2003 and WPS
# Spreadsheets workbooks (.xls, .et) are read by xlrd, and converted only when xlrd cannot read one.
CONVERTED_SUFFIXES = {".doc", ".wps", ".ppt", ".dps"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | JSON_SUFFIXES | PARTITIONED_SUFFIXES | CONVERTED_SUFFIXES | IMAGE_SUFFIXES
# a PDF page with fewer visible characters than this has no real text layer (a scan, perhaps with a
# stamped page number): with --ocr auto it is OCR'd
MIN_TEXT_LAYER_CHARS = 20

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def expand_paths(paths: Iterable[str | Path], *, missing_ok: bool = False) -> list[Path]:
    """Files named directly, plus the supported files inside named folders (sorted, recursive).

    A file named directly must exist and have a supported type; inside a folder, other files are
    skipped with a log line, so a folder of mixed files just works, and a subfolder that cannot
    be read (no permission, a name too long) is skipped with a note. ``missing_ok`` passes a
    missing file through (its own read then fails with the reason: a KB's file deleted from disk).
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not _utf8_name(path):
            raise InputError(f"{_shown(path)}: the name is not valid UTF-8 (rename the file or folder)")
        if path.is_dir():
            found = _walk(path)
            if not found:
                raise InputError(f"{path}: no supported files in this folder ({_suffix_list()})")
            out.extend(found)
        elif path.is_file():
            check_supported(path)
            out.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file")
        elif missing_ok:
            out.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    # de-duplicate by real location, keep the path as the user wrote it (it is what sources show)
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _walk(root: Path) -> list[Path]:
    """The supported, visible files under ``root``, sorted. The walk's own errors are notes (a
    subfolder without permission) or, for ``root`` itself, one InputError."""
    found: list[Path] = []
    problems: list[OSError] = []
    for folder, dirs, files in os.walk(root, onerror=problems.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(folder) / name
            if name.startswith(".") or p.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if not _utf8_name(p):
                log.warning("skipped %s: its name is not valid UTF-8 (rename it)", _shown(p))
                continue
            try:
                if p.is_file():
                    found.append(p)
            except OSError as exc:  # a name longer than the OS allows, a broken mount
                problems.append(exc)
    for exc in problems:
        where = exc.filename or root
        if Path(where) == root:
            raise InputError(f"{root}: cannot read this folder ({exc.strerror or exc})")
        log.warning("skipped %s: cannot read it (%s)", where, exc.strerror or exc)
    return sorted(found)


def _utf8_name(path: Path) -> bool:
    """A name the knowledge base, the JSON output and a terminal can hold (bytes that are not UTF-8
    come into Python as surrogate escapes)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown(path: Path) -> str:
    """A path whose name is not UTF-8, printable: the odd bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _suffix_list() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


def check_supported(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        kind = path.suffix or "files without an extension"
        raise InputError(f"{path}: unsupported file type {kind} (supported: {_suffix_list()})")


# Bump a reader's version when its output changes, so stored chunks are re-made; only that
# reader's files are re-read (upgrading ragqa must not re-embed a whole knowledge base for nothing).
TEXT_LOADER_VERSION = 2  # .txt/.md: unchanged since knowledge bases came
LOADER_VERSION = 3  # 3: headings, list items and table rows kept in the text; OCR


def loader_id(path: Path, ocr: str = "auto", ocr_languages: str = "auto") -> str:
    """How this file is read, e.g. 'text/2' or 'pdf:unstructured-fast+ocr-auto-auto/3'. Part of
    what makes a stored file "unchanged": the same bytes read another way (a .txt renamed .html,
    a scan indexed again with OCR on) are re-read."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return f"text/{TEXT_LOADER_VERSION}"
    kind = {".htm": ".html", ".jpeg": ".jpg", ".tif": ".tiff"}.get(suffix, suffix).lstrip(".")
    if suffix in JSON_SUFFIXES:
        return f"{kind}/{LOADER_VERSION}"
    ocr_tag = f"ocr-{ocr}-{ocr_languages}"
    if suffix in CONVERTED_SUFFIXES:
        from ragqa.office import soffice_path

        # a file that failed for want of LibreOffice is read again once it is installed
        how = "libreoffice+unstructured" if soffice_path() else "no-libreoffice"
        return f"{kind}:{how}/{LOADER_VERSION}"
    if suffix in IMAGE_SUFFIXES:
        return f"{kind}:tesseract-{ocr_tag}/{LOADER_VERSION}"
    strategy = f"-fast+{ocr_tag}" if kind == "pdf" else ""
    return f"{kind}:unstructured{strategy}/{LOADER_VERSION}"


def load_documents(paths: Iterable[str | Path], **options: Any) -> list[Document]:
    """Load every file; raise InputError naming the first file that cannot be read.
    ``options``: as for :func:`load_file`."""
    docs: list[Document] = []
    for path in expand_paths(paths):
        docs.extend(load_file(path, **options))
    return docs


def load_file(
    path: str | Path, data: bytes | None = None, *, ocr: str = "auto", ocr_languages: str = "auto",
    on_page: Callable[[int, int], None] | None = None, caps: "Caps | None" = None,
) -> list[Document]:
    """One file -> Documents (one per PDF page, slide or sheet; one for any other file).

    ``metadata``: ``source`` (the path); ``page`` for PDFs (page), .pptx/.ppt (slide) and
    spreadsheets (sheet number), with ``page_label`` ("slide 2", "sheet Prices") where it is not a page;
    ``ocr: True`` on text that came from OCR. ``page_content`` is the text that chunk offsets
    point into: for .txt/.md that is the decoded file itself.

    ``ocr``: ``auto`` (OCR PDF pages without a text layer, and images), ``always`` (OCR every PDF
    page too, ignoring its text layer), ``never``. ``on_page(done, total)`` hears OCR progress.
    ``caps``: what the file may make the reader do (``ragqa.caps``), checked before reading it.
    """
    from ragqa.caps import Caps, check_caps
    from ragqa.ocr import OCR_MODES

    if ocr not in OCR_MODES:
        raise InputError(f"ocr must be one of {', '.join(OCR_MODES)}, not {ocr!r}")
    path = Path(path)
    check_supported(path)
    if data is None:
        data = read_bytes(path)
    check_caps(path, data, caps or Caps())
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        docs = [Document(page_content=decode_text(data, path), metadata={"source": str(path)})]
    elif suffix in JSON_SUFFIXES:
        docs = [Document(page_content=_json_text(data, path, suffix), metadata={"source": str(path)})]
    elif suffix in IMAGE_SUFFIXES:
        docs = list(_ocr_image_file(path, data, ocr, ocr_languages, on_page))
    else:
        _check_not_text_garbage(data, path, suffix)
        if suffix in CONVERTED_SUFFIXES:
            docs = _read_converted(path, suffix, data)
        elif suffix in _BIFF:
            docs = _read_workbook(path, suffix, data)
        else:
            docs = list(_partition(path, suffix, data, ocr, ocr_languages, on_page))
    docs = [d for d in docs if d.page_content.strip()]
    if not docs:
        raise InputError(f"{path}: no text found ({_why_empty(suffix, ocr)})")
    return docs


def _why_empty(suffix: str, ocr: str) -> str:
    if suffix == ".pdf":
        return "a scanned PDF, and OCR is off: use --ocr auto" if ocr == "never" else "not even by OCR"
    if suffix in IMAGE_SUFFIXES:
        return "OCR found no text in the image"
    if suffix in _SHEETS | {".csv"}:
        return "every sheet is empty"
    return "the document is empty"


def read_bytes(path: Path, max_mb: float | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if max_mb is not None and size > max_mb * 1024 * 1024:
            raise InputError(f"{path}: {size / 2**20:.1f} MB is over the {max_mb:g} MB limit (max_file_mb)")
        data = path.read_bytes()
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise InputError(f"{path}: the file is empty")
    return data


def decode_text(data: bytes, path: Path | str = "<text>") -> str:
    """Decode bytes of a text file, or refuse them when the encoding cannot be told for sure.

    In order: a BOM; strict UTF-8; Korean (EUC-KR / CP949) when it reads as spaced Hangul words;
    Western text (CP1252, which covers Latin-1) when it reads as Western words; GB18030 (a superset
    of GBK and GB2312) when it reads as common Chinese; then charset_normalizer for the rest
    (Cyrillic, Shift_JIS, Big5, ...). Binary data (NUL bytes, or no encoding that yields mostly
    printable text) is refused, and so is text whose candidates disagree with none clearly right.

    >>> decode_text("中文".encode("gbk"))
    '中文'
    >>> decode_text("Déjà vu, “encore”.".encode("cp1252"))
    'Déjà vu, “encore”.'
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                break
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: looks like a binary file, not text")
    text = _strict(data, "utf-8")
    if text is not None and _mostly_printable(text):
        return text
    # Korean before Chinese: EUC-KR bytes also decode as GB2312, into common but meaningless hanzi
    text = _strict(data, "cp949")
    if text is not None and _looks_korean(text):
        return text
    western = _strict(data, "cp1252")
    confidence = _western_confidence(western) if western is not None else None
    if confidence == "sure":
        return western  # type: ignore[return-value]
    text = _chinese_or_euc_jp(data, path)
    if text is not None:
        return text
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_exclusion=_UNLIKELY_ENCODINGS))
    best = matches[0] if matches else None
    if best is not None and confidence == "maybe" and str(best) != western:
        # Latin text with letters CP1252 has but Western languages hardly use (Turkish CP1254 read
        # as CP1252: "yaþýyor"): the other reading wins only on clearly better language evidence
        as_cp1252 = max((m.coherence for m in matches if m.encoding == "cp1252"), default=0.0)
        if best.coherence < as_cp1252 + 0.05:
            raise _unsure(path, "cp1252", best.encoding)
    if best is not None:
        text = str(best)
        if _mostly_printable(text) and _one_script(text):
            log.info("%s: decoded as %s", path, best.encoding)
            return text
    raise InputError(f"{path}: cannot detect the text encoding (save it as UTF-8) or it is binary")


# What charset_normalizer may propose but a text file without a BOM practically never is:
# EBCDIC code pages and BOM-less UTF-16/32 (short CJK text in a legacy encoding often "reads" as
# one of them)
_UNLIKELY_ENCODINGS = [
    "cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140",
    "utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le",
]


def _unsure(path: Path | str, first: str, second: str) -> InputError:
    return InputError(
        f"{path}: cannot tell the text encoding for sure ({first} or {second}); "
        f"save the file as UTF-8 and try again"
    )


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_HANGUL_WORDS = re.compile(r"[\uac00-\ud7a3][^\w\s]* +[^\w\s]*[\uac00-\ud7a3]")


def _looks_korean(text: str) -> bool:
    """Hangul syllables for (nearly) every non-ASCII letter, and words separated by spaces.

    Chinese GB2312 text decoded as EUC-KR gives Hangul mixed with hanja, and no spaces between
    the "words"; real Korean separates its words with spaces.
    """
    wide = [ch for ch in text[:20000] if ch.isalpha() and not ch.isascii()]
    if not wide or not _mostly_printable(text):
        return False
    hangul = sum(1 for ch in wide if _HANGUL.match(ch))
    return hangul / len(wide) >= 0.95 and _HANGUL_WORDS.search(text) is not None


# The accented letters of French, German, Spanish, Italian, Portuguese, Dutch, Catalan and the
# Nordic languages, and the punctuation and signs Western text uses; CP1252's other characters
# (Ð Ý Þ ð ý þ Š š Ž ž Ÿ ƒ ¤ ¦ ¨ ª ¬ ¯ ´ ¶ ¸ º ˆ ˜ and the soft hyphen) are what other code pages
# (Turkish, Central European, Cyrillic, CJK) turn into when read as CP1252.
_WESTERN_LETTERS = frozenset("ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜßàáâãäåæçèéêëìíîïñòóôõöøùúûüÿŒœ")
_WESTERN_SIGNS = frozenset("\u00a0¡¢£¥§©«®°±²³µ·¹»¼½¾¿×÷€‚„…†‡‰‹‘’“”•–—™›")
_WESTERN = _WESTERN_LETTERS | _WESTERN_SIGNS
_LETTERS = re.compile(r"[^\W\d_]+")
# a sign between two letters, which Western text only does with an apostrophe, a middle dot
# (Catalan col·lecció) or a dash; "mo¿e", "by³o" (Polish CP1250) or "¤µ¤Ñ" (Big5) do it all the time
_SIGN_IN_WORD = re.compile(r"(?<=[^\W\d_])[^\w\s\x00-\x7f’·–—…](?=[^\W\d_])")


def _western_confidence(text: str) -> str | None:
    """How much ``text`` (bytes read as CP1252) looks like a Western language.

    ``"sure"``: its words are ASCII words with accented letters in them ("déjà", "Größe", "à"),
    and every non-ASCII character is a common Western letter or sign. ``"maybe"``: the same words,
    but with characters other code pages produce (Turkish "yaþýyor"). ``None``: words made only of
    non-ASCII letters (Cyrillic, Greek, CJK bytes read as CP1252: "Ïðèâåò"), signs inside words,
    or unprintable text.

    >>> _western_confidence("Il était déjà tard.")
    'sure'
    >>> _western_confidence("Ïðèâåò, êàê äåëà?") is None
    True
    """
    if not _mostly_printable(text) or _SIGN_IN_WORD.search(text):
        return None
    accented = [w for w in _LETTERS.findall(text) if not w.isascii()]
    foreign = sum(1 for w in accented if len(w) > 1 and not any(ch.isascii() for ch in w))
    if foreign > 0.05 * len(accented):
        return None
    return "sure" if all(ch.isascii() or ch in _WESTERN for ch in text) else "maybe"


def _kana_share(text: str) -> float:
    wide = [ch for ch in text[:20000] if not ch.isascii()]
    return sum(1 for ch in wide if "\u3040" <= ch <= "\u30ff") / len(wide) if wide else 0.0


def _one_script(text: str) -> bool:
    """Nearly all non-ASCII letters in one writing system (East Asian scripts count as one).

    A wrong code page often mixes scripts (Latin with Greek, Cyrillic with box drawing)."""
    scripts: dict[str, int] = {}
    for ch in text[:20000]:
        if ch.isascii() or not ch.isalpha():
            continue
        name = unicodedata.name(ch, "UNKNOWN")
        script = "EAST_ASIAN" if name.startswith(_EAST_ASIAN) else name.split()[0]
        scripts[script] = scripts.get(script, 0) + 1
    total = sum(scripts.values())
    return not total or max(scripts.values()) / total >= 0.9


_EAST_ASIAN = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "HALFWIDTH", "FULLWIDTH", "BOPOMOFO")


def _chinese_or_euc_jp(data: bytes, path: Path | str) -> str | None:
    """GB18030 when it reads as common Chinese; None to go on guessing.

    GB2312 has kana where EUC-JP has them, and where Big5 has its commonest hanzi: Japanese EUC-JP
    and Big5 both read as "Chinese" full of kana (real Chinese is not a fifth kana). Big5 refuses
    no EUC-JP text, but about 40% of Big5 characters have a second byte EUC-JP refuses: a dozen
    characters that are all valid EUC-JP are Japanese; fewer may be either.
    """
    text = _strict(data, "gb18030")
    if text is None or not _mostly_printable(text) or not _looks_chinese(text):
        return None
    if _kana_share(text) < 0.2:
        return text
    japanese = _strict(data, "euc_jp")
    if japanese is not None and _strict(data, "big5") is not None and sum(not ch.isascii() for ch in japanese) < 12:
        raise _unsure(path, "euc_jp", "big5")
    return japanese


def _looks_chinese(text: str) -> bool:
    """GB18030 decodes almost any bytes (Latin-1 "möchte" becomes "m鯿hte"). Real Chinese text is
    nearly all common characters: simplified ones in GB2312, traditional ones in Big5; garble is
    mostly rare characters (a German sentence: 40% common; Chinese of either script: ~100%)."""
    wide = [ch for ch in text[:20000] if ord(ch) > 0x7F]
    if not wide:
        return True
    return sum(_common_cjk(ch) for ch in wide) / len(wide) >= 0.9


def _common_cjk(ch: str) -> bool:
    for encoding in ("gb2312", "big5"):
        try:
            ch.encode(encoding)
            return True
        except UnicodeEncodeError:
            pass
    return False


def _mostly_printable(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for ch in text[:20000] if not (ch.isprintable() or ch in "\n\r\t\f\v"))
    return bad / min(len(text), 20000) < 0.05


_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the container of .xls and of encrypted Office files
_ZIP_SUFFIXES = {".docx", ".pptx", ".xlsx", ".odt", ".epub"}
_BIFF = {".xls", ".et"}
# the binary (OLE2) formats: what a file with that suffix must be
_OLE2_KINDS = {
    ".doc": "a .doc file (not a Word 97-2003 document)",
    ".wps": "a .wps file (not a WPS Writer or Word 97-2003 document)",
    ".ppt": "a .ppt file (not a PowerPoint 97-2003 presentation)",
    ".dps": "a .dps file (not a WPS Presentation or PowerPoint 97-2003 file)",
    ".xls": "an .xls file (not an Excel 97-2003 workbook)",
    ".et": "an .et file (not a WPS Spreadsheets or Excel 97-2003 workbook)",
}


def _check_not_text_garbage(data: bytes, path: Path, suffix: str) -> None:
    """Catch a file whose content does not match its extension (or is password-protected)
    before a partitioner chokes on it."""
    if suffix == ".pdf" and not data.lstrip()[:5].startswith(b"%PDF"):
        raise InputError(f"{path}: not a PDF file (no %PDF header)")
    if suffix in _ZIP_SUFFIXES | _OLE2_KINDS.keys() and data.startswith(_OLE2) and _office_encrypted(data):
        raise InputError(f"{path}: the document is password-protected (remove the password and try again)")
    if suffix in _ZIP_SUFFIXES and not data.startswith(b"PK"):
        raise InputError(f"{path}: not a {suffix} file (not a zip archive)")
    if suffix in _OLE2_KINDS and not data.startswith(_OLE2):
        raise InputError(f"{path}: not {_OLE2_KINDS[suffix]}")
    if suffix in {".csv", ".eml", ".html", ".htm"} and b"\x00" in data[:8192]:
        raise InputError(f"{path}: looks like a binary file, not {suffix}")
    if suffix == ".rtf" and not data.lstrip()[:5].startswith(b"{\\rtf"):
        raise InputError(f"{path}: not an RTF file (no {{\\rtf header)")


def _office_encrypted(data: bytes) -> bool:
    """An Office file with an open password (Word/Excel/PowerPoint wrap it in an OLE2 container)."""
    try:
        import msoffcrypto

        return bool(msoffcrypto.OfficeFile(io.BytesIO(data)).is_encrypted())
    except Exception:  # not an Office container msoffcrypto knows: an OOXML suffix on OLE2 is odd anyway
        return b"E\x00n\x00c\x00r\x00y\x00p\x00t\x00e\x00d\x00P\x00a\x00c\x00k\x00a\x00g\x00e" in data


def _json_text(data: bytes, path: Path, suffix: str) -> str:
    """JSON as readable text: parsed, then written back with non-ASCII characters as themselves
    (``"\\u9f99"`` -> ``"龙"``), one record per line for JSON Lines. Invalid JSON is refused with
    the place it breaks."""
    text = decode_text(data, path)
    n = 0
    try:
        if suffix == ".jsonl":
            lines = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    lines.append(json.dumps(json.loads(line), ensure_ascii=False))
            out = "\n".join(lines)
        else:
            out = json.dumps(json.loads(text), ensure_ascii=False, indent=1)
        # a lone surrogate escape ("\ud800") is valid JSON but no character: shown as U+FFFD
        return out.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    except RecursionError:
        raise InputError(f"{path}: the JSON is nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        where = f"line {n}" if suffix == ".jsonl" else f"line {exc.lineno} column {exc.colno}"
        raise InputError(f"{path}: not valid {'JSON Lines' if suffix == '.jsonl' else 'JSON'} "
                         f"({where}: {exc.msg})") from None


def _ocr_image_file(path: Path, data: bytes, ocr: str, languages: str,
                    on_page: Callable[[int, int], None] | None) -> Iterator[Document]:
    from ragqa.ocr import image_frames, ocr_pages

    if ocr == "never":
        raise InputError(f"{path}: an image can only be read with OCR, and OCR is off (use --ocr auto)")
    frames = image_frames(path, data)
    try:
        texts = ocr_pages(frames, len(frames), languages, on_page)
    except OcrUnavailableError as exc:
        raise OcrUnavailableError(f"{path}: {exc}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    for n, text in enumerate(texts, 1):
        meta: dict[str, Any] = {"source": str(path), "ocr": True}
        if len(texts) > 1:
            meta["page"] = n
        yield Document(page_content=text, metadata=meta)


def _prepare_unstructured() -> None:
    """Make unstructured private and offline before its first import.

    - DO_NOT_TRACK: unstructured otherwise sends usage analytics.
    - Its element-type heuristics (Title vs NarrativeText) want spaCy's en_core_web_sm and download
      it from GitHub on first use, which fails offline. ragqa keeps every element's text whatever
      its type, so when that model is not installed it gets a blank English pipeline with a
      sentencizer: the same text out, coarser type labels.
    """
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    try:
        import spacy
        import unstructured.nlp.tokenize as tokenize
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "unstructured") from None
    if getattr(tokenize, "_ragqa_prepared", False):
        return
    try:
        import en_core_web_sm  # noqa: F401  # the real model, if the user installed it
    except ImportError:
        def _blank_english() -> "spacy.language.Language":
            nlp = spacy.blank("en")
            nlp.add_pipe("sentencizer")
            return nlp

        tokenize._load_spacy_model = _blank_english
    tokenize._ragqa_prepared = True
    for name in ("unstructured", "unstructured.trace", "pdfminer"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def _quiet_parsers() -> Iterator[None]:
    """Silence pypdf, pdfminer and unstructured while a file is parsed.

    They log a WARNING (and sometimes warn) for every oddity of a damaged file ("EOF marker not
    found"); ragqa reports what is wrong with the file in one line of its own instead.
    """
    loggers = [logging.getLogger(name) for name in ("pypdf", "pdfminer", "unstructured")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _pdf_damage(path: Path, data: bytes) -> str | None:
    """Why pypdf cannot read this PDF (None when it can); a password-protected one is refused.

    unstructured turns both cases into "no elements", which would read as a scanned PDF. A PDF with
    only an owner password (printing or copying restricted) opens with the empty user password and
    is read as usual.
    """
    try:
        from pypdf import PdfReader
    except ImportError:
        return None  # only the messages get vaguer; unstructured reads the PDF without it
    try:
        with _quiet_parsers():
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise InputError(f"{path}: the PDF is password-protected (remove the password and try again)")
            len(reader.pages)
    except InputError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return reason if len(reason) <= 120 else reason[:119] + "…"
    return None


def _partition(path: Path, suffix: str, data: bytes, ocr: str = "auto", ocr_languages: str = "auto",
               on_page: Callable[[int, int], None] | None = None) -> Iterator[Document]:
    _prepare_unstructured()
    damage = _pdf_damage(path, data) if suffix == ".pdf" else None
    damaged = f"{path}: the PDF is damaged ({damage}; get a fresh copy, or re-save it from a PDF viewer)"
    if suffix == ".pdf" and ocr == "always" and not damage:
        elements = []  # the text layer is not read at all
    else:
        try:
            with _quiet_parsers():
                elements = _partition_elements(path, suffix)
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "unstructured") from None
        except InputError:
            raise
        except RecursionError:  # MIME parts inside parts inside parts...: refused, not a crash
            raise InputError(f"{path}: nested too deeply to read") from None
        except Exception as exc:  # partitioners raise many types on corrupt files
            if damage:
                raise InputError(damaged) from None
            reason = re.sub(r'^.*?Pandoc died with exitcode "?\d+"? during conversion: ', "", " ".join(str(exc).split()))
            reason = reason.split(" Current version of pandoc")[0]
            reason = reason if len(reason) <= 120 else reason[:119] + "…"
            raise InputError(f"{path}: cannot read this {suffix} file ({type(exc).__name__}: {reason}; "
                             f"is it damaged?)") from None

    pages: dict[int | None, list[str]] = {}
    labels: dict[int | None, str] = {}
    for element in elements:
        # a slide's title is its only heading (its body lines have depth 1+); e-mail has none
        text = _element_text(element, 0 if suffix == ".pptx" else -1 if suffix == ".eml" else None)
        if not text:
            continue
        page = getattr(element.metadata, "page_number", None) if suffix in _PAGED else None
        if suffix in _SHEETS and page is not None and page not in pages:
            name = getattr(element.metadata, "page_name", None) or f"Sheet{page}"
            labels[page] = f"sheet {name}"
            pages[page] = [f"# {name}"]
        elif suffix == ".pptx" and page is not None:
            labels[page] = f"slide {page}"
        pages.setdefault(page, []).append(text)
    if suffix == ".eml":
        pages = {None: [*_email_header(elements), *pages.get(None, [])]}
    ocr_pages_done: set[int] = set()
    if suffix == ".pdf" and ocr != "never" and not damage:
        ocr_pages_done = _ocr_pdf_pages(path, data, pages, ocr, ocr_languages, on_page)
    if damage and not any(pages.values()):
        raise InputError(damaged)  # text that pdfminer could still get out of it is kept
    for page in sorted(pages, key=lambda p: (p is None, p or 0)):
        meta: dict[str, Any] = {"source": str(path)}
        if page is not None:
            meta["page"] = page
        if page in labels:
            meta["page_label"] = labels[page]
        if page in ocr_pages_done:
            meta["ocr"] = True
        yield Document(page_content="\n\n".join(pages[page]), metadata=meta)


_PAGED = {".pdf", ".pptx", ".xlsx", ".xls", ".et"}
_SHEETS = {".xlsx", ".xls", ".et"}


def _read_converted(path: Path, suffix: str, data: bytes) -> list[Document]:
    """A legacy Office or WPS file, converted by LibreOffice to its XML twin (.doc -> .docx) and
    read like that; the Documents name the original file, with the twin's slides and sheets."""
    from ragqa.office import converted

    with converted(path, data, suffix) as twin:
        try:
            docs = list(_partition(twin, twin.suffix, twin.read_bytes()))
        except InputError as exc:  # LibreOffice wrote a file unstructured cannot read: rare
            reason = str(exc).removeprefix(f"{twin}: ")
            raise InputError(f"{path}: LibreOffice converted it to {twin.suffix}, but {reason}") from None
    for doc in docs:
        doc.metadata["source"] = str(path)
    return docs


def _read_workbook(path: Path, suffix: str, data: bytes) -> list[Document]:
    """An Excel 97-2003 or WPS Spreadsheets workbook, read by xlrd (milliseconds; LibreOffice needs a
    second to start); one xlrd cannot read is converted by LibreOffice when it is installed. When
    neither reads it, xlrd's reason is the one given."""
    from ragqa.office import soffice_path

    try:
        return list(_partition(path, suffix, data))
    except InputError as first:
        if soffice_path() is None:
            raise
        try:
            docs = _read_converted(path, suffix, data)
        except InputError as exc:
            log.info("LibreOffice cannot read it either: %s", exc)
            raise first from None
        log.info("%s: read by LibreOffice (xlrd could not: %s)", path, first)
        return docs


# suffix -> (unstructured module, its partition function, keyword arguments)
_PARTITIONERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    ".pdf": ("pdf", "partition_pdf", {"strategy": "fast", "languages": ["eng", "chi_sim"]}),
    ".docx": ("docx", "partition_docx", {}),
    ".html": ("html", "partition_html", {}),
    ".htm": ("html", "partition_html", {}),
    ".pptx": ("pptx", "partition_pptx", {}),
    # one table per sheet (find_subtable would cut a sheet at its blank rows into header-less parts)
    ".xlsx": ("xlsx", "partition_xlsx", {"find_subtable": False, "include_header": False}),
    ".xls": ("xlsx", "partition_xlsx", {"find_subtable": False, "include_header": False}),
    ".et": ("xlsx", "partition_xlsx", {"find_subtable": False, "include_header": False}),
    ".csv": ("csv", "partition_csv", {"include_header": True}),
    ".epub": ("epub", "partition_epub", {}),
    ".odt": ("odt", "partition_odt", {}),
    ".rtf": ("rtf", "partition_rtf", {}),
    ".eml": ("email", "partition_email", {"process_attachments": False}),
}


def _partition_elements(path: Path, suffix: str) -> list:
    """unstructured's elements of the file (its partitioner is imported on first use)."""
    import importlib

    module, function, kwargs = _PARTITIONERS[suffix]
    partition = getattr(importlib.import_module(f"unstructured.partition.{module}"), function)
    return partition(filename=str(path), **kwargs)


_SENTENCE_END_RE = re.compile(r"[。！？!?.;；:：]\s*$")


def _element_text(element: Any, heading_depth_limit: int | None = None) -> str:
    """An element's text with its structure: ``# Title`` (deeper titles get more #), ``- item``,
    and a table as one line per row, each cell named by its column header."""
    category = getattr(element, "category", "")
    if category == "Table":
        rows = _table_rows(getattr(element.metadata, "text_as_html", None))
        if rows:
            return rows
    text = str(element).strip()
    if not text:
        return ""
    if category == "Title" and not _SENTENCE_END_RE.search(text):
        # unstructured calls any short line a Title; one that ends like a sentence is body text
        depth = getattr(element.metadata, "category_depth", None) or 0
        if not (heading_depth_limit is not None and depth > heading_depth_limit):
            return "#" * min(depth + 1, 6) + " " + " ".join(text.split())
    if category == "ListItem":
        return "- " + text
    return text


def _table_rows(table_html: str | None) -> str:
    """An HTML table -> "header: cell | header: cell" lines, one per row, blank-line separated so
    that chunks hold whole rows. The first row is the header; a column without a header cell is
    named by its letter (A, B, ...), as a spreadsheet shows it.

    >>> _table_rows("<table><tr><td>商品</td><td>价格</td></tr><tr><td>龙井</td><td>320</td></tr></table>")
    '商品: 龙井 | 价格: 320'
    """
    if not table_html:
        return ""
    from lxml import html as lxml_html

    try:
        table = lxml_html.fromstring(table_html)
    except Exception:
        return ""
    rows = [[" ".join(cell.text_content().split()) for cell in tr.xpath("./th|./td")]
            for tr in table.xpath(".//tr")]
    rows = [r for r in rows if any(r)]
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:
        return " | ".join(c for c in header if c)
    names = [h or _column_letter(k) for k, h in enumerate(header)]
    lines = []
    for row in body:
        cells = [f"{names[k] if k < len(names) else _column_letter(k)}: {v}" for k, v in enumerate(row) if v]
        if cells:
            lines.append(" | ".join(cells))
    return "\n\n".join(lines)


def _column_letter(k: int) -> str:
    out = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        out = chr(65 + r) + out
    return out


def _email_header(elements: list) -> list[str]:
    """Subject, sender and recipients of an e-mail, as lines above its body."""
    meta = elements[0].metadata if elements else None
    lines = []
    for label, key in (("Subject", "subject"), ("From", "sent_from"), ("To", "sent_to")):
        value = getattr(meta, key, None) if meta is not None else None
        if isinstance(value, list):
            value = ", ".join(value)
        if value:
            lines.append(f"{label}: {value}")
    return ["\n".join(lines)] if lines else []


def _ocr_pdf_pages(path: Path, data: bytes, pages: dict[int | None, list[str]], ocr: str, languages: str,
                   on_page: Callable[[int, int], None] | None) -> set[int]:
    """OCR the PDF's pages that need it into ``pages``; -> the page numbers whose text is OCR's.

    ``auto``: pages with fewer than MIN_TEXT_LAYER_CHARS visible characters in their text layer.
    Without Tesseract, a PDF that has text on other pages is read without the scanned pages (a
    note says which); one with no text at all is refused with what to install.
    """
    from ragqa.ocr import ocr_pages, pdf_page_count, render_pdf_pages

    try:
        count = pdf_page_count(data)
    except Exception:
        return set()  # pypdfium2 cannot open it; pdfminer's text (if any) is all there is
    def visible(p: int) -> int:
        return sum(len("".join(t.split())) for t in pages.get(p, []))

    wanted = list(range(1, count + 1)) if ocr == "always" else [p for p in range(1, count + 1) if visible(p) < MIN_TEXT_LAYER_CHARS]
    if not wanted:
        return set()
    try:
        texts = ocr_pages(render_pdf_pages(data, wanted), len(wanted), languages, on_page)
    except OcrUnavailableError as exc:
        if any(visible(p) for p in range(1, count + 1)):
            log.warning("%s: %s left out: no text layer, and %s", path, _page_list(wanted), exc)
            return set()
        raise OcrUnavailableError(f"{path}: the PDF has no text layer (a scan); {exc}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except Exception as exc:  # pypdfium2 could open the file but not render a page of it
        raise InputError(f"{path}: cannot render a page for OCR ({type(exc).__name__}: {exc}); "
                         "the PDF may be damaged") from None
    done = set()
    for page, text in zip(wanted, texts):
        if text.strip() and (ocr == "always" or len("".join(text.split())) > visible(page)):
            pages[page] = [text]
            done.add(page)
    return done


def _page_list(pages: list[int]) -> str:
    return f"page {pages[0]}" if len(pages) == 1 else f"{len(pages)} pages ({', '.join(map(str, pages[:8]))}{', …' if len(pages) > 8 else ''})"
