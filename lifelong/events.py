"""The wire contract: decode and validate message bytes into typed events or a Rejection.

Wire format version 1 (see README, "The wire contract"):

samples topic
    ``{"id": str, "x": [number, ...] | {"dtype": "float32"|"uint8", "b64": str},
    "y": int | null, "ts": epoch-ms, "meta": object, "v": 1}``; ``y``, ``ts``,
    ``meta`` and ``v`` are optional. The binary form of ``x`` is the base64 of
    the little-endian values.
feedback topic
    ``{"id": str, "y": int, "ts": epoch-ms, "v": 1}``; ``ts`` and ``v`` optional.

Unknown fields are ignored so that producers can add their own. Arrays and
objects nest at most :data:`MAX_DEPTH` levels, checked before parsing. Decoding
never raises, whatever the bytes: it returns a :class:`Rejection` whose
``reason`` is one of the fixed :class:`Reason` codes (safe as a metric label)
and whose ``detail`` says what was wrong in words. An exception nobody foresaw
while decoding one message makes that message a Rejection too (``undecodable``),
so a poison pill is dead-lettered instead of stopping the consumer.

>>> decoder = Decoder(features=2, max_classes=3)
>>> decoder.decode_sample(b'{"id": "a", "x": [0.5, 1], "y": 2}').y
2
>>> decoder.decode_feedback(b'{"id": "a", "y": 7}').reason
<Reason.BAD_LABEL: 'bad_label'>
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import numpy as np

WIRE_VERSION = 1
MAX_ID_LENGTH = 512
MAX_DEPTH = 64
"""How deeply arrays and objects may nest in a message, the top-level object being level 1.

