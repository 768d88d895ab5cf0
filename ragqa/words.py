"""Words: what BM25 matches, and what a token costs.

- ``tokenize``: jieba search-mode segmentation of Chinese runs, lower-cased Latin words without
  English stop words, after the text is folded to one script (``fold``: OpenCC, Traditional to
  Simplified, so ``觀景臺`` and ``观景台`` are one word; jieba's dictionary is Simplified). The
  knowledge bases' keyword indexes, the in-memory index and the fusion all use it, so it sits
  below them. jieba's dictionary is read from a trie file (``ragqa.segmenter``): the first word
  comes in ~0.05 s instead of ~0.5 s, the words the same.
- ``fold`` / ``use_keyword_fold``: the script fold (``Settings.keyword_fold``, process-wide; the
  pipeline sets it). Only the words are folded: the text a user sees, its offsets and snippets
  are the stored text, never the folded one.
- ``tokenizer_id``: what a chunk's stored words depend on (the fold included); a KB made under
  another one has its words made again from the stored text (``ragqa.store.local``).
- ``matched_share`` / ``matched_mass``: how much of a query's idf mass (jieba's general-corpus
  table, cached as SQLite under the cache folder) a chunk's words hold; the fusion's signal.
- ``estimate_tokens``: a cautious token count for a model without a tokenizer of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

from ragqa.errors import MissingDependencyError

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[A-Za-z0-9]+")
_EN_STOP = frozenset(
    "a an and are as at be but by for from has have he her his i in is it its of on or she that the their "
    "them they this to was were what when where which who whom whose why will with you your how did does do".split()
)
# ragqa's own rules (the pattern above, lower case, the stop words): change it when they change
WORDS_FORMAT = 1
_segmenter_: Any = None
_segmenter_lock = threading.Lock()
_tokenizer_id: str | None = None
# OpenCC configs for the fold (README "Keyword search"): to Simplified, as jieba's dictionary is
KEYWORD_FOLDS = ("t2s", "tw2s", "hk2s", "tw2sp", "none")
DEFAULT_KEYWORD_FOLD = "t2s"
_fold_name = DEFAULT_KEYWORD_FOLD
_converters: dict[str, Any] = {}
_fold_lock = threading.Lock()


def use_keyword_fold(name: str) -> None:
    """Make ``name`` the fold of ``tokenize`` in this process (one of KEYWORD_FOLDS)."""
    global _fold_name
    if name not in KEYWORD_FOLDS:
        from ragqa.errors import ConfigError

        raise ConfigError(f"unknown keyword fold {name!r}; choose one of {', '.join(KEYWORD_FOLDS)}")
    _fold_name = name


def keyword_fold() -> str:
    """The fold ``tokenize`` uses in this process."""
    return _fold_name


def _converter(name: str) -> Any:
    """OpenCC's converter for a config, loaded once per process (~2 ms)."""
    conv = _converters.get(name)
    if conv is None:
        with _fold_lock:
            conv = _converters.get(name)
            if conv is None:
                try:
                    import opencc
                except ImportError:
                    raise MissingDependencyError("opencc") from None
                conv = _converters[name] = opencc.OpenCC(f"{name}.json")
    return conv


def fold(text: str, name: str | None = None) -> str:
    """``text`` in one script for the keyword index: OpenCC's ``name`` config (default: this
    process's fold); ASCII text and the ``none`` fold give it back as it is.

    >>> fold("觀景臺是誰設計的？")
    '观景台是谁设计的？'
    >>> fold("观景台由工程师蒋立华设计")  # Simplified stays as it is
    '观景台由工程师蒋立华设计'
    """
    name = name or _fold_name
    if name == "none" or text.isascii():
        return text
    return _converter(name).convert(text)


def fold_id(name: str | None = None) -> str:
    """What folded text depends on: the config and OpenCC's version (its dictionaries); '' for none."""
    name = name or _fold_name
    return "" if name == "none" else f"fold {name} opencc {_opencc_version()}"


@functools.cache
def _opencc_version() -> str:
    """OpenCC's installed version, looked up once (every KB open and write asks for the id)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opencc")
    except PackageNotFoundError:
        raise MissingDependencyError("opencc") from None


def _segmenter() -> Any:
    """jieba's segmenter (``lcut_for_search``), made once per process."""
    global _segmenter_
    if _segmenter_ is None:
        with _segmenter_lock:
            if _segmenter_ is None:
                from ragqa.segmenter import load_segmenter

                _segmenter_ = load_segmenter()
    return _segmenter_


def tokenizer_id() -> str:
    """What ``tokenize`` gives depends on: ragqa's rules, jieba's version and dictionary, and the
    fold (none: the id from before the fold, so such KBs are not re-tokenized).

    >>> tokenizer_id()  # doctest: +SKIP
    'words/1 jieba 0.42.1 dict 5071852 fold t2s opencc 1.4.2'
    """
    global _tokenizer_id
    if _tokenizer_id is None:
        from ragqa.segmenter import segmentation_id

        _tokenizer_id = f"words/{WORDS_FORMAT} {segmentation_id()}"
    folded = fold_id()
    return f"{_tokenizer_id} {folded}" if folded else _tokenizer_id


