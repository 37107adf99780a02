"""The command line: help everywhere, version, and bad configs that fail at start naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lifelong import __version__
from lifelong.daemon.cli import build_parser, main

COMMANDS = ["run", "check", "status", "forget", "versions", "rollback", "produce", "broker", "demo"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["top", *COMMANDS])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lifelong" in out
    assert len(out.splitlines()) > 3


def test_every_subcommand_is_listed_with_help() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    choices = actions[0].choices  # type: ignore[attr-defined]
    assert set(COMMANDS) <= set(choices)
    assert all(choices[c].description for c in COMMANDS)


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[data]\nfeatures = -3\n")
    done = subprocess.run(
        [sys.executable, "-m", "lifelong.daemon.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "data.features" in done.stderr


def test_status_without_state_says_so(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "none"}"\n')
    assert main(["status", "--config", str(config)]) == 2
    assert "no state" in capsys.readouterr().err


def test_the_daemon_refuses_to_start_without_an_admin_token(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "no-token.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "lifelong.daemon.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "http.admin_token" in done.stderr and "LIFELONG_ADMIN_TOKEN" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before touching anything