Deeper messages are rejected as ``too_deep`` before they reach the parser, which
recurses once per level and would otherwise raise RecursionError on them.
"""

_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


class Reason(StrEnum):
    """Why a message was rejected; each value is a stable dead-letter header and metric label."""

    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_ID = "missing_id"
    BAD_ID = "bad_id"
    BAD_X = "bad_x"
    WRONG_LENGTH = "wrong_length"
    NON_FINITE = "non_finite"
    BAD_LABEL = "bad_label"
    BAD_TS = "bad_ts"
    BAD_META = "bad_meta"
    TOO_DEEP = "too_deep"
    UNDECODABLE = "undecodable"  # an unexpected exception while decoding; the detail names it


class Rejection(msgspec.Struct, frozen=True):
    """A message that broke the wire contract, and why."""

    reason: Reason
    detail: str


class Sample(msgspec.Struct, frozen=True):
    """One input, with its label when the producer already knows it.

    ``x`` keeps its wire dtype: float32, or uint8 for the compact image form.
    """

    id: str
    x: np.ndarray[Any, np.dtype[Any]]
    y: int | None = None
    ts: int | None = None
    meta: dict[str, Any] | None = None


class Feedback(msgspec.Struct, frozen=True):
    """A (late) label for the sample with the same id."""

    id: str
    y: int
    ts: int | None = None


# What the wire carries; msgspec checks the types in C, the Decoder the rest.
_Timestamp = Annotated[int, msgspec.Meta(ge=0)]
_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]


class _BinaryX(msgspec.Struct):
    dtype: Literal["float32", "uint8"]
    b64: str


class _SampleWire(msgspec.Struct):
    id: _Id
    x: list[float] | _BinaryX
    y: int | None = None
    ts: _Timestamp | None = None
    meta: dict[str, Any] | None = None
    v: int = WIRE_VERSION


class _FeedbackWire(msgspec.Struct):
    id: _Id
    y: int
    ts: _Timestamp | None = None
    v: int = WIRE_VERSION


_FIELD_REASONS = {
    "id": Reason.BAD_ID,
    "x": Reason.BAD_X,
    "y": Reason.BAD_LABEL,
    "ts": Reason.BAD_TS,
    "meta": Reason.BAD_META,
    "v": Reason.UNSUPPORTED_VERSION,
}
_PATH = re.compile(r"at `\$\.(\w+)")
_MISSING = re.compile(r"missing required field `(\w+)`")


def _reason_for(error: msgspec.ValidationError) -> Reason:
    message = str(error)
    path = _PATH.search(message)
    if path is not None:
        field = path.group(1)
        if field == "x" and ("out of range" in message or "Expected `float` " in message):
            return Reason.NON_FINITE
        return _FIELD_REASONS.get(field, Reason.NOT_OBJECT)
    missing = _MISSING.search(message)
    if missing is not None:
        field = missing.group(1)
        return Reason.MISSING_ID if field == "id" else _FIELD_REASONS.get(field, Reason.NOT_OBJECT)
    return Reason.NOT_OBJECT


class _Invalid(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        self.rejection = Rejection(reason, detail)


def _undecodable(error: Exception) -> Rejection:
    return Rejection(Reason.UNDECODABLE, f"decoding raised {type(error).__name__}: {error}")


_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but the brackets
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as int8: +1 opens a level, -1 closes one


def _opens_more_than(value: bytes, limit: int) -> bool:
    """Whether ``value`` holds more than ``limit`` opening brackets, in strings or not.

    The cheap test that spares a usual message the exact scan: each ``find`` is a
    memchr, several times faster than ``bytes.count`` on a sample of a few kB.
    """
    count = 0
    for opener in (b"[", b"{"):
        at = value.find(opener)
        while at != -1:
            count += 1
            if count > limit:
                return True
            at = value.find(opener, at + 1)
    return False


def _depth(value: bytes) -> int:
    """How deeply ``value`` nests arrays and objects, brackets inside strings aside.

    Exact for JSON; for a message that is not, never less than the depth a parser
    reaches before it stops. Only C-speed passes over the bytes, however hostile.
    """
    # Backslashes occur only inside strings in JSON, so dropping the escaped backslashes and then
    # the escaped quotes leaves quotes that only open and close strings: what lies outside them is
    # every other piece. An unterminated string's tail counts as inside: the parser stops there.
    unescaped = value.replace(b"\\\\", b"").replace(b'\\"', b"")
    steps = b"".join(unescaped.split(b'"')[::2]).translate(_STEPS, _BRACKETS)
    if not steps:
        return 0
    return int(np.frombuffer(steps, dtype=np.int8).cumsum(dtype=np.int64).max())


class Decoder:
    """Decodes samples and feedback for one configured input shape.

    Example::

        decoder = Decoder(features=64, max_classes=10)
        event = decoder.decode_sample(record_value)
        if isinstance(event, Rejection):
            ...  # dead-letter it with event.reason
    """

    def __init__(self, *, features: int, max_classes: int, max_message_bytes: int = 1_048_576) -> None:
        for name, value, low in (
            ("features", features, 1),
            ("max_classes", max_classes, 2),
            ("max_message_bytes", max_message_bytes, 16),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value!r}")
        self.features = features
        self.max_classes = max_classes
        self.max_message_bytes = max_message_bytes
        self._samples = msgspec.json.Decoder(_SampleWire)
        self._pack_x = struct.Struct(f"<{features}f").pack
        self._feedback = msgspec.json.Decoder(_FeedbackWire)

    def decode_sample(self, value: bytes | None) -> Sample | Rejection:
        """Decode one samples-topic message."""
        try:
            wire, x, dtype = self._sample(value)
            x_array = np.frombuffer(x, dtype=dtype).copy()  # writable, like any array a caller builds
            return Sample(id=wire.id, x=x_array, y=wire.y, ts=wire.ts, meta=wire.meta)
        except _Invalid as invalid:
            return invalid.rejection
        except Exception as error:  # no message's exception escapes: it becomes its dead letter
            return _undecodable(error)

    def decode_sample_row(self, value: bytes | None) -> SampleRow | Rejection:
        """Decode one samples-topic message straight into its storage row (the ingestion path)."""
        try:
            wire, x, dtype = self._sample(value)
            meta = None if wire.meta is None else msgspec.json.encode(wire.meta).decode()
            return (wire.id, x, dtype, wire.y, wire.ts, meta)
        except _Invalid as invalid:
            return invalid.rejection
        except Exception as error:
            return _undecodable(error)

    def _sample(self, value: bytes | None) -> tuple[_SampleWire, bytes, str]:
        wire: _SampleWire = self._wire(self._samples, value)
        _nonempty(wire.id)
        if wire.y is not None:
            self._label(wire.y)
        raw = wire.x
        if isinstance(raw, list):
            if len(raw) != self.features:
                raise _Invalid(Reason.WRONG_LENGTH, f"x has {len(raw)} values, expected {self.features}")
            # msgspec refuses numbers beyond float64 (JSON has no NaN or infinity); struct packs
            # little-endian float32 without numpy's per-call overhead and refuses what overflows it.
            try:
                return wire, self._pack_x(*raw), "<f4"
            except OverflowError:
                raise _Invalid(Reason.NON_FINITE, "x holds a value beyond float32's range") from None
        x = _binary(raw)
        if x.shape[0] != self.features:
            raise _Invalid(Reason.WRONG_LENGTH, f"x has {x.shape[0]} values, expected {self.features}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise _Invalid(Reason.NON_FINITE, "x holds NaN or infinity")
        return wire, x.tobytes(), x.dtype.str

    def decode_feedback(self, value: bytes | None) -> Feedback | Rejection:
        """Decode one feedback-topic message."""
        try:
            wire = self._wire(self._feedback, value)
            return Feedback(id=_nonempty(wire.id), y=self._label(wire.y), ts=wire.ts)
        except _Invalid as invalid:
            return invalid.rejection
        except Exception as error:
            return _undecodable(error)

    def _wire(self, decoder: msgspec.json.Decoder[Any], value: bytes | None) -> Any:
        if value is None:
            raise _Invalid(Reason.NOT_JSON, "empty message (null value)")
        if len(value) > self.max_message_bytes:
            raise _Invalid(
                Reason.OVERSIZED,
                f"message of {len(value)} bytes exceeds max_message_bytes={self.max_message_bytes}",
            )
        # Each test is cheaper than the next and rules out nearly every message: short ones cannot
        # nest that deep, and most hold a handful of brackets.
        if (
            len(value) > MAX_DEPTH
            and _opens_more_than(value, MAX_DEPTH)
            and (depth := _depth(value)) > MAX_DEPTH
        ):
            raise _Invalid(
                Reason.TOO_DEEP,
                f"arrays and objects nest {depth} levels deep, more than MAX_DEPTH={MAX_DEPTH}",
            )
        try:
            wire = decoder.decode(value)
        except msgspec.ValidationError as error:
            raise _Invalid(_reason_for(error), str(error)) from None
        except msgspec.DecodeError as error:
            raise _Invalid(Reason.NOT_JSON, str(error)) from None
        except RecursionError as error:  # the parser ran out of stack below MAX_DEPTH: still too deep
            raise _Invalid(
                Reason.TOO_DEEP, f"nesting exhausted the parser's recursion limit: {error}"
            ) from None
        if wire.v != WIRE_VERSION:
            raise _Invalid(
                Reason.UNSUPPORTED_VERSION,
                f"wire version {wire.v} is not supported (this daemon reads v={WIRE_VERSION})",
            )
        return wire

    def _label(self, raw: int) -> int:
        if not 0 <= raw < self.max_classes:
            raise _Invalid(Reason.BAD_LABEL, f"label y={raw} is outside [0, {self.max_classes})")
        return raw


def _nonempty(id: str) -> str:
    if not id:
        raise _Invalid(Reason.MISSING_ID, "id is empty")
    return id


def _binary(raw: _BinaryX) -> np.ndarray[Any, np.dtype[Any]]:
    dtype = _DTYPES[raw.dtype]
    try:
        buffer = base64.b64decode(raw.b64, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(Reason.BAD_X, "binary x 'b64' is not valid base64") from None
    if len(buffer) % dtype.itemsize:
        raise _Invalid(Reason.WRONG_LENGTH, f"{len(buffer)} bytes is not a whole number of {dtype.name}")
    return np.frombuffer(buffer, dtype=dtype)


SampleRow = tuple[str, bytes, str, int | None, int | None, str | None]
"""A sample as the store keeps it: id, x's bytes, x's dtype, y, ts, meta as JSON text."""

FeedbackRow = tuple[str, int]
"""A feedback event as the store applies it: id, y."""


class Decoded(NamedTuple):
    """One partition's records decoded: rows of the accepted ones, and why the others were rejected."""

    feedback: bool
    rows: list[Any]  # SampleRow or FeedbackRow
    positions: list[int]  # the record index of each row
    rejections: list[tuple[int, str, str]]  # (record index, reason, detail)


