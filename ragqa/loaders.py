"""Paths -> LangChain Documents.

Plain text (.txt, .md) is decoded with encoding detection, because Chinese files are often GBK.
PDF, DOCX and HTML go through unstructured's partitioners (text layer only, no OCR).
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from langchain_core.documents import Document

from ragqa.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}
PARTITIONED_SUFFIXES = {".pdf", ".docx", ".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | PARTITIONED_SUFFIXES

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the supported files inside named folders (sorted, recursive).

    A file named directly must exist and have a supported type; inside a folder, other files are
    skipped with a log line, so a folder of mixed files just works.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not _hidden(p, path)
            )
            if not found:
                raise InputError(f"{path}: no supported files in this folder ({_suffix_list()})")
            out.extend(found)
        elif path.is_file():
            check_supported(path)
            out.append(path)
        elif path.exists():
            raise InputError(f"{path}: not a regular file")
        else:
            raise InputError(f"{path}: no such file or folder")
    # de-duplicate by real location, keep the path as the user wrote it (it is what sources show)
    unique: dict[Path, Path] = {}
    for p in out:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _suffix_list() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


def check_supported(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        kind = path.suffix or "files without an extension"
        raise InputError(f"{path}: unsupported file type {kind} (supported: {_suffix_list()})")


LOADER_VERSION = 1  # bump when a loader's output changes, so stored chunks are re-made


def loader_id(path: Path) -> str:
    """How this file is read, e.g. 'text/1' or 'pdf:unstructured-fast/1'. Part of what makes a
    stored file "unchanged": the same bytes read another way (a .txt renamed .html) are re-read."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return f"text/{LOADER_VERSION}"
    kind = {".htm": ".html"}.get(suffix, suffix).lstrip(".")
    strategy = "-fast" if kind == "pdf" else ""
    return f"{kind}:unstructured{strategy}/{LOADER_VERSION}"


def load_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Load every file; raise InputError naming the first file that cannot be read."""
    docs: list[Document] = []
    for path in expand_paths(paths):
        docs.extend(load_file(path))
    return docs


def load_file(path: str | Path, data: bytes | None = None) -> list[Document]:
    """One file -> Documents (one per PDF page, one for any other file).

    ``metadata``: ``source`` (the path), ``page`` (PDFs). ``page_content`` is the text that chunk
    offsets point into: for .txt/.md that is the decoded file itself.
    """
    path = Path(path)
    check_supported(path)
    if data is None:
        data = read_bytes(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        docs = [Document(page_content=decode_text(data, path), metadata={"source": str(path)})]
    else:
        _check_not_text_garbage(data, path, suffix)
        docs = list(_partition(path, suffix))
    docs = [d for d in docs if d.page_content.strip()]
    if not docs:
        raise InputError(f"{path}: no text found (empty file, or a scanned PDF without a text layer)")
    return docs


def read_bytes(path: Path, max_mb: float | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if max_mb is not None and size > max_mb * 1024 * 1024:
            raise InputError(f"{path}: {size / 1e6:.0f} MB is over the {max_mb:g} MB limit (max_file_mb)")
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
    """Decode bytes of a text file: BOM, then strict UTF-8, then GB18030, then detection.

    GB18030 is a superset of GBK and GB2312, so one try covers the common Chinese encodings.
    Binary data (NUL bytes, or no encoding that yields mostly printable text) is refused.

    >>> decode_text("中文".encode("gbk"))
    '中文'
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                break
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: looks like a binary file, not text")
    for encoding in ("utf-8", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if _mostly_printable(text) and (encoding == "utf-8" or _looks_chinese(text)):
            return text
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None:
        text = str(best)
        if _mostly_printable(text):
            log.info("%s: decoded as %s", path, best.encoding)
            return text
    raise InputError(f"{path}: cannot detect the text encoding (save it as UTF-8) or it is binary")


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


def _check_not_text_garbage(data: bytes, path: Path, suffix: str) -> None:
    """Catch a file whose content does not match its extension before a partitioner chokes."""
    if suffix == ".pdf" and not data.lstrip()[:5].startswith(b"%PDF"):
        raise InputError(f"{path}: not a PDF file (no %PDF header)")
    if suffix == ".docx" and not data.startswith(b"PK"):
        raise InputError(f"{path}: not a .docx file (not a zip archive)")


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


def _partition(path: Path, suffix: str) -> Iterator[Document]:
    _prepare_unstructured()
    try:
        if suffix == ".pdf":
            from unstructured.partition.pdf import partition_pdf

            elements = partition_pdf(filename=str(path), strategy="fast", languages=["eng", "chi_sim"])
        elif suffix == ".docx":
            from unstructured.partition.docx import partition_docx

            elements = partition_docx(filename=str(path))
        else:
            from unstructured.partition.html import partition_html

            elements = partition_html(filename=str(path))
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "unstructured") from None
    except InputError:
        raise
    except Exception as exc:  # partitioners raise many types on corrupt files
        raise InputError(f"{path}: cannot read this {suffix} file ({type(exc).__name__}: {exc})") from None

    pages: dict[int | None, list[str]] = {}
    for element in elements:
        text = str(element).strip()
        if not text:
            continue
        page = getattr(element.metadata, "page_number", None) if suffix == ".pdf" else None
        pages.setdefault(page, []).append(text)
    for page, texts in pages.items():
        meta: dict = {"source": str(path)}
        if page is not None:
            meta["page"] = page
        yield Document(page_content="\n\n".join(texts), metadata=meta)
