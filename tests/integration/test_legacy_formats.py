"""Legacy Office and WPS files read through the real LibreOffice: documents written here with
python-docx, python-pptx and openpyxl are saved by LibreOffice as Word/PowerPoint/Excel 97-2003
files, read back through ragqa (``load_file`` and ``ragqa index``), and must come out with the same
text, headings, table rows and slide/sheet positions as the XML originals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import docfixtures as fx
from ragqa.errors import InputError
from ragqa.loaders import load_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("soffice") is None,
                       reason="needs LibreOffice (`make setup` installs libreoffice-writer/calc/impress-nogui)"),
]

DOCX = [("heading", "第一章 西湖龙井"), ("para", "龙井茶产于杭州西湖，明前茶最为名贵，香气清高。"),
        ("table", [["商品", "价格", "产地"], ["龙井", "320", "杭州"], ["碧螺春", "280", "苏州"]]), ("page", None),
        ("heading", "第二章 黄山毛峰"), ("para", "黄山毛峰产于安徽黄山，以奇松、怪石、云海闻名的山中。")]
SLIDES = [("天文社简介", "天文社每周五晚上在图书馆三楼聚会。"), ("马洛谷天文台", "天文台的望远镜每周五晚上向游客开放。"),
          ("入会方式", "填写报名表并交纳五十元会费。")]
SHEETS = {"订单": [["单号", "客户", "金额"], ["A-17", "李伟", 860]],
          "库存": [["书名", "数量", "仓库"], ["红楼梦", 12, "东区"], ["西游记", 7, "西区"]]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path: the XML originals, LibreOffice's 97-2003 saves of them, and those saves under
    WPS Office's names. WPS Writer, Presentation and Spreadsheets save in "compatible mode" exactly
    these Microsoft binary formats (.doc/.ppt/.xls) under .wps/.dps/.et, which is what the copies are."""
    root = tmp_path_factory.mktemp("legacy")
    xml = root / "xml"
    xml.mkdir()
    out = {"report.docx": fx.docx_file(xml / "report.docx", DOCX),
           "deck.pptx": fx.pptx_file(xml / "deck.pptx", SLIDES),
           "stock.xlsx": fx.xlsx_file(xml / "stock.xlsx", SHEETS)}
    legacy = root / "legacy"
    for name, fmt, wps in (("report.docx", "doc:MS Word 97", ".wps"), ("deck.pptx", "ppt:MS PowerPoint 97", ".dps"),
                           ("stock.xlsx", "xls:MS Excel 97", ".et")):
        made = fx.soffice_convert(out[name], fmt, legacy)
        out[made.name] = made
        out[made.stem + wps] = Path(shutil.copy(made, legacy / (made.stem + wps)))
    return out


def text_of(path: Path) -> list[tuple[str | None, str]]:
    return [(d.metadata.get("page_label"), d.page_content) for d in load_file(path)]


@pytest.mark.parametrize("name", ["report.doc", "report.wps"])
def test_a_word_file_reads_as_its_docx_did(files: dict[str, Path], name: str) -> None:
    docs = load_file(files[name])
    assert [d.metadata for d in docs] == [{"source": str(files[name])}]
    text = docs[0].page_content
    assert text.startswith("# 第一章 西湖龙井\n\n龙井茶产于杭州西湖")
    assert "商品: 碧螺春 | 价格: 280 | 产地: 苏州" in text and "# 第二章 黄山毛峰" in text
    assert text_of(files[name]) == text_of(files["report.docx"])


@pytest.mark.parametrize("name", ["deck.ppt", "deck.dps"])
def test_a_presentation_keeps_its_slides(files: dict[str, Path], name: str) -> None:
    docs = load_file(files[name])
    assert [(d.metadata["source"], d.metadata["page"], d.metadata["page_label"]) for d in docs] == [
        (str(files[name]), k, f"slide {k}") for k in (1, 2, 3)]
    assert docs[1].page_content.startswith("# 马洛谷天文台") and "望远镜每周五晚上向游客开放" in docs[1].page_content
    # LibreOffice marks a body placeholder's lines as a list: "- " is the only difference
    assert [(label, t.replace("\n\n- ", "\n\n")) for label, t in text_of(files[name])] == text_of(files["deck.pptx"])


