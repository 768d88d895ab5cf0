"""jieba's search-mode segmentation, ready in milliseconds: its dictionary as a trie file.

jieba keeps its prefix dictionary (349k words with their frequencies, and every prefix of them)
in a Python dict that each process rebuilds from a marshal cache: 0.4-0.9 s before the first word,
paid by every ``ragqa ask`` and every indexing run. Here the words and frequencies are written once
into one file under the cache folder (a marisa trie, then a frequency per word id) and read in a
few milliseconds. jieba's own code does everything else: ``cut`` and ``cut_for_search``, the HMM
for words it does not know (``jieba.finalseg``), the search mode's 2- and 3-grams. Only the two
methods that read the dictionary are replaced: ``get_DAG`` asks the trie, in one call per position,
for every dictionary word starting there (jieba walks its dict one prefix at a time), and
``calc`` takes those words' frequencies from it. The words are jieba's by construction (and checked
against jieba on every context of the shared CMRC2018, DRCD and SQuAD sets; see tests/unit).

Without marisa-trie, where the cache folder cannot be written, or when this process has already
loaded jieba's own dictionary (someone added words to it), jieba itself segments.
"""

from __future__ import annotations

import array
import contextlib
import logging
import math
import struct
import sys
from pathlib import Path
from typing import Any

from ragqa.errors import MissingDependencyError

log = logging.getLogger(__name__)

TRIE_FORMAT = 1
_MAGIC = b"RQJTRIE1"
_HEADER = struct.Struct("<8sQIIQ")  # magic, jieba's total frequency, longest word, words, trie bytes


def jieba_module() -> Any:
    """jieba, quiet (it announces its dictionary load on stderr otherwise)."""
    try:
        import jieba
    except ImportError:
        raise MissingDependencyError("jieba") from None
    jieba.setLogLevel(logging.WARNING)
    return jieba


def _dictionary() -> Path:
    jieba = jieba_module()
    return Path(jieba.__file__).parent / jieba.DEFAULT_DICT_NAME


def segmentation_id() -> str:
    """What the words depend on: jieba's version and its dictionary (by size, as the idf cache).
    The same whichever way the dictionary is loaded, since the segmentation is the same.

    >>> segmentation_id()  # doctest: +SKIP
    'jieba 0.42.1 dict 5071852'
    """
    jieba = jieba_module()
    return f"jieba {getattr(jieba, '__version__', '0')} dict {_dictionary().stat().st_size}"


def load_segmenter() -> Any:
    """Something with jieba's ``lcut_for_search``: the trie-backed one when it can be had."""
    jieba = jieba_module()
    if jieba.dt.initialized:  # jieba's own dictionary is loaded already (and may have words added)
        return jieba
    try:
        import marisa_trie  # noqa: F401
    except ImportError:
        log.info("marisa-trie is not installed; jieba loads its own dictionary (~0.5 s)")
        return jieba
    try:
        return _load_or_build(_trie_path())
    except (OSError, ValueError, RuntimeError) as exc:
        log.info("jieba's dictionary trie is not available (%s); jieba loads its own dictionary", exc)
        return jieba


def _trie_path() -> Path:
    from ragqa.paths import default_cache_dir

    version = getattr(jieba_module(), "__version__", "0").replace("-", "_")
    # jieba's version and the dictionary's size, not its mtime: every new venv copies the file anew
    return default_cache_dir() / f"jieba-trie-{TRIE_FORMAT}-{version}-{_dictionary().stat().st_size}.bin"


