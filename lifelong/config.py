"""Settings: a TOML file plus ``LIFELONG_<SECTION>__<KEY>`` environment overrides, validated at start.

>>> settings = load_settings(None, environ={"LIFELONG_DATA__FEATURES": "784"})
>>> settings.data.features, settings.kafka.samples_topic
(784, 'lifelong.samples')
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from lifelong.errors import ConfigError

ENV_PREFIX = "LIFELONG_"
ENV_DELIMITER = "__"
ADMIN_TOKEN_ENV = "LIFELONG_ADMIN_TOKEN"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class KafkaSettings(_Section):
    """Where the events come from and where rejected ones go."""

    bootstrap_servers: str = "127.0.0.1:9092"
    samples_topic: str = Field("lifelong.samples", min_length=1)
    feedback_topic: str = Field("lifelong.feedback", min_length=1)
    dead_letter_topic: str = Field("lifelong.dead-letters", min_length=1)
    # Promoted, rejected and rolled-back versions, for serving processes that hot-reload.
    models_topic: str = Field("lifelong.models", min_length=1)
    predictions_topic: str = Field("lifelong.predictions", min_length=1)
    group_id: str = Field("lifelong", min_length=1)
    client_id: str = "lifelong"
    # Partitions the state holds no offset for start here.
    start_from: Literal["earliest", "latest"] = "earliest"
    create_topics: bool = True
    topic_partitions: int = Field(1, ge=1)
    max_poll_records: int = Field(5000, ge=1)
    # Consumer processes that parse records (the costly part of kafka-python) in parallel,
    # each reading a share of the partitions.
    fetchers: int = Field(2, ge=1)
    request_timeout_ms: int = Field(30_000, ge=1000)
    # The longest one broker call may hold the consumer loop (delivering dead letters, reading
    # them back); the readiness probe waits this long, at most, for the broker to answer.
    call_timeout_s: float = Field(5.0, gt=0, le=60)
    # Passed through to kafka-python for production clusters.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True


class DataSettings(_Section):
    """The shape of the inputs."""

    features: int = Field(64, ge=1)
    max_classes: int = Field(10, ge=2)
    max_message_bytes: int = Field(1_048_576, ge=64)
    # Feedback that changes a label already given: "hold" keeps it out of training until the serving
    # model or the sample's memory neighbours agree with it (dropped after ``relabel_hold_s`` of stream
    # time without), "accept" applies it at once (the last label read wins).
    relabels: Literal["hold", "accept"] = "hold"
    relabel_hold_s: float = Field(7 * 24 * 3600.0, gt=0)


class StateSettings(_Section):
    """The durable state directory and how long half-events wait for their other half."""

    dir: Path = Path("./state")
    waiting_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_waiting: int = Field(1_000_000, ge=1)


class MemorySettings(_Section):
    """The rehearsal memory: how many samples it keeps and which it keeps."""

    capacity: int = Field(10_000, ge=1)
    policy: Literal["reservoir", "class_balanced", "diversity"] = "class_balanced"
    # Stored payload type: uint8 quarters the disk for image inputs sent as uint8.
    dtype: Literal["float32", "uint8"] = "float32"
    # Near-duplicate radius of the diversity policy, in units of the median distance between samples.
    duplicate_radius: float = Field(0.05, ge=0)
    snapshot_interval_s: float = Field(60.0, gt=0)
    # The memory follows the store in rounds of at most this many labels, at most this often
    # while ingestion is busy (always when it is idle), so it never starves ingestion.
    follow_batch: int = Field(20_000, ge=1)
    follow_interval_s: float = Field(2.0, ge=0)
    seed: int = 0
    # Where searches run (novelty, neighbours, near-duplicates): "auto" uses a GPU when the installed
    # faiss is a GPU build and sees one (exact search there), else the CPU's IVF index.
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # IVF lists each CPU search visits (of about sqrt(capacity)): recall against speed.
    nprobe: int = Field(8, ge=1)
    # The least chance a new sample has to enter the full memory: 0 keeps all history alike; above 0
    # the memory leans to about the newest capacity / recency samples (for concepts that move on).
    recency: float = Field(0.0, ge=0, le=1)


class LearnerSettings(_Section):
    """The model, how an update round trains it, and the gate a candidate must pass."""

    enabled: bool = True
    # A built-in ("mlp", "cnn") or "package.module:callable" taking (features, classes, **model_options).
    model: str = Field("mlp", min_length=1)
    model_options: dict[str, Any] = {}
    # Warm start: a safetensors file whose tensors matching the model by name and shape are loaded.
    init_weights: Path | None = None
    # Parameter-name prefixes kept frozen (e.g. ["body."] trains only the output layer).
    freeze: list[str] = []
    device: str = "auto"
    amp: bool = True
    # Input scaling inside the model, saved with each version: "standardize" (running per-feature mean
    # and deviation of the samples trained on), "range" (``scaling_range`` [low, high] to [0, 1]),
    # "none", or "auto": standardize float inputs, read uint8 inputs as [0, 1] intensities.
    scaling: Literal["auto", "standardize", "range", "none"] = "auto"
    scaling_range: tuple[float, float] = (0.0, 1.0)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(0.0005, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    replay_batch_size: int = Field(32, ge=0)
    # Class-balanced steps on the memory alone after each round (at a tenth of the learning rate).
    review_steps: int = Field(0, ge=0)
    epochs: int = Field(2, ge=1)
    # asymmetric: new data's loss spans only its own classes, replay's every class seen (ER-ACE).
    loss: Literal["asymmetric", "cross_entropy"] = "asymmetric"
    # Avalanche plugins by name with their keyword arguments; online EWC by default.
    plugins: dict[str, dict[str, Any]] = {"ewc": {}}
    # Share of labeled samples (by a hash of the id) never trained on: the gate's held-out data.
    holdout: float = Field(0.1, ge=0, lt=1)
    # The most recent held-out samples the gate scores on.
    recent: int = Field(1000, ge=1)
    gate_recent_tolerance: float = Field(0.02, ge=0, le=1)
    gate_memory_tolerance: float = Field(0.02, ge=0, le=1)
    gate_min_samples: int = Field(20, ge=1)
    # Standard errors of the paired difference added to the tolerances: noise on small sets is not a drop.
    gate_z: float = Field(2.0, ge=0)
    # A held-out set whose noise (gate_z standard errors) exceeds this judges nothing: too few samples.
    gate_max_margin: float = Field(0.1, gt=0, le=1)
    # ADWIN's confidence when it looks for the point where the champion's held-out errors rose (a change).
    gate_change_delta: float = Field(0.002, gt=0, lt=1)
    # Rounds in a row that must see such a change before a candidate following it can be promoted.
    gate_change_rounds: int = Field(2, ge=1)
    keep_versions: int = Field(20, ge=1)
    seed: int = 0
    # Online heads served beside the network: streaming LDA learning every label as it is stored, one
    # per half-life in labels (0: never forgets; 100: follows a change within a few hundred labels; a
    # class that is only absent keeps its mean). [] and no linear members: the network and the prior.
    heads: list[int] = [0, 100, 1000]
    # Online logistic regressions served beside them, one per learning rate (one SGD step per label on the
    # scaled inputs; a constant rate follows a gradually moving boundary). They forget classes that stay
    # absent; the vote scores every member on held-out samples of absent classes, so it sees that.
    linear: list[float] = [0.003, 0.01, 0.05]
    # A head that never forgets until its own errors rise (river's ADWIN), then restarts from the labels
    # after the change (classes absent from them keep their means): it drops an old concept at once.
    restarting_head: bool = True
    # The restarting head runs once per bandwidth of its random features, as a multiple of the median
    # distance between the first samples (1.0: the map the other heads read). A narrower map draws finer
    # boundaries (a curved concept needs them, a near-linear one is better without): the vote picks.
    restarting_bandwidths: list[float] = [1.0, 0.5]
    # Random Fourier features the heads read beside the scaled inputs (0: the inputs alone, linear).
    head_features: int = Field(256, ge=0, le=8192)
    # Random Fourier features the head that never forgets (half-life 0) reads instead, a map of its own:
    # its covariance is estimated from every label ever given, so it affords a wider map than the heads
    # that estimate theirs from recent labels, and a wider map is a closer kernel (0: the shared map).
    # Costs memory and CPU per label quadratic in (features + lda_features): 4,096 over 784 inputs hold
    # a 190 MB covariance, its 95 MB inverse and a copy in the heads' file. "auto": 8 per input, at most
    # 4,096, or the shared map where that is no wider (4,096 for 784 inputs, 512 for 64; the shared map
    # for 32 or fewer).
    lda_features: Annotated[int, Field(ge=0, le=16384)] | Literal["auto"] = "auto"
    # Half-life, in scored predictions, of the live accuracy that weighs each member in the served vote.
    ensemble_half_life: float = Field(200.0, gt=0)

    @field_validator("model_options")
    @classmethod
    def _options_typed(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {key: _scalar(option) for key, option in value.items()}

    @field_validator("plugins")
    @classmethod
    def _plugin_options_typed(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            name: {key: _scalar(option) for key, option in options.items()} for name, options in value.items()
        }

    @field_validator("heads")
    @classmethod
    def _half_lives(cls, value: list[int]) -> list[int]:
        if any(h < 0 for h in value) or len(set(value)) != len(value):
            raise ValueError(f"needs distinct half-lives >= 0, got {value}")
        return value

    @field_validator("linear")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        if any(not r > 0 for r in value) or len(set(value)) != len(value):
            raise ValueError(f"needs distinct learning rates > 0, got {value}")
        return value

    @field_validator("restarting_bandwidths")
    @classmethod
    def _bandwidths(cls, value: list[float]) -> list[float]:
        if not value or any(not b > 0 for b in value) or len(set(value)) != len(value):
            raise ValueError(f"needs one or more distinct bandwidths > 0, got {value}")
        return value

    @field_validator("scaling_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"needs low < high, got {list(value)}")
        return value

    def learner_options(self) -> dict[str, Any]:
        """The ``AvalancheLearner`` keyword arguments these settings give."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "replay_batch_size": self.replay_batch_size,
            "review_steps": self.review_steps,
            "epochs": self.epochs,
            "loss": self.loss,
            "plugins": self.plugins,
            "device": self.device,
            "amp": self.amp,
            "scaling": self.scaling,
            "scaling_range": self.scaling_range,
            "seed": self.seed,
        }


