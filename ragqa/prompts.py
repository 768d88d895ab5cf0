"""Instruction templates, loaded from the prompts/ folder (plain files, one per prompt and language).

File names: ``{name}.{lang}.txt`` with ``lang`` in zh, en. Variables use ``{braces}``.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa.errors import ConfigError

if TYPE_CHECKING:
    from langchain_core.prompts import PromptTemplate

LANGS = ("zh", "en")
# name -> the variables its template must use
PROMPT_VARIABLES: dict[str, set[str]] = {
    "qa_stuff": {"context", "question"},
    "qa_refine_initial": {"context_str", "question"},
    "qa_refine": {"question", "existing_answer", "context_str"},
    "sum_stuff": {"text"},  # also the first step of refine and each map step of map-reduce
    "sum_refine": {"existing_answer", "text"},
    "sum_reduce": {"text"},  # combines partial summaries
}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def prompts_dir() -> Path:
    """prompts/ inside the installed package (wheel), else the repository's top-level folder."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"prompt templates not found (looked in {here / 'prompts'} and {here.parent / 'prompts'})")


def detect_lang(text: str) -> str:
    """'zh' when Chinese characters make up a real part of the letters, else 'en'.

    >>> detect_lang("熊猫吃什么？"), detect_lang("What do pandas eat?"), detect_lang("GPU 是什么")
    ('zh', 'en', 'zh')
    """
    cjk = len(_CJK.findall(text))
    latin_words = len(re.findall(r"[A-Za-z]+", text))
    return "zh" if cjk and cjk >= latin_words else "en"


@lru_cache(maxsize=64)
def load_prompt(name: str, lang: str) -> str:
    """The template text for ``name`` in ``lang``; checked to use exactly its variables."""
    if name not in PROMPT_VARIABLES:
        raise ConfigError(f"unknown prompt {name!r}; known: {', '.join(sorted(PROMPT_VARIABLES))}")
    if lang not in LANGS:
        raise ConfigError(f"unknown prompt language {lang!r}; known: {', '.join(LANGS)}")
    path = prompts_dir() / f"{name}.{lang}.txt"
    try:
        text = path.read_text("utf-8").strip("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read prompt template {path}: {exc.strerror or exc}") from None
    used = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    if used != PROMPT_VARIABLES[name]:
        raise ConfigError(
            f"prompt template {path} uses {sorted(used)} but must use {sorted(PROMPT_VARIABLES[name])}"
        )
    return text


def fill_prompt(name: str, lang: str, **values: str) -> str:
    return load_prompt(name, lang).format(**values)


def get_prompt(name: str, lang: str) -> "PromptTemplate":
    """A template from prompts/ as a LangChain PromptTemplate (input variables as in the file).

    >>> get_prompt("qa_stuff", "en").input_variables
    ['context', 'question']
    """
    from langchain_core.prompts import PromptTemplate

    return PromptTemplate.from_template(load_prompt(name, lang))