@pytest.mark.parametrize("name", ["stock.xls", "stock.et"])
def test_a_workbook_keeps_its_sheets(files: dict[str, Path], name: str) -> None:
    docs = load_file(files[name])
    assert [(d.metadata["page"], d.metadata["page_label"]) for d in docs] == [(1, "sheet 订单"), (2, "sheet 库存")]
    assert docs[1].page_content == "# 库存\n\n书名: 红楼梦 | 数量: 12 | 仓库: 东区\n\n书名: 西游记 | 数量: 7 | 仓库: 西区"
    assert text_of(files[name]) == text_of(files["stock.xlsx"])


def test_two_conversions_at_once_both_finish(files: dict[str, Path]) -> None:
    results: dict[str, list] = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, load_file(files[n])))
               for n in ("report.doc", "deck.dps")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results["report.doc"]) == 1 and len(results["deck.dps"]) == 3


def test_a_password_protected_doc_is_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    import olefile

    locked = Path(shutil.copy(files["report.doc"], tmp_path / "locked.doc"))
    ole = olefile.OleFileIO(str(locked), write_mode=True)
    fib = bytearray(ole.openstream("WordDocument").read())
    fib[0x0B] |= 0x01  # FibBase.fEncrypted: what Word sets when the file has an open password
    ole.write_stream("WordDocument", bytes(fib))
    ole.close()
    with pytest.raises(InputError, match=r"locked\.doc: the document is password-protected"):
        load_file(locked)


@pytest.mark.parametrize("name", ["report.doc", "deck.ppt"])
def test_a_truncated_file_is_one_line(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    cut = tmp_path / name
    cut.write_bytes(files[name].read_bytes()[: files[name].stat().st_size // 2])
    with pytest.raises(InputError) as err:
        load_file(cut)
    assert str(err.value).startswith(f"{cut}: the {cut.suffix} file is damaged (") and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "RAGQA_CACHE_DIR": str(cache), "RAGQA_DATA_DIR": str(cache / "data"), "RAGQA_TEMPERATURE": "0"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ragqa", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=600)

    return run


def test_the_cli_indexes_every_legacy_file_with_its_positions(files: dict[str, Path], cli) -> None:
    legacy = [n for n in files if Path(n).suffix in {".doc", ".wps", ".ppt", ".dps", ".xls", ".et"}]
    proc = cli("index", *(str(files[n]) for n in legacy), "--kb", "legacy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("legacy: added 6, updated 0, unchanged 0, removed 0, failed 0;")
    for question, names, where in (("马洛谷天文台的望远镜什么时候向游客开放？", {"deck.ppt", "deck.dps"}, "slide 2"),
                                   ("《西游记》还有几本库存？", {"stock.xls", "stock.et"}, "sheet 库存")):
        proc = cli("ask", "--kb", "legacy", question, "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        top = json.loads(proc.stdout)["sources"][0]
        assert Path(top["source"]).name in names and top["page_label"] == where, top


def test_without_libreoffice_the_cli_skips_the_file_naming_the_package(files: dict[str, Path], cli, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(files["report.doc"], folder)
    (folder / "notes.txt").write_text("熊猫主要吃竹子。", "utf-8")
    proc = cli("index", str(folder), "--kb", "mixed", RAGQA_SOFFICE=str(tmp_path / "no-such-soffice"))
    assert proc.returncode == 1
    assert "report.doc: reading .doc files needs LibreOffice, which is not installed (apt install libreoffice-writer-nogui" in proc.stderr
    assert "mixed: added 1, updated 0, unchanged 0, removed 0, failed 1;" in proc.stderr
