"""Settings: TOML plus LIFELONG_* overrides; a bad config fails at start naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.config import load_settings
from lifelong.errors import ConfigError


def test_defaults_match_the_documented_keys() -> None:
    settings = load_settings(None, environ={})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.samples_topic == "lifelong.samples"
    assert settings.kafka.feedback_topic == "lifelong.feedback"
    assert settings.kafka.dead_letter_topic == "lifelong.dead-letters"
    assert settings.kafka.group_id == "lifelong"
    assert (settings.data.features, settings.data.max_classes) == (64, 10)
    assert settings.state.dir == Path("state")


def test_toml_then_environment(make_config) -> None:  # type: ignore[no-untyped-def]
    path = make_config(kafka={"samples_topic": "in"}, data={"features": 784, "max_classes": 3})
    settings = load_settings(
        path, environ={"LIFELONG_DATA__MAX_CLASSES": "5", "LIFELONG_STATE__DIR": "/tmp/x", "OTHER": "1"}
    )
    assert settings.kafka.samples_topic == "in"
    assert settings.data.features == 784
    assert settings.data.max_classes == 5
    assert settings.state.dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("sections", "environ", "key"),
    [
        ({"data": {"features": 0}}, {}, "data.features"),
        ({"data": {"max_classes": "many"}}, {}, "data.max_classes"),
        ({"kafka": {"samples_topic": ""}}, {}, "kafka.samples_topic"),
        ({"kafka": {"bootstrap_server": "x:1"}}, {}, "kafka.bootstrap_server"),
        ({"kafka": {"security_protocol": "TLS"}}, {}, "kafka.security_protocol"),
        ({}, {"LIFELONG_STATE__MAX_WAITING": "-1"}, "state.max_waiting"),
        ({}, {"LIFELONG_NOPE__KEY": "1"}, "nope"),
        ({}, {"LIFELONG_LEARNER__HEADS": "[0, 100"}, "LIFELONG_LEARNER__HEADS"),
        ({}, {"LIFELONG_LEARNER__LINEAR": "[0.01, 0.01]"}, "learner.linear"),
        ({}, {"LIFELONG_LEARNER__RESTARTING_BANDWIDTHS": "[]"}, "learner.restarting_bandwidths"),
        (
            {"monitor": {"novelty_alarm": 1.2, "novelty_clear": 1.5}},
            {},
            "monitor.novelty_clear: Value error, must not exceed novelty_alarm",
        ),
        ({}, {"LIFELONG_MONITOR__LABEL_SHIFT_CLEAR": "0.5"}, "monitor.label_shift_clear"),
        ({"monitor": {"rollback_window": 100}}, {}, "monitor.rollback_window"),
        ({"http": {"heartbeat_s": 90}}, {}, "http.heartbeat_stale_s"),
        ({"learner": {"lda_features": "wide"}}, {}, "learner.lda_features"),
        ({}, {"LIFELONG_LEARNER__LDA_FEATURES": "-1"}, "learner.lda_features"),
    ],
    ids=[
        "zero features",
        "classes not int",
        "empty topic",
        "misspelt key",
        "bad protocol",
        "env negative",
        "unknown section",
        "env list not JSON",
        "env list repeats",
        "no restarting bandwidth",
        "novelty clears above its alarm",
        "label shift clears above its alarm",
        "rollback window below its minimum",
        "heartbeat stale before a beat",
        "wide map neither auto nor a count",
        "wide map negative",
    ],
)
def test_invalid_config_names_the_key(make_config, sections, environ, key) -> None:  # type: ignore[no-untyped-def]
    path = make_config(**sections)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path, environ=environ)


def test_list_settings_from_the_environment_as_json(make_config) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(
        make_config(),
        environ={"LIFELONG_LEARNER__HEADS": "[0, 100, 1000]", "LIFELONG_LEARNER__LINEAR": "[0.05]"},
    )
    assert settings.learner.heads == [0, 100, 1000]
    assert settings.learner.linear == [0.05]


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_settings(None, environ={"LIFELONG_DATA__FEATURES": "x"})