class ScheduleSettings(_Section):
    """When update rounds run: on an interval and/or a cron expression, and when drift is detected."""

    # Seconds between scheduled rounds; 0 turns the interval off (then ``cron`` should be set).
    interval_s: float = Field(300.0, ge=0)
    # A crontab expression ("*/15 * * * *"), in the daemon's local time zone; empty: none.
    cron: str = ""
    # A scheduled or drift-triggered round is skipped while fewer new labels than this wait.
    min_new_labels: int = Field(1000, ge=1)
    # While the model is young a scheduled round waits only for as many labels as it has trained on
    # (at least this many): the first version serves early, and rounds double its data up to the above.
    first_round_labels: int = Field(100, ge=1)
    # A round takes at most this many new labels, oldest first: a backlog trains in several rounds.
    max_round_labels: int = Field(100_000, ge=1)
    on_drift: bool = True
    # A drift-triggered round runs once this many new labels wait (the new concept's first labels).
    drift_min_labels: int = Field(100, ge=1)
    # After a drift-triggered round, further drift alarms wait this long before triggering another.
    drift_cooldown_s: float = Field(600.0, ge=0)
    # SIGTERM: how long a running round may take to finish before it is abandoned (its labels retrain).
    grace_s: float = Field(20.0, ge=0)


