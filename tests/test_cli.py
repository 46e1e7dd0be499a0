"""The `kvmemo` command line as a newcomer meets it: help for every flag with its default once, a version, one
meaning per flag name, one set of sampling defaults, and prompts from stdin or a file."""

import argparse
import importlib.metadata
import os
import pty
import subprocess
import sys
import tty
from pathlib import Path

import pytest

from service.cli import SUBCOMMANDS, build_parser, main
from service.cli_text import escape_controls
from service.engine.sampling_params import SamplingParams
from service.commands.engine_args import engine_config_from_args
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return choices[name]


@pytest.mark.parametrize("name", [None, *SUBCOMMANDS])
def test_every_flag_has_help_that_names_its_default_once(name):
    parser = build_parser([]) if name is None else subparser(name)
    for action in parser._actions:
        # As the formatter prints it: %(default)s expanded.
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        where = f"kvmemo {name or ''} {'/'.join(action.option_strings) or action.dest}"
        assert text.strip(), f"{where} has no help"
        assert text.count("(default:") <= 1, f"{where}: {text!r}"
        assert "(default: None)" not in text, f"{where}: {text!r}"
    help_text = parser.format_help()
    assert help_text.count("(default:") == sum(
        parser._get_formatter()._expand_help(a).count("(default:") for a in parser._actions)


def test_top_level_help_says_what_kvmemo_is_and_where_to_read_more(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "kvmemo serves Llama-family language models" in out and "README.md" in out
    for name in SUBCOMMANDS:
        assert f" {name} " in out
    assert "which exposes" not in out  # the module docstring's first line, cut mid-sentence


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kvmemo {importlib.metadata.version('kvmemo')}"


def test_seed_is_the_sampling_seed_and_the_weights_have_their_own(monkeypatch):
    for name in ("run", "generate"):
        assert subparser(name).parse_args(["hi", "--seed", "5"]).seed == 5
    args = subparser("run").parse_args(["hi", "--seed", "5", "--weights-seed", "3"])
    assert (args.seed, engine_config_from_args(args).weights_seed) == (5, 3)
    monkeypatch.setenv("KVMEMO_WEIGHTS_SEED", "9")
    assert engine_config_from_args(subparser("serve").parse_args([])).weights_seed == 9
    with pytest.raises(SystemExit):
        subparser("run").parse_args(["hi", "--sampling-seed", "5"])


def test_a_kubernetes_service_link_in_the_env_is_not_a_setting(monkeypatch):
    """A Service named kvmemo injects KVMEMO_PORT=tcp://<ip>:<port> into pods that keep service links on;
    --port's env fallback ignores it rather than failing on it. A real bad value still fails."""
    from service.commands.serve import server_value

    monkeypatch.setenv("KVMEMO_PORT", "tcp://10.96.0.12:50051")
    assert server_value(subparser("serve").parse_args([]), "port") == 50051
    assert server_value(subparser("serve").parse_args(["--port", "6000"]), "port") == 6000
    monkeypatch.setenv("KVMEMO_PORT", "fifty")
    with pytest.raises(ConfigError, match="KVMEMO_PORT='fifty' is not a valid int"):
        server_value(subparser("serve").parse_args([]), "port")


def test_run_generate_and_the_server_share_their_sampling_defaults():
    from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
    from service.server.kvmemo_api import sampling_params

    fields = ("max_tokens", "temperature", "top_p", "top_k", "seed")
    server = sampling_params(pb.GenerateRequest(text="hi"))
    engine = SamplingParams()
    for name in ("run", "generate"):
        args = subparser(name).parse_args(["hi"])
        assert [getattr(args, f) for f in fields] == [getattr(server, f) for f in fields] \
            == [getattr(engine, f) for f in fields], name
    assert server.temperature > 0  # the README's `kvmemo run` printed nothing when run was greedy


def kvmemo(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KVMEMO_")}, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, timeout=300, env=env,
                          **kw)


RUN = ("--model", "tiny", "--seed", "1", "--temperature", "1", "--max-tokens", "24", "--device", "cpu", "--max-model-len", "128",
       "--max-num-seqs", "2", "--plan-store", "none")


def test_run_reads_the_prompt_from_an_argument_a_file_or_stdin(tmp_path):
    prompt = "Once upon a time"
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    given = kvmemo("run", prompt, *RUN)
    assert given.returncode == 0, given.stderr
    from_file = kvmemo("run", f"@{tmp_path / 'prompt.txt'}", *RUN)
    from_stdin = kvmemo("run", "-", *RUN, input=prompt.encode())
    assert from_file.stdout == given.stdout == from_stdin.stdout  # the same prompt and seed: the same text
    missing = kvmemo("run", f"@{tmp_path / 'nope.txt'}", *RUN)
    assert missing.returncode == 2 and b"nope.txt" in missing.stderr


def test_run_escapes_control_characters_on_a_terminal_only():
    """The random `tiny` model emits control bytes: a pipe gets them exactly, a terminal sees them escaped."""
    piped = kvmemo("run", "Once upon a time", *RUN)
    text = piped.stdout.decode()
    assert escape_controls(text) != text, f"this seed's text has no control character to escape: {text!r}"
    primary, secondary = pty.openpty()
    tty.setraw(secondary)  # no newline translation: the bytes as the program wrote them
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KVMEMO_")}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "Once upon a time", *RUN],
                            stdout=secondary, stderr=subprocess.DEVNULL, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=300) == 0
    assert b"".join(chunks).decode() == escape_controls(text)
