"""The wire contract: what is accepted, what is rejected and why; no input crashes the decoder."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.events import (
    Decoder,
    Feedback,
    Reason,
    Rejection,
    Sample,
    encode_feedback,
    encode_sample,
)

DECODER = Decoder(features=4, max_classes=3, max_message_bytes=4096)


def sample(**fields: object) -> bytes:
    body: dict[str, object] = {"id": "a", "x": [0.0, 1.0, 2.5, -3]}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_valid_sample_keeps_fields() -> None:
    event = DECODER.decode_sample(sample(y=2, ts=1700000000000, meta={"src": "web"}))
    assert isinstance(event, Sample)
    assert event.id == "a" and event.y == 2 and event.ts == 1700000000000
    assert event.meta == {"src": "web"}
    assert event.x.dtype == np.float32
    assert event.x.tolist() == [0.0, 1.0, 2.5, -3.0]
    np.divide(event.x, 2, out=event.x)  # callers may normalize in place
    assert event.x.tolist() == [0.0, 0.5, 1.25, -1.5]


def test_unlabeled_sample_and_unknown_fields() -> None:
    event = DECODER.decode_sample(sample(y=None, extra="ignored"))
    assert isinstance(event, Sample) and event.y is None


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_binary_x_round_trips(dtype: str) -> None:
    x = np.array([1, 2, 3, 250], dtype=dtype)
    event = DECODER.decode_sample(encode_sample("img", x, 1, binary=True))
    assert isinstance(event, Sample)
    assert event.x.dtype == (np.uint8 if dtype == "uint8" else np.float32)
    assert event.x.tolist() == x.tolist()


def test_feedback() -> None:
    assert DECODER.decode_feedback(encode_feedback("a", 2, ts=5)) == Feedback("a", 2, 5)


REJECTED_SAMPLES = {
    "not json": (b"{nope", Reason.NOT_JSON),
    "null value": (None, Reason.NOT_JSON),
    "array": (b"[1, 2]", Reason.NOT_OBJECT),
    "string": (b'"hello"', Reason.NOT_OBJECT),
    "missing id": (sample(id=...), Reason.MISSING_ID),
    "empty id": (sample(id=""), Reason.MISSING_ID),
    "numeric id": (sample(id=7), Reason.BAD_ID),
    "long id": (sample(id="i" * 600), Reason.BAD_ID),
    "missing x": (sample(x=...), Reason.BAD_X),
    "x is a string": (sample(x="1,2,3,4"), Reason.BAD_X),
    "x holds a string": (sample(x=[1, "2", 3, 4]), Reason.BAD_X),
    "x holds a bool": (sample(x=[1, True, 3, 4]), Reason.BAD_X),
    "x holds null": (sample(x=[1, None, 3, 4]), Reason.BAD_X),
    "x nested": (sample(x=[[1], [2], [3], [4]]), Reason.BAD_X),
    "x too short": (sample(x=[1, 2, 3]), Reason.WRONG_LENGTH),
    "x too long": (sample(x=[1, 2, 3, 4, 5]), Reason.WRONG_LENGTH),
    "x overflows float64": (b'{"id": "a", "x": [1e999, 0, 0, 0]}', Reason.NON_FINITE),
    "x NaN literal": (b'{"id": "a", "x": [NaN, 0, 0, 0]}', Reason.NOT_JSON),
    "x overflows float32": (sample(x=[1e300, 0, 0, 0]), Reason.NON_FINITE),
    "label too big": (sample(y=3), Reason.BAD_LABEL),
    "label negative": (sample(y=-1), Reason.BAD_LABEL),
    "label float": (sample(y=1.5), Reason.BAD_LABEL),
    "label bool": (sample(y=True), Reason.BAD_LABEL),
    "label string": (sample(y="1"), Reason.BAD_LABEL),
    "ts negative": (sample(ts=-5), Reason.BAD_TS),
    "ts string": (sample(ts="yesterday"), Reason.BAD_TS),
    "meta list": (sample(meta=[1]), Reason.BAD_META),
    "future version": (sample(v=2), Reason.UNSUPPORTED_VERSION),
    "oversized": (sample(meta={"pad": "p" * 5000}), Reason.OVERSIZED),
    "binary bad dtype": (sample(x={"dtype": "int64", "b64": "AAAA"}), Reason.BAD_X),
    "binary bad base64": (sample(x={"dtype": "uint8", "b64": "!!!"}), Reason.BAD_X),
    "binary wrong length": (
        sample(x={"dtype": "uint8", "b64": base64.b64encode(b"abc").decode()}),
        Reason.WRONG_LENGTH,
    ),
    "binary float NaN": (
        sample(
            x={
                "dtype": "float32",
                "b64": base64.b64encode(np.array([math.nan, 0, 0, 0], "<f4").tobytes()).decode(),
            }
        ),
        Reason.NON_FINITE,
    ),
}


@pytest.mark.parametrize(("value", "reason"), REJECTED_SAMPLES.values(), ids=REJECTED_SAMPLES.keys())
def test_rejected_samples_say_why(value: bytes | None, reason: Reason) -> None:
    event = DECODER.decode_sample(value)
    assert isinstance(event, Rejection)
    assert event.reason is reason
    assert event.detail


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"id": "a"}', Reason.BAD_LABEL),
        (b'{"id": "a", "y": null}', Reason.BAD_LABEL),
        (b'{"id": "a", "y": 9}', Reason.BAD_LABEL),
        (b'{"y": 1}', Reason.MISSING_ID),
        (b"17", Reason.NOT_OBJECT),
    ],
    ids=["no label", "null label", "label out of range", "no id", "number"],
)
def test_rejected_feedback_says_why(value: bytes, reason: Reason) -> None:
    event = DECODER.decode_feedback(value)
    assert isinstance(event, Rejection) and event.reason is reason


def test_decoder_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_classes"):
        Decoder(features=4, max_classes=1)
    with pytest.raises(TypeError, match="features"):
        Decoder(features=4.0, max_classes=3)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.sampled_from(["id", "x", "y", "ts", "meta", "v", "dtype", "b64", "k"]), children, max_size=6
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_crash_the_decoder(value: bytes) -> None:
    for decode in (DECODER.decode_sample, DECODER.decode_feedback):
        assert isinstance(decode(value), (Sample, Feedback, Rejection))


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_no_json_value_crashes_the_decoder(value: object) -> None:
    raw = json.dumps(value).encode()  # may hold NaN/Infinity literals: also not JSON
    for decode in (DECODER.decode_sample, DECODER.decode_feedback):
        event = decode(raw)
        assert isinstance(event, (Sample, Feedback, Rejection))
        if isinstance(event, Sample):
            assert event.x.shape == (4,) and np.isfinite(event.x).all()
            assert event.y is None or 0 <= event.y < 3


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=40),
    st.lists(st.floats(-1e30, 1e30), min_size=4, max_size=4),
    st.none() | st.integers(0, 2),
)
def test_encoded_samples_decode_back(id: str, x: list[float], y: int | None) -> None:
    event = DECODER.decode_sample(encode_sample(id, x, y))
    assert isinstance(event, Sample)
    assert (event.id, event.y) == (id, y)
    assert event.x.tolist() == np.array(x, dtype=np.float32).tolist()
