"""Questions scoped to some of a knowledge base's documents (``ragqa ask --kb NAME --doc PATTERN``).

A pattern picks documents by the path the KB keeps them under (``ragqa kb show NAME`` lists them):

- a name or the last parts of a path: ``contract-2024.pdf``, ``contracts/contract-2024.pdf``;
- a folder, by name or path: ``contracts``, ``2024/q3`` (every document under it);
- a glob: ``*`` and ``?`` within one part, ``[abc]``, ``**`` across parts: ``'*2024*'``,
  ``'contracts/*.pdf'``, ``'reports/**/summary.md'``;
- a path from here, home or the root (``./contracts``, ``~/notes``, ``/srv/docs/a.pdf``): that file
  or folder exactly.

Letters match in either case. The documents picked become a file-id filter that the engines apply
inside their own searches (FAISS's id selector, tantivy's term set, Milvus's ``filter``
expression), so a scoped search costs what an unscoped one does, not a search of everything
followed by dropping hits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from ragqa.errors import InputError
from ragqa.paths import kb_path

_GLOB = re.compile(r"[*?\[]")


class DocumentScopeError(InputError):
    """A document pattern that is empty or matches no document of the knowledge base."""


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression a ``--doc`` pattern stands for, searched in a stored path.

    >>> bool(pattern_regex("*2024*").search("/docs/2024/delivery.md"))
    True
    >>> bool(pattern_regex("contracts/*.pdf").search("/docs/contracts/old/a.pdf"))
    False
    """
    text = pattern.strip()
    if not text:
        raise DocumentScopeError("a document pattern is empty (give a document name, a folder or a glob such as '*2024*')")
    if "\x00" in text:
        raise DocumentScopeError(f"document pattern {pattern!r}: a pattern cannot hold a NUL character")
    if not _GLOB.search(text) and _names_disk_path(text):
        return re.compile("^" + re.escape(kb_path(text).rstrip("/") or "/") + "(?:/|$)")
    anchored = text.startswith("/")
    body = _glob_body(text.strip("/") if anchored else text.rstrip("/"))
    return re.compile(("^/" if anchored else "(?:^|/)") + body + "(?:/|$)", re.IGNORECASE)


def _names_disk_path(text: str) -> bool:
    """The pattern is written as a path relative to here or home (``./x``, ``../x``, ``~/x``); a bare
    name such as ``contracts`` matches by its parts wherever the KB's folders were."""
    return text.startswith(("./", "../", "~")) or text in (".", "..")


def _glob_body(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif text.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := _class_end(text, i)) > 0:
            inner = text[i + 1:end]
            negate = inner[:1] in ("!", "^")
            inner = inner[1:] if negate else inner
            inner = re.sub(r"([\\\[&~|])", r"\\\1", inner)  # literal inside the class
            if not negate and inner.startswith("^"):
                inner = "\\" + inner
            out.append("[" + ("^/" if negate else "") + inner + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _class_end(text: str, start: int) -> int:
    """Where the ``[...]`` class opened at ``start`` closes (-1: a literal ``[``)."""
    j = start + 1
    if j < len(text) and text[j] in "!^":
        j += 1
    if j < len(text) and text[j] == "]":
        j += 1
    end = text.find("]", j)
    return end if end > 0 and "/" not in text[start:end] else -1


def select_documents(documents: Iterable[tuple[Any, ...]], patterns: Sequence[str], kb_name: str) -> list[int]:
    """The ids of the ``documents`` ((id, path, ...) of a KB's readable files:
    ``KnowledgeBase.documents``) any of ``patterns`` matches, ascending.

    A pattern that matches no document is an error naming it and how to list the KB's
    documents: a scope that silently matched nothing would answer from nothing."""
    regexes = [(p, pattern_regex(p)) for p in patterns]
    documents = list(documents)
    picked: set[int] = set()
    for pattern, rx in regexes:
        found = {d[0] for d in documents if rx.search(d[1])}
        if not found:
            raise DocumentScopeError(f"no document of knowledge base {kb_name!r} matches {pattern!r} "
                                     f"(list its documents with: ragqa kb show {kb_name})")
        picked |= found
    return sorted(picked)
