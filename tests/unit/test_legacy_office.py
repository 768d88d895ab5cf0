"""Legacy Office and WPS files (.doc .wps .ppt .dps, and .xls .et when xlrd cannot read one) read
through LibreOffice: here a fake soffice (a script that writes what LibreOffice would, or hangs, or
crashes) stands in for it, so every failure path is checked in milliseconds. The real LibreOffice
reads real files in tests/integration/test_legacy_formats.py."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import docfixtures as fx
from ragqa import office
from ragqa.errors import InputError, MissingDependencyError, ProgramUnavailableError
from ragqa.loaders import SUPPORTED_SUFFIXES, load_file, loader_id

FAKE_SOFFICE = """#!{python}
import json, os, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_SOFFICE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
mode = os.environ.get("FAKE_SOFFICE_MODE", "convert")
out, source = Path(args[args.index("--outdir") + 1]), Path(args[-1])
target = args[args.index("--convert-to") + 1].split(":")[0]
if mode == "convert":
    time.sleep(float(os.environ.get("FAKE_SOFFICE_DELAY", "0")))
    out.mkdir(parents=True, exist_ok=True)
    made = Path(os.environ["FAKE_SOFFICE_" + target.upper()]).read_bytes()
    (out / (source.stem + "." + target)).write_bytes(made)
    print("convert " + str(source) + " -> " + str(out / (source.stem + "." + target)))
elif mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(os.environ["FAKE_SOFFICE_PIDS"]).write_text(str(os.getpid()) + " " + str(child.pid))
    time.sleep(120)
elif mode == "crash":
    print("Warning: failed to launch javaldx - java may not function correctly", file=sys.stderr)
    print("Unspecified Application Error\\n\\nFatal exception: Signal 6\\nStack:", file=sys.stderr)
    print("/usr/lib/libreoffice/program/libuno_sal.so.3(+0x37722)[0x7fe368d56722]", file=sys.stderr)
    sys.exit(134)
elif mode == "noload":
    print("Error: source file could not be loaded", file=sys.stderr)
