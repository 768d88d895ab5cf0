"""The errors ragqa raises. Each message says what was wrong and what to do about it."""

from __future__ import annotations


class RagqaError(Exception):
    """Base class: a problem the user can fix. The CLI prints it as one line, no traceback."""

    exit_code = 1


class InputError(RagqaError):
    """A document, question or argument the user gave cannot be used."""

    exit_code = 2


class NoReadableDocumentsError(InputError):
    """Every document given was skipped as unreadable (the message lists why)."""


class ModelError(RagqaError):
    """A model name or path cannot be resolved or loaded."""

    exit_code = 3


class DiskFull(RagqaError):
    """A write failed because the disk (or a quota) is full: nothing was half-written; free space and
    it works again, no restart needed (HTTP 507)."""


def is_disk_full(exc: BaseException | str) -> bool:
    """Whether an error (an OSError, SQLite's or tantivy's text) says the disk is full."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "storagefull", "disk is full", "quota exceeded"))


class ModelTimeout(ModelError):
    """The model server stayed silent past a timeout (``request_timeout``, ``first_token_timeout``): HTTP 504."""


class ShuttingDown(RagqaError):
    """The server is stopping: work it has not started is left for its next start (HTTP 503)."""


class ConfigError(RagqaError):
    """A setting, config file or chat-format file is invalid."""

    exit_code = 2


class MissingDependencyError(RagqaError):
    """An optional library is not installed."""

    exit_code = 4

    def __init__(self, module: str, extra: str | None = None) -> None:
        hint = f"pip install 'ragqa[{extra}]'" if extra else f"pip install {module}"
        super().__init__(f"this needs the Python package {module!r}, which is not installed ({hint})")


class ProgramUnavailableError(MissingDependencyError, InputError):
    """A file needs a program ragqa runs that is not installed (Tesseract, LibreOffice); the message
    names what to install.

    An InputError too: inside a folder the file is skipped with a note, the others are read."""

    def __init__(self, message: str) -> None:
        RagqaError.__init__(self, message)


class OcrUnavailableError(ProgramUnavailableError):
    """A page or image needs OCR and Tesseract (or one of its language models) is not installed."""


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """An exception (or a message) on one line, whitespace runs folded; cut to ``limit`` characters
    with an ellipsis. The one place ragqa flattens a library's multi-line message for a person.

    >>> one_line(ValueError("bad\\n   value"))
    'bad value'
    >>> one_line(KeyError())
    'KeyError'
    """
    flat = " ".join(str(exc).split()) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"