class MonitorSettings(_Section):
    """Live (prequential) accuracy, drift signals and the automatic rollback they drive."""

    # Labeled predictions in the sliding window behind lifelong_prequential_accuracy.
    window: int = Field(500, ge=10)
    # Publish each prediction (id, version, class, scores) to [kafka] predictions_topic.
    publish_predictions: bool = False
    # Novelty: mean k-NN distance of new samples to the memory over the memory's own (1.0 = typical).
    novelty_alarm: float = Field(1.5, gt=0)
    novelty_clear: float = Field(1.2, gt=0)
    novelty_batch: int = Field(256, ge=1)
    # Label shift: Jensen-Shannon distance between the last ``window`` labels' classes and the window before.
    label_shift_alarm: float = Field(0.3, gt=0, le=1)
    label_shift_clear: float = Field(0.15, gt=0, le=1)
    # Accuracy drops: ADWIN over the prequential 0/1 errors (delta: its false-alarm confidence).
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    # An alarm stays raised at least this long (and until its score clears): hysteresis.
    alarm_hold_s: float = Field(60.0, ge=0)
    # Automatic rollback: a newly promoted version whose live accuracy falls below its predecessor's,
    # both scored on the same live samples, by more than ``rollback_margin`` + ``rollback_z`` standard
    # errors once ``rollback_min_labels`` labeled predictions are in, within its first ``rollback_window``.
    auto_rollback: bool = True
    rollback_margin: float = Field(0.05, ge=0, le=1)
    rollback_min_labels: int = Field(200, ge=1)
    rollback_window: int = Field(2000, ge=1)
    # Standard errors of the paired difference added to the margin: a few samples' luck is no fault.
    rollback_z: float = Field(2.0, ge=0)

    @field_validator("novelty_clear", "label_shift_clear")
    @classmethod
    def _clears_below_alarm(cls, value: float, info: ValidationInfo) -> float:
        key = str(info.field_name).replace("_clear", "_alarm")
        alarm = info.data.get(key)
        if alarm is not None and value > alarm:
            raise ValueError(f"must not exceed {key} ({alarm}): a raised alarm would never clear")
        return value

    @field_validator("rollback_window")
    @classmethod
    def _window_holds_min_labels(cls, value: int, info: ValidationInfo) -> int:
        least = info.data.get("rollback_min_labels")
        if least is not None and value < least:
            raise ValueError(f"must be at least rollback_min_labels ({least}): no rollback could be judged")
        return value


