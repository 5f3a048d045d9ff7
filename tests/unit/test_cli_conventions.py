"""The `mlgate` command's conventions: `--version`, `python -m service.cli`, help for every
option of every command with its default (and, for `serve`, its MLGATE_* variable), and a
`make demo` that installs the runtime alone."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from service import __version__
from service.cli import build_parser
from tests.conftest import REPO_ROOT


def commands(
    parser: argparse.ArgumentParser, name: str = "mlgate"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from commands(child, f"{name} {child_name}")


def options() -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for name, parser in commands(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                yield name, parser, action


def shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help as `--help` prints it, defaults expanded."""
    return parser._get_formatter()._expand_help(action)


def label(name: str, action: argparse.Action) -> str:
    return f"{name} {action.option_strings[0] if action.option_strings else action.dest}"


def test_every_option_of_every_command_has_help() -> None:
    missing = [label(name, a) for name, _, a in options() if not (a.help or "").strip()]
    assert missing == []


def test_every_option_with_a_default_shows_it() -> None:
    silent = [
        label(name, action)
        for name, parser, action in options()
        if action.default not in (None, False, argparse.SUPPRESS)
        and not action.required
        and "default" not in shown_help(parser, action)
    ]
    assert silent == []


def test_every_serve_option_names_its_default_and_its_variable() -> None:
    lacking = [
        label(name, action)
        for name, parser, action in options()
        if name == "mlgate serve"
        and not (
            "default" in shown_help(parser, action)
            and f"MLGATE_{action.dest.upper()}" in shown_help(parser, action)
        )
    ]
    assert lacking == []


def test_serve_help_shows_the_settings_defaults() -> None:
    [serve] = [p for name, p in commands(build_parser()) if name == "mlgate serve"]
    text = " ".join(serve.format_help().split())
    assert "HTTP port (default: 8000); env MLGATE_PORT" in text
    assert "dynamic batching (default: on); env MLGATE_BATCHING" in text


@pytest.mark.parametrize(
    ("command", "explained"),
    [
        (["features", "load"], ["entity column", "event-time", "empty cell", "Exit status"]),
        (["models", "check"], ["ONNX graphs", "feature", "exit status 1"]),
    ],
)
def test_load_and_check_explain_their_arguments(
    command: list[str], explained: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in explained:
        assert words in text


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60
    )


def test_version_is_printed_by_the_command_and_by_python_m() -> None:
    for done in (
        run(str(os.path.join(os.path.dirname(sys.executable), "mlgate")), "--version"),
        run(sys.executable, "-m", "service.cli", "--version"),
    ):
        assert (done.returncode, done.stdout) == (0, f"mlgate {__version__}\n")


def test_make_demo_installs_the_runtime_alone_and_test_the_extras() -> None:
    demo = run("make", "-n", "-B", "demo").stdout
    test = run("make", "-n", "-B", "lint").stdout
    demo_installs = [line for line in demo.splitlines() if "pip install" in line and "-e" in line]
    test_installs = [line for line in test.splitlines() if "pip install" in line and "-e" in line]
    assert demo_installs == [".venv/bin/pip install -q -e '.'"]
    assert test_installs == [".venv/bin/pip install -q -e '.[dev,bench]'"]
    assert ".venv/.installed-runtime" in demo and ".venv/.installed\n" in test


def test_the_readme_says_how_to_pick_the_demo_port() -> None:
    assert "`MLGATE_PORT=8080 make demo`" in (REPO_ROOT / "README.md").read_text()