class TopicDecoder:
    """Decodes a batch of one topic's records into rows; picklable, so fetcher processes can run it.

    Example::

        decode = TopicDecoder(samples_topic="s", feedback_topic="f", features=64, max_classes=10)
        decoded = decode("s", [b'{"id": "a", "x": [...]}'])
    """

    def __init__(
        self,
        *,
        samples_topic: str,
        feedback_topic: str,
        features: int,
        max_classes: int,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        self.samples_topic = samples_topic
        self.feedback_topic = feedback_topic
        self.decoder = Decoder(
            features=features, max_classes=max_classes, max_message_bytes=max_message_bytes
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _topic_decoder,
            (
                self.samples_topic,
                self.feedback_topic,
                self.decoder.features,
                self.decoder.max_classes,
                self.decoder.max_message_bytes,
            ),
        )

    def __call__(self, topic: str, values: list[bytes | None]) -> Decoded:
        """Decode ``values`` read from ``topic`` (the feedback topic, or else the samples topic)."""
        feedback = topic == self.feedback_topic
        decode = self.decoder.decode_feedback if feedback else self.decoder.decode_sample_row
        rows: list[Any] = []
        positions: list[int] = []
        rejections: list[tuple[int, str, str]] = []
        for position, value in enumerate(values):
            try:
                event = decode(value)
            except Exception as error:  # the last line of defence: one message never fails a batch
                event = _undecodable(error)
            if type(event) is Rejection:
                rejections.append((position, event.reason.value, event.detail))
                continue
            rows.append(event if not feedback else (event.id, event.y))  # type: ignore[union-attr]
            positions.append(position)
        return Decoded(feedback, rows, positions, rejections)


def _topic_decoder(
    samples_topic: str, feedback_topic: str, features: int, max_classes: int, max_message_bytes: int
) -> TopicDecoder:
    return TopicDecoder(
        samples_topic=samples_topic,
        feedback_topic=feedback_topic,
        features=features,
        max_classes=max_classes,
        max_message_bytes=max_message_bytes,
    )


def encode_sample(
    id: str,
    x: Any,
    y: int | None = None,
    *,
    ts: int | None = None,
    meta: dict[str, Any] | None = None,
    binary: bool = False,
) -> bytes:
    """Encode a sample in the wire format (for producers, tests and the demo)."""
    array = np.asarray(x)
    body: dict[str, Any] = {"id": id, "y": y}
    if binary:
        dtype = "uint8" if array.dtype == np.uint8 else "float32"
        raw = array.astype(_DTYPES[dtype], copy=False).tobytes()
        body["x"] = {"dtype": dtype, "b64": base64.b64encode(raw).decode("ascii")}
    else:
        body["x"] = [float(v) for v in array.ravel()]
    if ts is not None:
        body["ts"] = ts
    if meta is not None:
        body["meta"] = meta
    return msgspec.json.encode(body)


def encode_feedback(id: str, y: int, *, ts: int | None = None) -> bytes:
    """Encode a feedback event in the wire format."""
    body: dict[str, Any] = {"id": id, "y": y}
    if ts is not None:
        body["ts"] = ts
    return msgspec.json.encode(body)


__all__ = [
    "MAX_DEPTH",
    "WIRE_VERSION",
    "Decoded",
    "Decoder",
    "Feedback",
    "FeedbackRow",
    "Reason",
    "Rejection",
    "Sample",
    "SampleRow",
    "TopicDecoder",
    "encode_feedback",
    "encode_sample",
]