class HttpSettings(_Section):
    """The HTTP port: /metrics, /healthz, /readyz, GET /versions and the admin POST /rollback."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    # Bearer token for mutating endpoints (or LIFELONG_ADMIN_TOKEN). Without one the daemon refuses
    # to start unless ``admin_enabled = false`` turns the admin endpoints off.
    admin_token: SecretStr | None = None
    admin_enabled: bool = True
    # The heartbeat file `lifelong check` reads (default: <state dir>/HEARTBEAT), and its staleness limit.
    heartbeat_s: float = Field(5.0, gt=0)
    heartbeat_stale_s: float = Field(60.0, gt=0)

    @field_validator("heartbeat_stale_s")
    @classmethod
    def _stale_after_beats(cls, value: float, info: ValidationInfo) -> float:
        beat = info.data.get("heartbeat_s")
        if beat is not None and value <= beat:
            raise ValueError(f"must exceed heartbeat_s ({beat}): a live daemon would read as stale")
        return value


def _scalar(value: Any) -> Any:
    """A free-form option as typed: an environment variable's ``"2"`` or ``"true"`` is 2 or True."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return value  # a word ("online") stays a string
    return parsed if isinstance(parsed, int | float | bool) or parsed is None else value


class _Environment(EnvSettingsSource):
    """``LIFELONG_<SECTION>__<KEY>`` variables from a given mapping (the process's by default)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name.lower(): value for name, value in environ.items()}


# The file and environment the next Settings() reads (load_settings sets them for its call).
_SOURCES: ContextVar[tuple[Path | None, Mapping[str, str]] | None] = ContextVar("sources", default=None)


class Settings(BaseSettings):
    """Everything the daemon reads from its configuration.

    Sources, highest first: ``LIFELONG_<SECTION>__<KEY>`` environment variables (deeper
    tables by more ``__``: ``LIFELONG_LEARNER__PLUGINS__EWC__EWC_LAMBDA=2``; list and
    table values as JSON), then the TOML file, then the defaults. Tables merge key by key.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    data: DataSettings = DataSettings()
    state: StateSettings = StateSettings()
    memory: MemorySettings = MemorySettings()
    learner: LearnerSettings = LearnerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    monitor: MonitorSettings = MonitorSettings()
    http: HttpSettings = HttpSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path, environ = _SOURCES.get() or (None, os.environ)
        sources: list[PydanticBaseSettingsSource] = [init_settings, _Environment(settings_cls, environ)]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Read ``path`` (TOML, optional), apply the ``LIFELONG_*`` variables of ``environ`` and validate.

    Raises :class:`ConfigError` naming every offending key, before anything connects anywhere.
    """
    source = "defaults" if path is None else str(path)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {source!r} does not exist")
    environ = dict(environ)
    if token := environ.get(ADMIN_TOKEN_ENV):  # the conventional name for a secret mounted from a vault
        environ.setdefault(f"{ENV_PREFIX}HTTP{ENV_DELIMITER}ADMIN_TOKEN", token)
    for name in environ:
        section = name[len(ENV_PREFIX) :].lower().partition(ENV_DELIMITER)[0]
        if name.startswith(ENV_PREFIX) and ENV_DELIMITER in name and section not in Settings.model_fields:
            raise ConfigError(f"{name}: no [{section}] section; sections are {sorted(Settings.model_fields)}")
    sources = _SOURCES.set((None if path is None else Path(path), environ))
    try:
        return Settings()
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {source!r} is not valid TOML: {error}") from None
    except SettingsError as error:  # a list or table variable that is not JSON
        raise ConfigError(f"invalid configuration ({source}): {_not_json(environ) or error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            + (f" (got {item['input']!r:.60})" if "input" in item and item["type"] != "missing" else "")
            for item in error.errors()
        )
        raise ConfigError(f"invalid configuration ({source}): {problems}") from None
    finally:
        _SOURCES.reset(sources)


def _not_json(environ: Mapping[str, str]) -> str:
    """The ``LIFELONG_*`` variables that look like a list or table but are not JSON, said as an error."""
    bad = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or not value.lstrip().startswith(("[", "{")):
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as error:
            bad.append(f"{name} takes JSON (e.g. [0, 100]): {error}")
    return "; ".join(bad)
