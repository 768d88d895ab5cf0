"""Paths -> LangChain Documents.

Plain text (.txt, .md) is decoded with encoding detection, because Chinese files are often GBK.
PDF, DOCX and HTML go through unstructured's partitioners (text layer only, no OCR).
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


LOADER_VERSION = 2  # bump when a loader's output changes, so stored chunks are re-made


def loader_id(path: Path) -> str:
    """How this file is read, e.g. 'text/2' or 'pdf:unstructured-fast/2'. Part of what makes a
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
        docs = list(_partition(path, suffix, data))
    docs = [d for d in docs if d.page_content.strip()]
    if not docs:
        raise InputError(f"{path}: no text found (empty file, or a scanned PDF without a text layer)")
    return docs


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


def _partition(path: Path, suffix: str, data: bytes) -> Iterator[Document]:
    _prepare_unstructured()
    damage = _pdf_damage(path, data) if suffix == ".pdf" else None
    damaged = f"{path}: the PDF is damaged ({damage}; get a fresh copy, or re-save it from a PDF viewer)"
    try:
        with _quiet_parsers():
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
        if damage:
            raise InputError(damaged) from None
        raise InputError(f"{path}: cannot read this {suffix} file ({type(exc).__name__}: {exc})") from None

    pages: dict[int | None, list[str]] = {}
    for element in elements:
        text = str(element).strip()
        if not text:
            continue
        page = getattr(element.metadata, "page_number", None) if suffix == ".pdf" else None
        pages.setdefault(page, []).append(text)
    if damage and not any(pages.values()):
        raise InputError(damaged)  # text that pdfminer could still get out of it is kept
    for page, texts in pages.items():
        meta: dict = {"source": str(path)}
        if page is not None:
            meta["page"] = page
        yield Document(page_content="\n\n".join(texts), metadata=meta)
