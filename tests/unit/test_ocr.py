"""ragqa.ocr's own logic with Tesseract faked (the real one runs in test_loaders_formats.py)."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

import ragqa.ocr as ocr


def test_clean_up_joins_chinese_and_leaves_latin_alone() -> None:
    raw = "龙 井 茶 产 于\n杭 州 西 湖 。 The tea  is green.\n\n第二 段: 红 茶 , 祁门\n"
    assert ocr.clean_ocr_text(raw) == "龙井茶产于杭州西湖。 The tea  is green.\n\n第二段：红茶，祁门"


@pytest.fixture
def fake_tesseract(monkeypatch: pytest.MonkeyPatch):
    """Pages are images whose width says what is on them: 100 = blank, 200 = Traditional text."""
    calls: list[tuple[int, str]] = []
    lock = threading.Lock()

    def fake(image, languages, exe=None):
        with lock:
            calls.append((image.width, languages))
        if image.width == 100:
            return "", 0.0
        return f"page {image.width}", 90.0 if languages.startswith("chi_tra") else 40.0

    monkeypatch.setattr(ocr, "check_languages", lambda languages: "tesseract")
    monkeypatch.setattr(ocr, "ocr_image", fake)
    return calls


def test_auto_languages_decide_on_the_first_page_with_text(fake_tesseract) -> None:
    pages = [Image.new("L", (w, 50)) for w in (100, 200, 200, 200)]  # a blank cover, then text
    done: list[tuple[int, int]] = []
    texts = ocr.ocr_pages(pages, 4, "auto", on_page=lambda d, t: done.append((d, t)))
    assert texts == ["", "page 200", "page 200", "page 200"]
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    both = {"chi_sim+eng", "chi_tra+eng"}
    assert {lang for w, lang in fake_tesseract[:2]} == both  # the cover: both, and undecided
    assert {lang for w, lang in fake_tesseract[2:4]} == both  # page 2 decides: Traditional is surer
    assert [lang for _, lang in fake_tesseract[4:]] == ["chi_tra+eng", "chi_tra+eng"]


def test_given_languages_are_used_for_every_page(fake_tesseract) -> None:
    pages = [Image.new("L", (200, 50)) for _ in range(3)]
    assert ocr.ocr_pages(pages, 3, "eng") == ["page 200"] * 3
    assert [lang for _, lang in fake_tesseract] == ["eng"] * 3


def test_a_missing_tesseract_or_model_says_what_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGQA_TESSERACT", str(tmp_path / "nowhere"))
    with pytest.raises(ocr.OcrUnavailableError, match="apt install tesseract-ocr tesseract-ocr-chi-sim"):
        ocr.check_languages("auto")
    fake = tmp_path / "tesseract"
    fake.write_text("#!/bin/sh\necho 'List of available languages (1):'\necho eng\n")
    fake.chmod(0o755)
    monkeypatch.setenv("RAGQA_TESSERACT", str(fake))
    with pytest.raises(ocr.OcrUnavailableError, match=r"no chi_sim\+chi_tra model \(apt install tesseract-ocr-chi-sim tesseract-ocr-chi-tra"):
        ocr.check_languages("auto")
    assert ocr.check_languages("eng") == str(fake)


def test_traditional_needs_a_clear_lead_to_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few lines of Simplified text can read as Traditional with a hair more confidence
    (85.7 vs 85.0, measured); Traditional pages lead by 9-14 points."""
    calls: list[str] = []

    def fake(image, languages, exe=None):
        calls.append(languages)
        lead = image.width / 10  # the test's knob: Traditional's confidence lead
        return languages, 85.0 + (lead if languages.startswith("chi_tra") else 0.0)

    monkeypatch.setattr(ocr, "check_languages", lambda languages: "tesseract")
    monkeypatch.setattr(ocr, "ocr_image", fake)
    assert ocr.ocr_pages([Image.new("L", (7, 9))], 1, "auto") == ["chi_sim+eng"]  # +0.7: a tie
    assert ocr.ocr_pages([Image.new("L", (90, 9))], 1, "auto") == ["chi_tra+eng"]  # +9: Traditional