def _load_or_build(path: Path) -> Any:
    """The trie file at ``path``, made first when it is missing or damaged; jieba's own
    Tokenizer (loaded for the making) when the file cannot be written."""
    try:
        return TrieTokenizer(path.read_bytes())
    except OSError:  # not made yet (or unreadable: made again below, or jieba's own is used)
        pass
    except ValueError as exc:  # damaged or from another build: made anew
        log.info("%s: %s; building it again", path, exc)
    from ragqa.paths import atomic_path

    source = _jieba_tokenizer()
    data = trie_bytes(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob("jieba-trie-*.bin"):  # earlier versions' files (2.6 MB each)
            if old != path:
                with contextlib.suppress(OSError):
                    old.unlink()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        log.info("jieba's dictionary trie cannot be written to %s (%s); jieba segments", path, exc)
        return source
    log.info("jieba's dictionary written as a trie to %s (%d bytes)", path, len(data))
    return TrieTokenizer(data)


def _jieba_tokenizer() -> Any:
    """A jieba Tokenizer with its default dictionary loaded (from jieba's own cache)."""
    source = jieba_module().Tokenizer()
    source.initialize()
    return source


def build_trie() -> bytes:
    """jieba's default dictionary as trie-file bytes."""
    return trie_bytes(_jieba_tokenizer())


def trie_bytes(source: Any) -> bytes:
    """A loaded jieba Tokenizer's prefix dictionary as trie-file bytes: a header, the marisa trie
    of its words (not the prefixes that are no word), each word id's frequency as 4 bytes."""
    import marisa_trie

    words = [w for w, f in source.FREQ.items() if f]  # a prefix that is no word has 0
    trie = marisa_trie.Trie(words)
    freqs = array.array("I", bytes(4 * len(trie)))
    if freqs.itemsize != 4:
        raise RuntimeError("no 4-byte unsigned array type on this platform")
    for w in words:
        freqs[trie[w]] = source.FREQ[w]
    if sys.byteorder != "little":
        freqs.byteswap()
    blob = trie.tobytes()
    header = _HEADER.pack(_MAGIC, source.total, max(map(len, words)), len(trie), len(blob))
    return header + blob + freqs.tobytes()


class _Frequencies:
    """The read-only part of jieba's ``FREQ`` dict that its code still uses: ``get``. A prefix that
    is no word gives None where jieba's dict gives 0; jieba only tests them for truth."""

    __slots__ = ("_freqs", "_id")

    def __init__(self, trie: Any, freqs: array.array) -> None:
        self._id, self._freqs = trie.get, freqs

    def get(self, word: str, default: Any = None) -> Any:
        i = self._id(word)
        return default if i is None else self._freqs[i]


class _DAG(dict):
    """jieba's DAG (start -> the ends of the words there), carrying each word's frequency for ``calc``."""

    __slots__ = ("freq",)


def _tokenizer_base() -> type:
    return jieba_module().Tokenizer


class TrieTokenizer(_tokenizer_base()):  # type: ignore[misc]
    """``jieba.Tokenizer`` over a trie file's bytes; read-only (no ``add_word``)."""

    def __init__(self, data: bytes) -> None:
        import marisa_trie

        super().__init__()
        if len(data) < _HEADER.size:
            raise ValueError("not a jieba trie file (too short)")
        magic, total, longest, count, size = _HEADER.unpack_from(data)
        start = _HEADER.size
        if magic != _MAGIC or len(data) != start + size + 4 * count:
            raise ValueError("not a jieba trie file, or a truncated one")
        trie = marisa_trie.Trie().frombytes(data[start:start + size])
        freqs = array.array("I")
        freqs.frombytes(data[start + size:])
        if sys.byteorder != "little":
            freqs.byteswap()
        if len(trie) != count or len(freqs) != count:
            raise ValueError("the trie and its frequencies disagree")
        self._prefixes = trie.iter_prefixes_with_ids
        self._freqs = freqs
        self._longest = longest
        self.FREQ = _Frequencies(trie, freqs)
        self.total = total
        self.initialized = True

    def get_DAG(self, sentence: str) -> _DAG:
        """jieba's DAG: for each position, the last index of every dictionary word starting there
        (or the position itself when none does)."""
        dag = _DAG()
        freq: dict[tuple[int, int], int] = {}
        dag.freq = freq
        prefixes, freqs, longest = self._prefixes, self._freqs, self._longest
        for k in range(len(sentence)):
            ends = []
            for word, i in prefixes(sentence[k:k + longest]):
                x = k + len(word) - 1
                ends.append(x)
                freq[k, x] = freqs[i]
            dag[k] = ends or [k]
        return dag

    def calc(self, sentence: str, DAG: _DAG, route: dict[int, tuple[float, int]]) -> None:
        """jieba's ``calc``, the same float operations in the same order: the best route from each
        position by the words' log frequencies (1 for a character that is no word)."""
        n = len(sentence)
        route[n] = (0, 0)
        logtotal = math.log(self.total)
        freq = DAG.freq
        for idx in range(n - 1, -1, -1):
            route[idx] = max((math.log(freq.get((idx, x)) or 1) - logtotal + route[x + 1][0], x)
                             for x in DAG[idx])