def tokenize(text: str) -> list[str]:
    """Words for BM25: the text folded to Simplified, then jieba search-mode segmentation of
    Chinese, lower-cased Latin words.

    >>> tokenize("熊猫住在四川 and eats Bamboo")
    ['熊猫', '住', '在', '四川', 'eats', 'bamboo']
    >>> tokenize("熊貓住在四川")
    ['熊猫', '住', '在', '四川']
    """
    out: list[str] = []
    for match in _TOKEN.finditer(fold(text)):
        piece = match.group()
        if piece[0].isascii():
            word = piece.lower()
            if word not in _EN_STOP:
                out.append(word)
        else:
            out.extend(t for t in _segmenter().lcut_for_search(piece) if t.strip())
    return out


IDF_CACHE_FORMAT = 1


def _idf_of(words: Sequence[str]) -> tuple[dict[str, float], float]:
    """jieba's general-corpus idf of these words, and its median (what an unknown word gets).

    The table has 270k words: parsing it costs ~0.4 s and ~100 MB per process, more than the
    rest of a question. So it is copied once into an SQLite file in the cache folder and only the
    question's words are looked up; where that cannot be written, the table is read as jieba does."""
    db = _idf_db()
    if db is None:
        idf, median = _idf_table()
        return {w: idf[w] for w in words if w in idf}, median
    found: dict[str, float] = {}
    for part in (list(words)[i:i + 500] for i in range(0, len(words), 500)):
        q = f"SELECT word, idf FROM idf WHERE word IN ({','.join('?' * len(part))})"
        found.update(db.execute(q, part).fetchall())
    return found, _idf_median


_idf: tuple[dict[str, float], float] | None = None
_idf_lock = threading.RLock()
_idf_connection: Any = None
_idf_median = 0.0


def _idf_table() -> tuple[dict[str, float], float]:
    """jieba's idf table in memory (the fallback of ``_idf_of``), parsed once per process."""
    global _idf
    with _idf_lock:
        if _idf is None:
            from ragqa.segmenter import jieba_module

            jieba_module()
            import jieba.analyse

            table = jieba.analyse.default_tfidf
            _idf = (table.idf_freq, table.median_idf)
    return _idf


def _idf_db() -> Any:
    """The idf table as SQLite under the cache folder, made on first use (None if it cannot be).
    Made once per process even when many questions arrive together (the first one builds it)."""
    if _idf_connection is not None:
        return _idf_connection or None
    with _idf_lock:
        return _make_idf_db()


def _make_idf_db() -> Any:
    global _idf_connection, _idf_median
    if _idf_connection is not None:
        return _idf_connection or None
    import contextlib
    import sqlite3
    from pathlib import Path

    from ragqa.paths import atomic_path, default_cache_dir

    try:
        import jieba

        source = Path(jieba.__file__).parent / "analyse" / "idf.txt"
        # jieba's version and the table's size, not its mtime: every new venv copies the file anew
        version = getattr(jieba, "__version__", "0").replace("-", "_")
        stamp = f"{IDF_CACHE_FORMAT}-{version}-{source.stat().st_size}"
        path = default_cache_dir() / f"jieba-idf-{stamp}.sqlite"
        if not path.is_file():
            for old in path.parent.glob("jieba-idf-*.sqlite"):  # earlier versions' copies (6 MB each)
                with contextlib.suppress(OSError):
                    old.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            idf, median = _idf_table()
            with atomic_path(path) as tmp:
                con = sqlite3.connect(tmp)
                con.execute("CREATE TABLE idf (word TEXT PRIMARY KEY, idf REAL NOT NULL) WITHOUT ROWID")
                con.execute("CREATE TABLE meta (median REAL NOT NULL)")
                con.executemany("INSERT OR REPLACE INTO idf VALUES (?, ?)", idf.items())
                con.execute("INSERT INTO meta VALUES (?)", (median,))
                con.commit()
                con.close()
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        _idf_median = float(con.execute("SELECT median FROM meta").fetchone()[0])
        _idf_connection = con
    except (OSError, sqlite3.Error, ImportError) as exc:
        log.info("idf table not cached (%s); reading it in memory", exc)
        _idf_connection = False
    return _idf_connection or None


def matched_share(query: str, chunk_words: set[str]) -> float:
    """How much of the query's idf mass a chunk holds: the idf-weighted share of the query's
    words that are among the chunk's words (idf from jieba's general-corpus table, so the same
    on every engine; a word it does not know, English included, counts as rare).

    >>> round(matched_share("熊猫的尾巴", set(tokenize("熊猫吃竹子"))), 2)  # 熊猫 (idf 9.1) of 熊猫, 的 (0.9), 尾巴 (7.9)
    0.51
    """
    matched, total = matched_mass(query, chunk_words)
    return matched / total if total else 0.0


def idf_weights(text: str) -> dict[str, float]:
    """Each distinct word of ``text`` (``tokenize``) with its idf (jieba's table; a word it does
    not know gets the median)."""
    words = [w for w in dict.fromkeys(tokenize(text)) if w.strip()]
    idf, unknown = _idf_of(words)
    return {w: idf.get(w, unknown) for w in words}


def matched_mass(query: str, chunk_words: set[str]) -> tuple[float, float]:
    """(the idf mass of the query's words a chunk holds, the query's whole idf mass)."""
    weights = idf_weights(query)
    return sum(x for w, x in weights.items() if w in chunk_words), sum(weights.values())


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate: one per CJK character, one per 3 bytes of the rest.

    >>> estimate_tokens("熊猫 eats bamboo")  # 2 + 12 bytes / 3
    6
    """
    cjk = len(_CJK.findall(text))
    rest = _CJK.sub("", text)
    return cjk + math.ceil(len(rest.encode("utf-8")) / 3)
