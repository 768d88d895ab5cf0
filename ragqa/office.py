"""Legacy Office and WPS Office files -> their XML twins, converted by LibreOffice in headless mode.

Word and PowerPoint 97-2003 files (.doc, .ppt) and WPS Office's Writer and Presentation files
(.wps, .dps: WPS saves the same binary formats under its own names) are converted to .docx and
.pptx, which :mod:`ragqa.loaders` reads as usual. Excel 97-2003 and WPS Spreadsheets workbooks
(.xls, .et) are read by xlrd, which takes milliseconds where LibreOffice takes a second to start;
only one xlrd cannot read is converted to .xlsx.

LibreOffice is Debian's (``libreoffice-writer-nogui``, ``-calc-nogui``, ``-impress-nogui``; pip has
none) and runs as a subprocess per file. Each conversion gets a fresh profile folder: two soffice
processes on one profile collide (the second hands its job to the first, or fails on the lock).
A conversion that runs past CONVERT_TIMEOUT_S is killed with everything it started.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragqa.errors import InputError, MissingDependencyError, ProgramUnavailableError, one_line

log = logging.getLogger(__name__)

# a file's suffix -> (the XML format LibreOffice converts it to, its export filter, the OLE2 streams
# one of which holds the content, the Debian package that reads it)
KINDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    ".doc": (".docx", "MS Word 2007 XML", ("WordDocument",), "libreoffice-writer-nogui"),
    ".wps": (".docx", "MS Word 2007 XML", ("WordDocument",), "libreoffice-writer-nogui"),
    ".ppt": (".pptx", "Impress MS PowerPoint 2007 XML", ("PowerPoint Document",), "libreoffice-impress-nogui"),
    ".dps": (".pptx", "Impress MS PowerPoint 2007 XML", ("PowerPoint Document",), "libreoffice-impress-nogui"),
    ".xls": (".xlsx", "Calc Office Open XML", ("Workbook", "Book"), "libreoffice-calc-nogui"),
    ".et": (".xlsx", "Calc Office Open XML", ("Workbook", "Book"), "libreoffice-calc-nogui"),
}
# The import filter for each stream, so that LibreOffice never falls back to reading a damaged file
# as plain text (it does, for bytes it cannot place: a page of binary garbage). Word 6/95 files
# (WordDocument with a FIB version below Word 97's) and Excel 5/95 ones (Book) are left to its
# detection: Word 97's and Excel 97's filters refuse them.
IMPORT_FILTERS = {"WordDocument": "MS Word 97", "PowerPoint Document": "MS PowerPoint 97", "Workbook": "MS Excel 97"}
WORD97_NFIB = 0xC1  # the FIB version of Word 97; later Word versions write more
CONVERT_TIMEOUT_S = 300  # one file; a LibreOffice that hangs on a file must not stop an index run


def soffice_path() -> str | None:
    """The LibreOffice program: $RAGQA_SOFFICE if set, else soffice (or libreoffice) on PATH; None
    if there is none."""
    given = os.environ.get("RAGQA_SOFFICE")
    if given:
        return given if os.access(given, os.X_OK) and not os.path.isdir(given) else None
    return shutil.which("soffice") or shutil.which("libreoffice")


def import_filter(path: Path, data: bytes, suffix: str) -> str | None:
    """The LibreOffice import filter for this OLE2 file (None: let LibreOffice tell), or an
    InputError when the container is damaged or holds no content stream of its kind."""
    try:
        import olefile
    except ImportError:
        raise MissingDependencyError("olefile") from None
    streams = KINDS[suffix][2]
    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
        found = next((s for s in streams if ole.exists(s)), None)
        content = ole.openstream(found).read() if found else b""
        if found and len(content) < ole.get_size(found):  # olefile returns what is there of a cut stream
            raise InputError(f"{path}: the {suffix} file is damaged (it is cut short); get a fresh copy")
    except InputError:
        raise
    except Exception as exc:  # olefile raises several types on a truncated or garbled container
        # its own OleFileError says what is wrong; others (a ValueError from a garbled size) do not
        reason = one_line(exc, 100) if type(exc).__name__ == "OleFileError" else "its OLE2 container is garbled"
        raise InputError(f"{path}: the {suffix} file is damaged ({reason}); get a fresh copy") from None
    if found is None:
        raise InputError(f"{path}: not a {suffix} file LibreOffice can read (no {' or '.join(streams)} stream)")
    if found == "WordDocument" and int.from_bytes(content[2:4], "little") < WORD97_NFIB:
        return None
    return IMPORT_FILTERS.get(found)


@contextmanager
def converted(path: Path, data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` (the file at ``path``) converted by LibreOffice to its XML twin, in a temporary
    folder that is removed afterwards. One-line InputErrors for a missing LibreOffice (naming the
    package), a damaged file, a failed conversion and a timeout."""
    target, export, _, deb = KINDS[suffix]
    exe = soffice_path()
    if exe is None:
        raise ProgramUnavailableError(
            f"{path}: reading {suffix} files needs LibreOffice, which is not installed "
            f"(apt install {deb}, or `make setup`)")
    infilter = import_filter(path, data, suffix)
    with tempfile.TemporaryDirectory(prefix="ragqa-office-") as tmp:
        source = Path(tmp) / f"source{suffix}"  # the bytes may be an upload; a plain name is safe
        source.write_bytes(data)
        out = Path(tmp) / "out"
        command = [exe, "--headless", "--norestore", "--nologo", "--nodefault", "--nolockcheck",
                   f"-env:UserInstallation={(Path(tmp) / 'profile').as_uri()}",
                   *([f"--infilter={infilter}"] if infilter else []),
                   "--convert-to", f"{target.lstrip('.')}:{export}", "--outdir", str(out), str(source)]
        t = time.perf_counter()
        code, stderr = _run(command, CONVERT_TIMEOUT_S, path)
        result = out / f"source{target}"
        if not result.is_file():
            if code != 0:
                raise InputError(f"{path}: LibreOffice failed converting it (exit {code}: {_reason(stderr)})")
            raise InputError(f"{path}: LibreOffice cannot open this {suffix} file (it is damaged, or "
                             f"LibreOffice lacks the part that reads it: apt install {deb})")
        log.info("%s: converted to %s by LibreOffice in %.1f s", path, target, time.perf_counter() - t)
        yield result


def _run(command: list[str], timeout_s: float, path: Path) -> tuple[int, str]:
    """Run soffice in its own process group; -> (exit status, stderr). On timeout the whole group
    (the soffice script, oosplash, soffice.bin) is killed."""
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot run LibreOffice ({command[0]}: {exc.strerror or exc})") from None
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise InputError(f"{path}: LibreOffice did not finish converting it in {timeout_s:g} s "
                         "(a damaged or very large file?)") from None
    except BaseException:  # Ctrl-C or a cancelled job: no soffice is left behind
        _kill_group(proc)
        raise
    return proc.returncode, stderr.decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _reason(stderr: str) -> str:
    """What LibreOffice said, without its javaldx warning and crash stack frames."""
    lines = [line.strip() for line in stderr.splitlines()]
    said = [line for line in lines if line and not line.startswith(("Warning: failed to launch javaldx", "/", "Stack:"))]
    return one_line(" ".join(said[:2]), 160) if said else "no message"
