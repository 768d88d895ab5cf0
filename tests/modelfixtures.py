"""Models built from the starter packages, for the integration tests and bench/bench_backends.py.

``starter_hf_folder``: the starter SmolLM2-135M GGUF, dequantized once by transformers
(``gguf_file=``, needs the gguf package) into a float32 Hugging Face folder, cached by the GGUF's
hash under ~/.cache/ragqa/test-models (or $RAGQA_TEST_MODELS).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ragqa.config import default_cache_dir
from ragqa.models import resolve_llm_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a float32 HF folder (config, safetensors, tokenizer with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors by now; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def starter_hf_folder(progress: Callable[[str], None] | None = None) -> Path:
    """The starter model as a Hugging Face folder; converted on first use (~30 s), then reused."""
    gguf = resolve_llm_path("smollm2")
    root = Path(os.environ.get("RAGQA_TEST_MODELS") or default_cache_dir() / "test-models")
    folder = root / f"smollm2-135m-instruct-hf-{_sha256(gguf)[:16]}"
    if not (folder / "model.safetensors").is_file():
        if progress:
            progress("converting the starter GGUF to an HF folder (once)")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
        try:
            convert_gguf_to_hf(gguf, tmp)
            if not folder.exists():
                tmp.rename(folder)  # whole or not at all: a killed conversion leaves no half folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
