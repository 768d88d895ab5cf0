"""Legacy formats through LibreOffice beside the same documents in their XML formats, in one run.

One document of each kind is written with python-docx / python-pptx / openpyxl (--pages pages of
Chinese and English prose with a heading and a table each, --pages slides, --pages sheets of 200
rows), and LibreOffice saves it as .doc / .ppt / .xls. ragqa's ``load_file`` reads both versions,
median of --repeats runs each; reported are pages (slides, sheets) per second and the legacy/XML
speed ratio. The .xls is read twice: by xlrd (how ragqa reads it) and converted by LibreOffice (how
it reads an .xls xlrd cannot), which is the measurement behind leaving .xls on xlrd.

    .venv/bin/python bench/bench_legacy.py [--pages 15] [--repeats 3] [--markdown]

Nothing here asserts on a timing; the numbers go to README "Supported files".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import docfixtures as fx  # noqa: E402
from bench_formats import show  # noqa: E402

ZH = "龙井茶产于杭州西湖，每年三月采摘。明前茶最为名贵，香气清高，滋味鲜爽。"
EN = "The Quillby ferry leaves the harbour at seven every morning and returns at dusk. "


def documents(root: Path, n: int) -> list[tuple[str, Path, Path]]:
    """(unit, XML original, LibreOffice's 97-2003 save of it) for a document, a deck and a workbook."""
    blocks: list[tuple[str, object]] = []
    for page in range(1, n + 1):
        blocks += [("heading", f"第{page}章 西湖"), ("para", ZH * 12), ("para", EN * 4),
                   ("table", [["商品", "价格", "产地"]] + [[f"茶{page}-{r}", r * 10, "杭州"] for r in range(8)]),
                   ("page", None)]
    docx = fx.docx_file(root / "book.docx", blocks[:-1])
    pptx = fx.pptx_file(root / "deck.pptx", [(f"第{k}页 年度报告", ZH * 3) for k in range(1, n + 1)])
    xlsx = fx.xlsx_file(root / "book.xlsx", {f"表{s}": [["商品", "价格", "产地", "备注"]] +
                                            [[f"茶{r}", r, "杭州", "明前"] for r in range(200)] for s in range(1, n + 1)})
    legacy = root / "legacy"
    return [("pages", docx, fx.soffice_convert(docx, "doc:MS Word 97", legacy)),
            ("slides", pptx, fx.soffice_convert(pptx, "ppt:MS PowerPoint 97", legacy)),
            ("sheets", xlsx, fx.soffice_convert(xlsx, "xls:MS Excel 97", legacy))]


def seconds(read, repeats: int) -> tuple[float, int]:
    """Median seconds of ``read()`` over ``repeats`` runs after a warm-up, and how many Documents it gave."""
    docs = read()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        read()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(docs)


def bench(n: int, repeats: int) -> list[dict]:
    from ragqa.loaders import _read_converted, load_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for unit, xml, legacy in documents(Path(tmp), n):
            print(f"reading {xml.name} and {legacy.name}", file=sys.stderr)
            xml_s, xml_docs = seconds(lambda p=xml: load_file(p), repeats)
            readers = [(legacy.suffix + (" (xlrd)" if legacy.suffix == ".xls" else " (LibreOffice)"),
                        lambda p=legacy: load_file(p))]
            if legacy.suffix == ".xls":
                readers.append((".xls (LibreOffice)", lambda p=legacy: _read_converted(p, ".xls", p.read_bytes())))
            for label, read in readers:
                legacy_s, legacy_docs = seconds(read, repeats)
                rows.append({"format": label, "vs": xml.suffix, "of": f"{n} {unit}",
                             "size KB": round(legacy.stat().st_size / 1024), "legacy s": legacy_s,
                             "legacy per s": n / legacy_s, "XML s": xml_s, "XML per s": n / xml_s,
                             "legacy/XML speed": xml_s / legacy_s, "Documents": f"{legacy_docs} vs {xml_docs}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=15, help="pages, slides and sheets per document")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    version = subprocess.run(["soffice", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {version}\n")
    show(bench(args.pages, args.repeats), args.markdown)


if __name__ == "__main__":
    main()
