"""The command line: help everywhere, version, and bad configs that fail at start naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong import __version__
from lifelong.daemon.cli import build_parser, main
from tests.test_store import damage_middle, filled

COMMANDS = ["run", "config", "check", "status", "forget", "versions", "rollback", "produce", "broker", "demo"]


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


def run_with(config: Path) -> subprocess.CompletedProcess[str]:
    """``lifelong run --config config`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "lifelong.daemon.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[data]\nfeatures = -3\n")
    done = run_with(config)
    assert done.returncode == 2
    assert "data.features" in done.stderr


def test_config_prints_the_effective_settings_with_environment_overrides_and_secrets_masked(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lifelong.toml"
    config.write_text("[learner]\nheads = [0]\n[learner.plugins.lwf]\nalpha = 0.5\n[http]\nport = 9999\n")
    monkeypatch.setenv("LIFELONG_LEARNER__FREEZE", '["body."]')
    monkeypatch.setenv("LIFELONG_LEARNER__PLUGINS__EWC__EWC_LAMBDA", "2")
    monkeypatch.setenv("LIFELONG_HTTP__PORT", "9000")
    monkeypatch.setenv("LIFELONG_ADMIN_TOKEN", "s3cret")
    assert main(["config", "--config", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    effective = json.loads(out)
    learner = effective["learner"]
    assert learner["freeze"] == ["body."] and learner["heads"] == [0]
    # Tables merge key by key: the file's plugin stays beside the one the environment adds, typed.
    assert learner["plugins"] == {"lwf": {"alpha": 0.5}, "ewc": {"ewc_lambda": 2}}
    assert effective["http"]["port"] == 9000  # the environment over the file
    assert "s3cret" not in out and effective["http"]["admin_token"] == "**********"


def test_a_config_whose_alarm_clears_above_its_level_stops_run_naming_both_keys(
    tmp_path: Path, clean_env: None
) -> None:
    config = tmp_path / "lifelong.toml"
    # A broker nobody listens on: the error must come before any connection is tried.
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:9"\n[monitor]\nnovelty_clear = 2.0\n')
    done = run_with(config)
    assert done.returncode == 2
    assert "monitor.novelty_clear" in done.stderr and "novelty_alarm" in done.stderr
    assert "Traceback" not in done.stderr


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


def state_config(tmp_path: Path) -> str:
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n')
    return str(config)


def test_check_state_on_an_intact_store(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = filled(tmp_path / "state", samples=1_000)
    assert main(["check", "--state", "--config", state_config(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "problems": [], "file": str(path)}


def test_check_state_on_a_damaged_store(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = filled(tmp_path / "state")
    damage_middle(path)
    assert main(["check", "--state", "--config", state_config(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["file"]) == (False, str(path))
    assert report["problems"] and all(isinstance(problem, str) for problem in report["problems"])


def test_status_of_a_damaged_store_exits_2_with_one_line_naming_it(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = filled(tmp_path / "state")
    damage_middle(path)
    assert main(["status", "--config", state_config(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and "damaged" in line and "lifelong check --state" in line