"""

DOCX_BLOCKS = [("heading", "第一章 西湖"), ("para", "龙井茶产于杭州西湖，明前茶最为名贵。"),
               ("table", [["商品", "价格"], ["龙井", "320"]]), ("page", None),
               ("heading", "第二章 黄山"), ("para", "黄山以奇松、怪石、云海闻名。")]


@pytest.fixture
def fake_soffice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """RAGQA_SOFFICE -> a fake soffice; what it "converts" to is a .docx/.pptx/.xlsx written here.
    ``fake.calls()``: the argument lists it was run with."""
    made = tmp_path / "made"
    made.mkdir()
    exe = tmp_path / "bin" / "soffice"
    exe.parent.mkdir()
    exe.write_text(FAKE_SOFFICE.format(python=sys.executable), "utf-8")
    exe.chmod(0o755)
    log = tmp_path / "soffice-calls.jsonl"
    monkeypatch.setenv("RAGQA_SOFFICE", str(exe))
    monkeypatch.setenv("FAKE_SOFFICE_LOG", str(log))
    monkeypatch.setenv("FAKE_SOFFICE_DOCX", str(fx.docx_file(made / "made.docx", DOCX_BLOCKS)))
    monkeypatch.setenv("FAKE_SOFFICE_PPTX", str(fx.pptx_file(made / "made.pptx", [
        ("天文社", "每周五晚上聚会。"), ("天文台", "望远镜每周五向游客开放。")])))
    monkeypatch.setenv("FAKE_SOFFICE_XLSX", str(fx.xlsx_file(made / "made.xlsx", {
        "订单": [["单号", "客户"], ["A-17", "李伟"]], "库存": [["书名", "数量"], ["红楼梦", 12]]})))

    class Fake:
        path = exe

        @staticmethod
        def calls() -> list[list[str]]:
            return [json.loads(line) for line in log.read_text("utf-8").splitlines()] if log.exists() else []

    return Fake


@pytest.fixture
def no_soffice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.delenv("RAGQA_SOFFICE", raising=False)
    monkeypatch.setenv("PATH", str(empty))


def word_doc(path: Path, *, encrypted: bool = False) -> Path:
    """An OLE2 file shaped like a Word 97-2003 document (what Word and WPS Writer write)."""
    return fx.ole2_file(path, {"WordDocument": fx.word97_stream(encrypted), "1Table": b"\x00" * 64})


def ppt_file(path: Path) -> Path:
    return fx.ole2_file(path, {"PowerPoint Document": b"\x00" * 64, "Current User": b"\x00" * 32})


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 300, message
    return message


def test_the_legacy_and_wps_types_are_supported() -> None:
    assert {".doc", ".wps", ".ppt", ".dps", ".xls", ".et"} <= SUPPORTED_SUFFIXES


@pytest.mark.parametrize("name", ["report.doc", "report.wps"])
def test_a_word_file_is_converted_to_docx_and_read_with_its_headings_and_table(fake_soffice, tmp_path: Path, name: str) -> None:
    path = word_doc(tmp_path / name)
    [doc] = load_file(path)
    assert doc.metadata == {"source": str(path)}
    assert doc.page_content.startswith("# 第一章 西湖\n\n龙井茶产于杭州西湖")
    assert "商品: 龙井 | 价格: 320" in doc.page_content and "# 第二章 黄山" in doc.page_content
    [args] = fake_soffice.calls()
    assert args[:2] == ["--headless", "--norestore"]
    assert "--infilter=MS Word 97" in args  # never LibreOffice's plain-text fallback
    assert args[args.index("--convert-to") + 1] == "docx:MS Word 2007 XML"
    profile = next(a for a in args if a.startswith("-env:UserInstallation=file:///"))
    folder = Path(profile.split("file://", 1)[1]).parent
    assert not folder.exists()  # the converted copy and the profile are gone afterwards


@pytest.mark.parametrize("name", ["deck.ppt", "deck.dps"])
def test_a_presentation_keeps_its_slides(fake_soffice, tmp_path: Path, name: str) -> None:
    path = ppt_file(tmp_path / name)
    docs = load_file(path)
    assert [(d.metadata["source"], d.metadata["page_label"]) for d in docs] == [(str(path), "slide 1"), (str(path), "slide 2")]
    assert docs[1].page_content.startswith("# 天文台") and "望远镜每周五向游客开放" in docs[1].page_content
    [args] = fake_soffice.calls()
    assert "--infilter=MS PowerPoint 97" in args and args[args.index("--convert-to") + 1].startswith("pptx:")


def test_conversions_at_the_same_time_use_their_own_profiles(fake_soffice, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SOFFICE_DELAY", "0.5")  # both run at once
    paths = [word_doc(tmp_path / f"r{k}.doc") for k in range(2)]
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda k=k: results.setdefault(k, load_file(paths[k]))) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[k][0].metadata["source"] for k in range(2)] == [str(p) for p in paths]
    profiles = {a for args in fake_soffice.calls() for a in args if a.startswith("-env:UserInstallation=")}
    assert len(profiles) == 2


def test_without_libreoffice_the_file_is_refused_naming_the_package(no_soffice, tmp_path: Path) -> None:
    for path, deb in ((word_doc(tmp_path / "a.doc"), "libreoffice-writer-nogui"),
                      (ppt_file(tmp_path / "b.dps"), "libreoffice-impress-nogui")):
        with pytest.raises(ProgramUnavailableError) as err:
            load_file(path)
        assert f"needs LibreOffice, which is not installed (apt install {deb}" in one_line(err, path)
        assert isinstance(err.value, InputError) and isinstance(err.value, MissingDependencyError)


def test_without_libreoffice_a_folder_still_indexes_and_the_file_is_read_once_it_is_installed(
        no_soffice, make_pipeline, tmp_path: Path, monkeypatch, request) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("熊猫主要吃竹子。", "utf-8")
    word_doc(folder / "report.doc")
    pipeline = make_pipeline()
    report = pipeline.ingest("kb", [folder])
    assert report.added == 1 and len(report.failed) == 1
    assert "report.doc: reading .doc files needs LibreOffice" in report.failed[0]
    assert "apt install libreoffice-writer-nogui" in report.failed[0]
    request.getfixturevalue("fake_soffice")  # now it is "installed": the failed file is read again
    report = pipeline.ingest("kb", [folder])
    assert (report.added, report.updated, report.unchanged, report.failed) == (0, 1, 1, [])


def test_a_hanging_libreoffice_is_killed_with_everything_it_started(fake_soffice, tmp_path: Path, monkeypatch) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_SOFFICE_MODE", "hang")
    monkeypatch.setenv("FAKE_SOFFICE_PIDS", str(pids))
    monkeypatch.setattr(office, "CONVERT_TIMEOUT_S", 1.5)
    path = word_doc(tmp_path / "slow.doc")
    t = time.monotonic()
    with pytest.raises(InputError) as err:
        load_file(path)
    assert time.monotonic() - t < 15
    assert one_line(err, path).endswith("LibreOffice did not finish converting it in 1.5 s (a damaged or very large file?)")
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    """Running (a zombie, whose parent has not reaped it yet, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    for _ in range(50):  # the kill is asynchronous: give the kernel a moment
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in {"Z", "X"}:
            return False
        time.sleep(0.05)
    return True


def test_a_crash_is_one_line_without_the_stack(fake_soffice, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SOFFICE_MODE", "crash")
    path = word_doc(tmp_path / "crash.doc")
    with pytest.raises(InputError) as err:
        load_file(path)
    assert one_line(err, path) == (f"{path}: LibreOffice failed converting it (exit 134: Unspecified Application "
                                   "Error Fatal exception: Signal 6)")


def test_a_file_libreoffice_cannot_open_is_one_line(fake_soffice, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SOFFICE_MODE", "noload")  # exit status 0, but no file written
    path = ppt_file(tmp_path / "odd.ppt")
    with pytest.raises(InputError) as err:
        load_file(path)
    assert "LibreOffice cannot open this .ppt file (it is damaged" in one_line(err, path)


def test_a_password_protected_file_is_refused_before_libreoffice_runs(fake_soffice, tmp_path: Path) -> None:
    from msoffcrypto.format.ooxml import OOXMLFile

    locked_doc = word_doc(tmp_path / "locked.doc", encrypted=True)  # Word 97's fEncrypted flag
    pptx = fx.pptx_file(tmp_path / "plain.pptx", [("标题", "正文")])
    locked_ppt = tmp_path / "locked.dps"  # PowerPoint 2007+ with a password: an OLE2 container too
    with open(pptx, "rb") as src, open(locked_ppt, "wb") as out:
        OOXMLFile(src).encrypt("secret", out)
    for path in (locked_doc, locked_ppt):
        with pytest.raises(InputError) as err:
            load_file(path)
        assert "the document is password-protected" in one_line(err, path)
    assert fake_soffice.calls() == []


def test_damaged_files_are_refused_before_libreoffice_runs(fake_soffice, tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.doc"
    random_bytes.write_bytes(os.urandom(5000))
    truncated = tmp_path / "truncated.ppt"
    truncated.write_bytes(ppt_file(tmp_path / "whole.ppt").read_bytes()[:2000])  # the stream cut short
    workbook_named_doc = tmp_path / "sheet.wps"
    workbook_named_doc.write_bytes(fx.xls_file(tmp_path / "s.xls", {"S": [["a"]]}).read_bytes())
    cases = [(random_bytes, "not a .doc file (not a Word 97-2003 document)"),
             (truncated, "the .ppt file is damaged ("),
             (workbook_named_doc, "not a .wps file LibreOffice can read (no WordDocument stream)")]
    for path, reason in cases:
        with pytest.raises(InputError) as err:
            load_file(path)
        assert reason in one_line(err, path)
    assert fake_soffice.calls() == []


def test_how_a_legacy_file_is_read_is_part_of_its_loader_id(no_soffice, tmp_path: Path, request) -> None:
    missing = loader_id(Path("a.doc"))
    xls_without = loader_id(Path("a.xls"))
    request.getfixturevalue("fake_soffice")
    assert missing != loader_id(Path("a.doc")) != loader_id(Path("a.docx"))
    assert loader_id(Path("a.wps")) != loader_id(Path("a.doc"))
    # .xls is read by xlrd either way: installing LibreOffice must not re-read every workbook
    assert xls_without == loader_id(Path("a.xls")) == "xls:unstructured/3"
    assert loader_id(Path("a.et")) == "et:unstructured/3"


def test_a_wps_spreadsheet_is_read_by_xlrd_without_libreoffice(no_soffice, tmp_path: Path) -> None:
    path = tmp_path / "stock.et"  # WPS Spreadsheets saves an Excel 97-2003 workbook under this name
    path.write_bytes(fx.xls_file(tmp_path / "s.xls", {"库存": [["书名", "数量"], ["红楼梦", 12]]}).read_bytes())
    [doc] = load_file(path)
    assert doc.metadata == {"source": str(path), "page": 1, "page_label": "sheet 库存"}
    assert doc.page_content == "# 库存\n\n书名: 红楼梦 | 数量: 12"


def test_a_workbook_xlrd_cannot_read_goes_to_libreoffice(fake_soffice, tmp_path: Path) -> None:
    path = fx.ole2_file(tmp_path / "odd.xls", {"Workbook": b"\x00" * 64})  # no BIFF records: xlrd gives up
    docs = load_file(path)
    assert [(d.metadata["source"], d.metadata["page_label"]) for d in docs] == [(str(path), "sheet 订单"), (str(path), "sheet 库存")]
    assert docs[1].page_content == "# 库存\n\n书名: 红楼梦 | 数量: 12"
    [args] = fake_soffice.calls()
    assert "--infilter=MS Excel 97" in args and args[args.index("--convert-to") + 1].startswith("xlsx:")


@pytest.mark.parametrize("libreoffice", ["missing", "fails"])
def test_when_neither_reads_a_workbook_xlrds_reason_is_given(tmp_path: Path, monkeypatch, request, libreoffice: str) -> None:
    if libreoffice == "missing":
        request.getfixturevalue("no_soffice")
    else:
        request.getfixturevalue("fake_soffice")
        monkeypatch.setenv("FAKE_SOFFICE_MODE", "noload")
    path = fx.ole2_file(tmp_path / "odd.et", {"Workbook": b"\x00" * 64})
    with pytest.raises(InputError) as err:
        load_file(path)
    assert "cannot read this .et file (" in one_line(err, path) and "LibreOffice" not in str(err.value)
