"""The flags that set Settings fields are generated from the fields (ragqa.cli ``@command``).

What a user would notice: every command keeps its flag names; a flag's help is the field's
description with its choices, bounds and default; a flag given reaches the settings and one not
given leaves them to RAGQA_* variables, the config file and the defaults; `ragqa --help` does not
pay for building them.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import ragqa.config
import ragqa.pipeline
from ragqa import cli
from ragqa.config import Settings
from ragqa.errors import ConfigError, InputError

# The command-line contract: the settings each command exposes. Flags are --field-name except:
EXPOSED = {
    "ask": "model backend base_url api_model EMB chat_format chain context k abstain abstain_strictness citations retriever fusion keyword_fold reranker "
           "chunk_size chunk_overlap lang system_prompt n_ctx n_threads n_gpu_layers rope_freq_base "
           "rope_freq_scale device torch_dtype load_in_4bit load_in_8bit rope_scaling max_new_tokens "
           "temperature top_k top_p repeat_penalty seed cache_dir data_dir store max_file_mb ocr",
    "summarize": "summary_chain lang model backend base_url api_model device torch_dtype load_in_4bit load_in_8bit "
                 "rope_scaling chat_format system_prompt n_ctx n_threads n_gpu_layers max_new_tokens temperature "
                 "max_file_mb ocr data_dir store",
    "eval": "EMB retriever fusion keyword_fold k chunk_size chunk_overlap model chat_format chain context max_new_tokens "
            "cache_dir abstain abstain_strictness",
    "serve": "model backend base_url api_model device torch_dtype load_in_4bit load_in_8bit EMB "
             "chat_format chain context k retriever fusion keyword_fold n_ctx abstain abstain_strictness citations n_threads n_gpu_layers max_new_tokens temperature "
             "max_file_mb ocr cache_dir data_dir store max_concurrency max_queue max_question_chars max_messages api_keys "
             "request_timeout first_token_timeout PARSING",
    "index": "EMB chunk_size chunk_overlap keyword_fold max_file_mb ocr data_dir store cache_dir PARSING",
    "kb list": "data_dir store",
    "kb show": "data_dir store",
    "kb remove": "data_dir store",
    "kb drop": "data_dir store",
}
# every command that embeds takes the embedding server's settings beside embedding_model
EXPOSED = {k: v.replace("EMB", "embedding_model embedding_base_url embedding_query_prefix embedding_passage_prefix "
                        "embedding_batch_size embedding_concurrency embedding_timeout")
               .replace("PARSING", "parse_isolation parse_memory_mb parse_cpu_seconds parse_timeout ingest_concurrency "
                        "max_unpacked_mb max_pages max_image_pixels max_line_chars") for k, v in EXPOSED.items()}
IRREGULAR_FLAGS = {
    "model": ["--model", "-m"],
    "embedding_model": ["--embedding-model", "-e"],
    "k": ["--k", "-k"],
    "n_threads": ["--threads", "-t"],
    "summary_chain": ["--chain"],
}


def expected_flags(name: str) -> list[str]:
    return IRREGULAR_FLAGS.get(name, ["--" + name.replace("_", "-")])


def commands() -> dict[str, Any]:
    """Every leaf command by its path ('ask', 'kb list'), freshly built (its flags not built yet)."""
    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                found[prefix + name] = cmd

    walk(typer.main.get_command(cli.app), "")
    return found


def setting_params(cmd: Any) -> dict[str, Any]:
    params = cmd.get_params(typer.Context(cmd))
    return {p.name: p for p in params if p.name in cmd.settings}


def shown_default(name: str) -> str | None:
    """The default as the help should show it, worked out here rather than by the code under test."""
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def test_every_command_keeps_its_setting_flags() -> None:
    found = commands()
    assert set(found) == set(EXPOSED)
    for path, cmd in found.items():
        params = setting_params(cmd)
        assert list(params) == EXPOSED[path].split(), path
        for name, param in params.items():
            assert param.opts == expected_flags(name), (path, name)


def test_no_command_has_a_flag_twice() -> None:
    for path, cmd in commands().items():
        opts = [o for p in cmd.get_params(typer.Context(cmd)) for o in [*p.opts, *p.secondary_opts] if o.startswith("-")]
        assert len(opts) == len(set(opts)), (path, sorted(o for o in opts if opts.count(o) > 1))


@pytest.mark.parametrize("path", sorted(EXPOSED))
def test_setting_help_is_the_fields_description_and_default(path: str) -> None:
    for name, param in setting_params(commands()[path]).items():
        field = Settings.model_fields[name]
        assert field.description, f"Settings.{name} needs a description: it is the --help of {param.opts[0]}"
        assert field.description in param.help, (path, name)
        default = shown_default(name)
        if default is None:
            assert "(default:" not in param.help, (path, name)  # the description says what unset means
        else:
            assert param.help.endswith(f"(default: {default})"), (path, name, param.help)


def test_help_lists_choices_bounds_and_the_xdg_default(tmp_path: Path) -> None:
    help_of = {name: p.help for name, p in setting_params(commands()["ask"]).items()}
    assert help_of["k"] == "Chunks retrieved per question. Range: 1<=x<=100. (default: 4)"
    assert "Choices: vector, bm25, hybrid. (default: hybrid)" in help_of["retriever"]
    assert "Choices: auto, llama.cpp, transformers, openai." in help_of["backend"]
    assert "Range: 0<x<=1. (default: 0.9)" in help_of["top_p"]
    assert "Range: x>=0. (default: 100)" in help_of["chunk_overlap"]
    assert "Range: x>0. (default: 200)" in help_of["max_file_mb"]
    assert "Range: 1<x<=64." in help_of["rope_scaling"]
    assert help_of["load_in_4bit"].endswith("(default: off)")
    # default_factory fields show the XDG folder of ragqa.paths (conftest points XDG_* into tmp_path)
    assert help_of["cache_dir"].endswith(f"(default: {tmp_path / 'xdg-cache' / 'ragqa'})")
    assert help_of["data_dir"].endswith(f"(default: {tmp_path / 'xdg-data' / 'ragqa'})")
    for name, field in Settings.model_fields.items():
        if name in help_of and typing.get_origin(field.annotation) is typing.Literal:
            assert f"Choices: {', '.join(typing.get_args(field.annotation))}." in help_of[name], name


def test_a_command_note_is_added_to_the_field_help() -> None:
    serve = setting_params(commands()["serve"])
    assert "serve: also the largest upload accepted." in serve["max_file_mb"].help
    assert Settings.model_fields["max_file_mb"].description in serve["max_file_mb"].help
    assert "serve:" not in setting_params(commands()["ask"])["max_file_mb"].help


def test_rendered_help_shows_the_generated_flags() -> None:
    result = CliRunner().invoke(cli.app, ["ask", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for flag in ("--threads", "-t", "--load-in-4bit", "--top-p", "--cache-dir", "--json", "--dry-run", "--kb"):
        assert flag in result.output
    assert "Chunks retrieved per question. Range: 1<=x<=100. (default: 4)" in result.output


# --------------------------------------------------------------------------- flags reach the settings


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """load_settings replaced by a recorder that stops the command right there."""
    calls: list[tuple[Any, dict[str, Any]]] = []

    def record(config_file: Any = None, **overrides: Any) -> Settings:
        calls.append((config_file, overrides))
        raise ConfigError("stopped after load_settings")

    monkeypatch.setattr(ragqa.config, "load_settings", record)
    return calls


@pytest.mark.parametrize(("argv", "overrides"), [
    (["ask", "doc.txt", "q?", "--dry-run"], {}),
    (["ask", "doc.txt", "q?", "--k", "7", "--dry-run"], {"k": 7}),
    (["ask", "doc.txt", "q?", "-k", "7", "-t", "3", "-m", "m.gguf", "-e", "emb"],
     {"k": 7, "n_threads": 3, "model": "m.gguf", "embedding_model": "emb"}),
    (["ask", "doc.txt", "q?", "--chain", "refine", "--load-in-4bit", "--max-file-mb", "1.5", "--cache-dir", "c"],
     {"chain": "refine", "load_in_4bit": True, "max_file_mb": 1.5, "cache_dir": Path("c")}),
    (["summarize", "doc.txt", "--out", "o.jsonl", "--chain", "map_reduce", "--lang", "en"],
     {"summary_chain": "map_reduce", "lang": "en"}),
    (["eval", "data.json", "-k", "5", "--chain", "stuff"], {"k": 5, "chain": "stuff"}),
    (["serve", "--port", "1", "--retriever", "bm25", "--temperature", "0"], {"retriever": "bm25", "temperature": 0.0}),
    (["index", "doc.txt", "--chunk-size", "300", "--store", "local"], {"chunk_size": 300, "store": "local"}),
    (["kb", "list", "--data-dir", "d"], {"data_dir": Path("d")}),
    (["kb", "drop", "x", "--yes", "--store", "http://h:19530"], {"store": "http://h:19530"}),
])
def test_flags_given_reach_load_settings_and_only_those(recorded, argv: list[str], overrides: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli.app, [*argv, "--config", "c.toml"])
    assert "stopped after load_settings" in result.output, result.output
    [(config, given)] = recorded
    assert config == Path("c.toml")
    assert given == overrides
    assert all(type(v) is type(overrides[k]) for k, v in given.items())  # int, float, bool, Path as the field


class RecordingPipeline:
    """Takes the real Settings and stops before any model or file is touched."""

    seen: list[Settings] = []

    def __init__(self, settings: Settings) -> None:
        self.seen.append(settings)

    def ask(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("stop here")

    def summarize_batch(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("stop here")


def test_a_flag_not_given_leaves_the_setting_to_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ragqa.pipeline, "Pipeline", RecordingPipeline)
    RecordingPipeline.seen = []
    monkeypatch.setenv("RAGQA_K", "3")
    config = tmp_path / "ragqa.toml"
    config.write_text('summary_chain = "refine"\nchunk_size = 300\n', "utf-8")
    runner = CliRunner()

    runner.invoke(cli.app, ["ask", "doc.txt", "q?", "--config", str(config)])
    runner.invoke(cli.app, ["ask", "doc.txt", "q?", "--k", "7", "--chunk-size", "500", "--config", str(config)])
    runner.invoke(cli.app, ["summarize", "doc.txt", "--out", str(tmp_path / "o.jsonl"), "--config", str(config)])
    runner.invoke(cli.app, ["summarize", "doc.txt", "--out", str(tmp_path / "o.jsonl"), "--chain", "map_reduce"])
    from_env, from_flags, summary_file, summary_flag = RecordingPipeline.seen
    assert (from_env.k, from_env.chunk_size) == (3, 300)  # RAGQA_K, then the config file
    assert (from_flags.k, from_flags.chunk_size) == (7, 500)  # flags win over both
    assert (summary_file.summary_chain, summary_file.chain) == ("refine", "stuff")
    assert (summary_flag.summary_chain, summary_flag.chain) == ("map_reduce", "stuff")


def test_a_bad_flag_value_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["ragqa", "ask", "doc.txt", "q?", "-k", "abc", "--dry-run"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("ragqa: error: Invalid value for '--k' / '-k': ")
    assert line.endswith(" ask --help)")  # the program name is pytest's here


# --------------------------------------------------------------------------- built only when needed


def test_top_level_help_does_not_import_the_settings() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['ragqa', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('ragqa', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', 'ragqa.config' in sys.modules, 'pydantic_settings' in sys.modules, file=sys.stderr)\n"
    )
    top = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=60)
    ask = subprocess.run([sys.executable, "-c", probe, "ask", "--help"], capture_output=True, text=True, timeout=60)
    assert "ask" in top.stdout and "LOADED False False" in top.stderr, top.stderr
    assert "--temperature" in ask.stdout and "LOADED True True" in ask.stderr, ask.stderr  # the probe can tell


def test_a_commands_flags_are_built_once_and_only_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, ...]] = []
    real = cli.setting_options

    def counting(names: Any, notes: Any = None) -> list[Any]:
        built.append(tuple(names))
        return real(names, notes)

    monkeypatch.setattr(cli, "setting_options", counting)
    assert CliRunner().invoke(cli.app, ["--help"]).exit_code == 0
    assert CliRunner().invoke(cli.app, ["kb", "--help"]).exit_code == 0
    assert built == []
    assert CliRunner().invoke(cli.app, ["index", "--help"]).exit_code == 0
    assert built == [tuple(EXPOSED["index"].split())]

    index = commands()["index"]
    first, again = index.get_params(typer.Context(index)), index.get_params(typer.Context(index))
    assert [id(p) for p in first] == [id(p) for p in again]  # click orders params by identity
