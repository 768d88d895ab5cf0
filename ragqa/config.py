"""One Settings object for every entry point.

Precedence, highest first: command-line flags, ``RAGQA_*`` environment variables, the config file
(``--config FILE`` or ``RAGQA_CONFIG``, TOML, keys as below), the defaults documented here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ragqa.errors import ConfigError

DEFAULT_LLM = "smollm2"
# chosen by `ragqa eval` on CMRC2018, DRCD and SQuAD (README "Retrieval"): best for zh and en
DEFAULT_EMBEDDING = "multilingual-e5-small"


def default_cache_dir() -> Path:
    """Per-user cache folder: $XDG_CACHE_HOME/ragqa, else ~/.cache/ragqa."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ragqa"


class Settings(BaseSettings):
    """Everything a run can be tuned by. Field descriptions double as the CLI's help."""

    model_config = SettingsConfigDict(env_prefix="RAGQA_", extra="forbid", validate_default=True)
    _config_file: ClassVar[Path | None] = None

    # -- models
    model: str = Field(
        DEFAULT_LLM,
        description="LLM: 'smollm2' (bundled starter), a path to a .gguf file.",
    )
    embedding_model: str = Field(
        DEFAULT_EMBEDDING,
        description="Embeddings: 'multilingual-e5-small' or 'all-MiniLM-L6-v2' (bundled starters), a "
        "local sentence-transformers folder, or a hub id such as shibing624/text2vec-base-chinese.",
    )
    chat_format: str = Field(
        "auto",
        description="Prompt wrapper: 'auto' (the model's own template; alpaca-2 if it has none), a "
        "built-in name (alpaca-2, llama-2, chatml, yi, vicuna, internlm, xverse, billa, yulan, alpaca, "
        "deepseek-coder) or a path to a .toml chat format file (README \"Chat formats\").",
    )
    system_prompt: str | None = Field(
        None, description="System prompt; default: the chat format's own default."
    )

    # -- documents
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Index cache folder.")
    chunk_size: int = Field(600, ge=50, le=20000, description="Maximum characters per chunk.")
    chunk_overlap: int = Field(100, ge=0, description="Characters shared by neighbouring chunks.")
    max_file_mb: float = Field(200.0, gt=0, description="Refuse files larger than this (MB).")

    # -- retrieval and chains
    k: int = Field(4, ge=1, le=100, description="Chunks retrieved per question.")
    retriever: Literal["vector", "bm25", "hybrid"] = Field(
        "hybrid", description="vector (embeddings), bm25 (jieba words) or hybrid (rank fusion of both)."
    )
    reranker: str | None = Field(
        None, description="Cross-encoder to re-score candidates (name or folder); off by default."
    )
    rerank_candidates: int = Field(20, ge=1, le=500, description="Candidates the reranker sees.")
    chain: Literal["stuff", "refine"] = Field("stuff", description="QA chain: stuff or refine.")
    summary_chain: Literal["auto", "stuff", "refine", "map_reduce"] = Field(
        "auto", description="Summary chain; auto = stuff when the document fits the context, else map_reduce."
    )
    lang: Literal["auto", "zh", "en"] = Field(
        "auto", description="Prompt language; auto follows the question."
    )

    # -- llama.cpp
    n_ctx: int = Field(4096, ge=256, le=1_048_576, description="Context window in tokens.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU (-1 = all).")
    n_batch: int = Field(512, ge=1, description="Prompt-processing batch size.")
    rope_freq_base: float = Field(
        0.0, ge=0, description="RoPE base frequency; 0 = the model's own. Raise it (NTK) for longer contexts."
    )
    rope_freq_scale: float = Field(
        0.0, ge=0, description="RoPE linear scale; 0 = the model's own."
    )

    # -- generation (the seed's defaults)
    max_new_tokens: int = Field(400, ge=1, description="Tokens generated at most.")
    temperature: float = Field(0.2, ge=0, le=5)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repeat_penalty: float = Field(1.1, ge=0)
    seed: int = Field(42, description="Sampling seed, so the same question gives the same answer.")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        self.cache_dir = Path(self.cache_dir).expanduser()
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_size ({self.chunk_size})"
            )
        if self.max_new_tokens >= self.n_ctx:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be less than n_ctx ({self.n_ctx})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from flags (``overrides``; None means 'not given'), env and a TOML file."""
    path = config_file or os.environ.get("RAGQA_CONFIG")
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    given = {k: v for k, v in overrides.items() if v is not None}
    Settings._config_file = Path(path) if path else None
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except Exception as exc:  # a malformed TOML file
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    finally:
        Settings._config_file = None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid settings: " + "; ".join(parts)
