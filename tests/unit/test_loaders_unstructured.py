"""PDF, DOCX and HTML through the real unstructured partitioners (text layer only, no OCR).

Importing unstructured takes a few seconds, so every test that triggers it lives in this module.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.loaders import load_documents, load_file

pytest.importorskip("unstructured")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("partitioned")

    html = folder / "page.html"
    html.write_text(
        "<html><head><title>ignored title</title></head><body>"
        "<h1>熊猫档案</h1><p>熊猫主要吃竹子。它们生活在四川。</p>"
        "<p>Pandas spend most of the day eating.</p></body></html>",
        "utf-8",
    )

    import docx

    document = docx.Document()
    document.add_heading("合同摘要", level=1)
    document.add_paragraph("本合同的有效期为三年。")
    document.add_paragraph("The contract is valid for three years.")
    word = folder / "contract.docx"
    document.save(word)

    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = folder / "report.pdf"
    c = canvas.Canvas(str(pdf))
    c.setFont("STSong-Light", 14)
    c.drawString(72, 720, "第一页：熊猫吃竹子。")
    c.showPage()
    c.setFont("Helvetica", 14)
    c.drawString(72, 720, "Page two: pandas sleep a lot.")
    c.showPage()
    c.setFont("STSong-Light", 14)
    c.drawString(72, 720, "第三页：成都有熊猫基地。")
    c.showPage()
    c.save()

    blank_pdf = folder / "scanned.pdf"
    c = canvas.Canvas(str(blank_pdf))
    c.rect(100, 100, 200, 200)  # a drawing, no text layer
    c.showPage()
    c.save()

    broken = folder / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n" + b"\x13\x37garbage" * 100)

    from pypdf import PdfWriter

    locked = folder / "locked.pdf"  # a user password: nothing can be read without it
    writer = PdfWriter(clone_from=pdf)
    writer.encrypt("secret", algorithm="AES-128")
    writer.write(locked)
    owner_only = folder / "restricted.pdf"  # only an owner password (no copying): opens for anyone
    writer = PdfWriter(clone_from=pdf)
    writer.encrypt("", owner_password="owner", algorithm="AES-128")
    writer.write(owner_only)
    truncated = folder / "truncated.pdf"  # a download that stopped half way
    truncated.write_bytes(pdf.read_bytes()[: pdf.stat().st_size // 2])

    return {"html": html, "docx": word, "pdf": pdf, "blank_pdf": blank_pdf, "broken_pdf": broken,
            "locked_pdf": locked, "owner_only_pdf": owner_only, "truncated_pdf": truncated}


def test_html_text_comes_out(files: dict[str, Path]) -> None:
    docs = load_file(files["html"])
    assert len(docs) == 1
    text = docs[0].page_content
    assert "熊猫档案" in text
    assert "熊猫主要吃竹子。它们生活在四川。" in text
    assert "Pandas spend most of the day eating." in text
    assert "<p>" not in text and "<h1>" not in text
    assert docs[0].metadata == {"source": str(files["html"])}


def test_docx_text_comes_out(files: dict[str, Path]) -> None:
    docs = load_file(files["docx"])
    text = "\n".join(d.page_content for d in docs)
    assert "合同摘要" in text
    assert "本合同的有效期为三年。" in text
    assert "The contract is valid for three years." in text
    assert all("page" not in d.metadata for d in docs)


def test_pdf_one_document_per_page_with_page_numbers(files: dict[str, Path]) -> None:
    docs = load_file(files["pdf"])
    assert [d.metadata["page"] for d in docs] == [1, 2, 3]
    assert "熊猫吃竹子。" in docs[0].page_content
    assert "pandas sleep a lot." in docs[1].page_content
    assert "成都有熊猫基地。" in docs[2].page_content
    assert all(d.metadata["source"] == str(files["pdf"]) for d in docs)


def test_pdf_without_text_layer_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(InputError) as err:
        load_file(files["blank_pdf"])
    assert "no text found" in str(err.value)
    assert str(files["blank_pdf"]) in str(err.value)


def test_corrupt_pdf_is_an_input_error_naming_the_file(files: dict[str, Path]) -> None:
    with pytest.raises(InputError) as err:
        load_file(files["broken_pdf"])
    assert str(files["broken_pdf"]) in str(err.value)


@pytest.fixture
def stderr_logging() -> Iterator[None]:
    """Log WARNING and up to stderr, as the CLI does, so stray library warnings would show."""
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def test_password_protected_pdf_says_so_in_one_line(files: dict[str, Path], stderr_logging, capfd) -> None:
    with pytest.raises(InputError) as err:
        load_file(files["locked_pdf"])
    assert str(err.value) == f"{files['locked_pdf']}: the PDF is password-protected (remove the password and try again)"
    assert capfd.readouterr().err == ""


def test_pdf_with_only_an_owner_password_is_read(files: dict[str, Path]) -> None:
    docs = load_file(files["owner_only_pdf"])
    assert [d.metadata["page"] for d in docs] == [1, 2, 3]
    assert "熊猫吃竹子" in docs[0].page_content


@pytest.mark.parametrize("name", ["truncated_pdf", "broken_pdf"])
def test_damaged_pdf_says_so_in_one_line_and_nothing_else(
    files: dict[str, Path], stderr_logging, capfd, name: str
) -> None:
    with pytest.raises(InputError) as err:
        load_file(files[name])
    message = str(err.value)
    assert message.startswith(f"{files[name]}: the PDF is damaged (") and "\n" not in message
    assert "scanned" not in message
    assert capfd.readouterr().err == ""  # no "WARNING pypdf._reader: EOF marker not found"


LAUNCHER = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import ragqa.llms
from conftest import FakeBackend

ragqa.llms.load_backend = lambda settings, **k: FakeBackend(["摘要。"])
from ragqa.cli import main
sys.argv = ["ragqa", *sys.argv[1:]]
main()
"""


def test_summarize_reports_each_bad_pdf_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for name in ("locked_pdf", "truncated_pdf"):
        (folder / files[name].name).write_bytes(files[name].read_bytes())
    env = {**os.environ, "RAGQA_CACHE_DIR": str(tmp_path / "cache")}
    here = str(Path(__file__).resolve().parent)
    cmd = [sys.executable, "-c", LAUNCHER, here, "summarize", str(folder), "--out", str(tmp_path / "out.jsonl")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    lines = run.stderr.splitlines()
    assert len(lines) == 3, run.stderr  # two failures and the summary line: no warnings, no traceback
    assert lines[0].endswith(f"{folder / 'locked.pdf'}: the PDF is password-protected (remove the password and try again)")
    assert f"{folder / 'truncated.pdf'}: the PDF is damaged (" in lines[1]
    assert "failed 2" in lines[2]


def test_folder_of_mixed_documents_loads_them_all(files: dict[str, Path]) -> None:
    docs = load_documents([files["html"], files["docx"], files["pdf"]])
    sources = [d.metadata["source"] for d in docs]
    assert sources.count(str(files["pdf"])) == 3
    assert str(files["html"]) in sources and str(files["docx"]) in sources


def test_pdf_pages_survive_indexing_and_the_cache(files: dict[str, Path], make_pipeline) -> None:
    first = make_pipeline(k=10).ask([files["pdf"]], "熊猫吃什么？")
    again = make_pipeline(k=10).ask([files["pdf"]], "熊猫吃什么？")
    assert again.timings["files_cached"] == 1
    for answer in (first, again):
        pages = {s.page for s in answer.sources}
        assert pages == {1, 2, 3}
        for s in answer.sources:
            assert f" p.{s.page} @" in s.location()
