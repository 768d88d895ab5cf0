"""Office files, e-books, tables, e-mail, JSON and scans, read by the real partitioners and the real
Tesseract (tests/docfixtures.py writes every file). OCR tests need Debian's tesseract-ocr with the
chi_sim/chi_tra models (`make` installs them) and a CJK font (fonts-noto-cjk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import docfixtures as fx
from ragqa.errors import InputError, OcrUnavailableError
from ragqa.loaders import expand_paths, load_file, loader_id
from ragqa.ocr import tesseract_path

pytest.importorskip("unstructured")

needs_ocr = pytest.mark.skipif(
    tesseract_path() is None or fx.cjk_font(20) is None,
    reason="needs tesseract (chi_sim, chi_tra, eng) and a CJK font: `make setup` and `make browser` install them",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    fx.pptx_file(root / "deck.pptx", [("Intro", "Welcome to the tea course"),
                                      ("龙井", "龙井茶产于杭州西湖，每年三月采摘。"),
                                      ("Ferry", "The ferry leaves at 7 am.")])
    fx.xlsx_file(root / "prices.xlsx", {
        "茶价": [["商品", "价格", "产地"], ["龙井", 320, "杭州"], ["普洱", 180, "云南"]],
        "Staff": [["Name", "Role"], ["Idris Vell", "carpenter"]],
        "Blank": [],
    })
    fx.xls_file(root / "stock.xls", {"库存": [["书名", "数量"], ["红楼梦", 12], ["西游记", 7]]})
    (root / "towns.csv").write_text("name,province,population\nQuillby,Eastmarch,4300\n杭州,浙江,12000000\n", "utf-8")
    book_md = "# 第一章 茶\n\n龙井茶产于杭州西湖。\n\n# Chapter 2\n\nThe ferry leaves at 7 am.\n"
    for suffix in (".epub", ".odt", ".rtf"):
        fx.pandoc_file(root / f"book{suffix}", book_md)
    fx.eml_file(root / "meeting.eml", "周会时间", "周会改到周四下午三点，在二楼会议室。")
    fx.json_file(root / "menu.json", {"title": "茶单", "items": [{"name": "碧螺春", "price": 260}]})
    (root / "log.jsonl").write_text('{"q": "where", "a": "\\u676d\\u5dde"}\n\n{"q": "when", "a": "March"}\n', "utf-8")
    (root / "page.html").write_text(
        "<h1>The market</h1><p>Every Thursday a cheese market is held.</p><ul><li>eel pie</li><li>cider</li></ul>",
        "utf-8")
    return root


def test_pptx_keeps_slides_as_pages_with_titles_as_headings(folder: Path) -> None:
    docs = load_file(folder / "deck.pptx")
    assert [(d.metadata["page"], d.metadata["page_label"]) for d in docs] == [(1, "slide 1"), (2, "slide 2"), (3, "slide 3")]
    assert docs[1].page_content == "# 龙井\n\n龙井茶产于杭州西湖，每年三月采摘。"


def test_spreadsheet_rows_keep_their_header_and_sheet(folder: Path) -> None:
    docs = load_file(folder / "prices.xlsx")
    assert [d.metadata["page_label"] for d in docs] == ["sheet 茶价", "sheet Staff"]  # the blank sheet is dropped
    lines = docs[0].page_content.split("\n\n")
    assert lines == ["# 茶价", "商品: 龙井 | 价格: 320 | 产地: 杭州", "商品: 普洱 | 价格: 180 | 产地: 云南"]
    assert docs[1].metadata["page"] == 2


def test_old_excel_and_csv_are_rows_too(folder: Path) -> None:
    [xls] = load_file(folder / "stock.xls")
    assert xls.metadata["page_label"] == "sheet 库存"
    assert "书名: 西游记 | 数量: 7" in xls.page_content
    [csv] = load_file(folder / "towns.csv")
    assert csv.page_content.split("\n\n") == [
        "name: Quillby | province: Eastmarch | population: 4300",
        "name: 杭州 | province: 浙江 | population: 12000000",
    ]


@pytest.mark.parametrize("suffix", [".epub", ".odt", ".rtf"])
def test_ebook_and_word_processor_files_keep_headings(folder: Path, suffix: str) -> None:
    [doc] = load_file(folder / f"book{suffix}")
    assert doc.page_content == "# 第一章 茶\n\n龙井茶产于杭州西湖。\n\n# Chapter 2\n\nThe ferry leaves at 7 am."


def test_email_has_its_subject_and_body(folder: Path) -> None:
    [doc] = load_file(folder / "meeting.eml")
    assert doc.page_content.startswith("Subject: 周会时间\nFrom: li.wei@example.com")
    assert doc.page_content.endswith("周会改到周四下午三点，在二楼会议室。")  # a sentence, not a "# heading"


def test_json_is_read_as_text_with_readable_characters(folder: Path) -> None:
    [doc] = load_file(folder / "menu.json")
    assert "碧螺春" in doc.page_content and "\\u" not in doc.page_content
    assert json.loads(doc.page_content)["items"][0]["price"] == 260
    [lines] = load_file(folder / "log.jsonl")
    assert lines.page_content == '{"q": "where", "a": "杭州"}\n{"q": "when", "a": "March"}'


def test_html_headings_and_list_items_stay_on_their_own_lines(folder: Path) -> None:
    [doc] = load_file(folder / "page.html")
    assert doc.page_content == "# The market\n\nEvery Thursday a cheese market is held.\n\n- eel pie\n\n- cider"


def test_a_folder_of_every_type_is_expanded(folder: Path) -> None:
    names = {p.name for p in expand_paths([folder])}
    assert {"deck.pptx", "prices.xlsx", "stock.xls", "towns.csv", "book.epub", "book.odt", "book.rtf",
            "meeting.eml", "menu.json", "log.jsonl", "page.html"} <= names


def test_text_files_keep_their_loader_id_so_an_upgrade_does_not_re_embed_them() -> None:
    # knowledge bases made before Office/OCR support stored "text/2" for .txt/.md: still the same
    assert loader_id(Path("notes.md")) == loader_id(Path("a.txt")) == "text/2"


def test_reading_with_ocr_on_or_off_is_part_of_the_loader_id() -> None:
    assert loader_id(Path("a.pdf"), "auto") != loader_id(Path("a.pdf"), "never")
    assert loader_id(Path("a.png"), "auto", "auto") != loader_id(Path("a.png"), "auto", "eng")
    assert loader_id(Path("a.xlsx"), "auto") == loader_id(Path("a.xlsx"), "never")  # OCR does not touch it


# -- bad input: one clear reason per file ------------------------------------------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Path:
    from msoffcrypto.format.ooxml import OOXMLFile

    root = tmp_path_factory.mktemp("bad-formats")
    for name in ("prices.xlsx", "deck.pptx"):
        with open(folder / name, "rb") as src, open(root / f"locked-{name}", "wb") as out:
            OOXMLFile(src).encrypt("secret", out)
    for suffix in (".xlsx", ".pptx", ".epub", ".odt"):
        (root / f"damaged{suffix}").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 50)
    (root / "damaged.rtf").write_bytes(b"{\\rtf1 \x01garbage")
    (root / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "not.xls").write_text("name,price\n", "utf-8")
    (root / "plain.rtf").write_text("just text saved as .rtf", "utf-8")
    (root / "binary.eml").write_bytes(b"\x00\x01\x02 not mail")
    (root / "bad.json").write_text('{"a": 1,,}', "utf-8")
    (root / "bad.jsonl").write_text('{"a": 1}\n{"a": \n', "utf-8")
    fx.xlsx_file(root / "empty.xlsx", {"Sheet1": [], "Sheet2": []})
    return root


@pytest.mark.parametrize(("name", "reason"), [
    ("locked-prices.xlsx", "password-protected"),
    ("locked-deck.pptx", "password-protected"),
    ("damaged.xlsx", "cannot read this .xlsx file"),
    ("damaged.pptx", "cannot read this .pptx file"),
    ("damaged.epub", "cannot read this .epub file"),
    ("damaged.odt", "cannot read this .odt file"),
    ("damaged.rtf", "cannot read this .rtf file"),
    ("damaged.png", "not a readable image"),
    ("not.xls", "not an .xls file"),
    ("plain.rtf", "not an RTF file"),
    ("binary.eml", "binary"),
    ("bad.json", "not valid JSON (line 1 column 9"),
    ("bad.jsonl", "not valid JSON Lines (line 2"),
    ("empty.xlsx", "every sheet is empty"),
])
def test_bad_files_are_refused_with_one_line(bad: Path, name: str, reason: str) -> None:
    with pytest.raises(InputError) as err:
        load_file(bad / name)
    message = str(err.value)
    assert message.startswith(f"{bad / name}: ") and reason in message
    assert "\n" not in message and len(message) < 300


# -- OCR --------------------------------------------------------------------------------------

ZH_PAGE = "扫描件第一页：西湖龙井茶产于浙江省杭州市，每年清明节前采摘的明前茶最为名贵。"
EN_PAGE = "Scanned page two: the Quillby ferry leaves the harbour at seven every morning."
TW_PAGE = "掃描文件：臺灣的阿里山烏龍茶生長在海拔一千公尺以上的茶園。"


@needs_ocr
def test_scanned_pdf_is_read_by_ocr_page_by_page(tmp_path: Path) -> None:
    scan = fx.scanned_pdf(tmp_path / "scan.pdf", [ZH_PAGE, EN_PAGE], height_px=900)
    seen: list[tuple[int, int]] = []
    docs = load_file(scan, on_page=lambda done, total: seen.append((done, total)))
    assert [(d.metadata["page"], d.metadata["ocr"]) for d in docs] == [(1, True), (2, True)]
    assert fx.cer(docs[0].page_content, ZH_PAGE) < 0.1 and fx.cer(docs[1].page_content, EN_PAGE) < 0.05
    assert " " not in docs[0].page_content.split("：", 1)[1]  # no spaces between Han characters
    assert seen == [(1, 2), (2, 2)]


@needs_ocr
def test_auto_ocrs_only_the_page_without_a_text_layer(tmp_path: Path) -> None:
    mixed = fx.mixed_pdf(tmp_path / "mixed.pdf", "第一页有文字层：苏州园林以拙政园最为有名。", ZH_PAGE)
    seen: list[tuple[int, int]] = []
    docs = load_file(mixed, on_page=lambda done, total: seen.append((done, total)))
    assert docs[0].page_content == "第一页有文字层：苏州园林以拙政园最为有名。" and "ocr" not in docs[0].metadata
    assert docs[1].metadata == {"source": str(mixed), "page": 2, "ocr": True}
    assert fx.cer(docs[1].page_content, ZH_PAGE) < 0.1
    assert seen == [(1, 1)]  # one page OCR'd
    never = load_file(mixed, ocr="never")
    assert [d.metadata["page"] for d in never] == [1]
    always = load_file(mixed, ocr="always")
    assert all(d.metadata.get("ocr") for d in always) and len(always) == 2


@needs_ocr
def test_traditional_chinese_is_recognised_with_the_traditional_model(tmp_path: Path) -> None:
    image = tmp_path / "tw.png"
    fx.render_page(TW_PAGE, height_px=500, traditional=True).save(image)
    [auto] = load_file(image)
    [simplified_only] = load_file(image, ocr_languages="chi_sim+eng")
    assert fx.cer(auto.page_content, TW_PAGE) < 0.1
    assert fx.cer(auto.page_content, TW_PAGE) < fx.cer(simplified_only.page_content, TW_PAGE)


@needs_ocr
def test_images_without_text_and_ocr_off_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (800, 600), 255).save(blank)
    with pytest.raises(InputError, match="OCR found no text in the image"):
        load_file(blank)
    photo = tmp_path / "notes.jpg"
    fx.render_page(ZH_PAGE, height_px=500).convert("RGB").save(photo)
    with pytest.raises(InputError, match="OCR is off"):
        load_file(photo, ocr="never")
    scan = fx.scanned_pdf(tmp_path / "scan.pdf", [ZH_PAGE], height_px=500)
    with pytest.raises(InputError, match="a scanned PDF, and OCR is off: use --ocr auto"):
        load_file(scan, ocr="never")


@needs_ocr
def test_without_tesseract_a_scan_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RAGQA_TESSERACT", str(tmp_path / "no-such-tesseract"))
    scan = fx.scanned_pdf(tmp_path / "scan.pdf", [ZH_PAGE], height_px=500)
    with pytest.raises(OcrUnavailableError, match="apt install tesseract-ocr") as err:
        load_file(scan)
    assert err.value.exit_code == 4 and isinstance(err.value, InputError)  # skipped with a note in a folder
    mixed = fx.mixed_pdf(tmp_path / "mixed.pdf", "第一页有文字层：苏州园林以拙政园最为有名。", ZH_PAGE)
    docs = load_file(mixed)  # the text page is kept; a note names the page left out
    assert [d.metadata["page"] for d in docs] == [1]
    assert "page 2 left out: no text layer" in caplog.text


TEA = ["龙井茶产于杭州西湖，明前茶最为名贵。", "普洱茶产于云南，经过发酵后存放多年。", "碧螺春产于苏州太湖，条索纤细卷曲。",
       "铁观音产于福建安溪，香气馥郁持久。", "祁门红茶产于安徽，汤色红艳明亮。", "白毫银针产于福鼎，满披白毫。"]


@needs_ocr
def test_a_two_column_scan_is_read_column_by_column(tmp_path: Path) -> None:
    from PIL import Image

    # an A4 page at 300 dpi in two columns of 18 sentences each, like a journal article
    left = [f"左栏第{n + 1}句：{TEA[n % 6]}" for n in range(18)]
    right = [f"右栏第{n + 1}句：{TEA[(n + 3) % 6]}" for n in range(18)]
    page = Image.new("L", (2480, 3508), 255)
    page.paste(fx.render_page("".join(left), width_px=1240, font_px=36), (0, 0))
    page.paste(fx.render_page("".join(right), width_px=1240, font_px=36), (1240, 0))
    page.save(tmp_path / "columns.png")
    [doc] = load_file(tmp_path / "columns.png", ocr_languages="chi_sim+eng")
    assert fx.cer(doc.page_content, "".join(left + right)) < 0.1  # column by column, not line by line across
    text = fx.visible(doc.page_content)
    assert text.index("左栏第18句") < text.index("右栏第1句")
