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
    MAX_DEPTH,
    Decoder,
    Feedback,
    Reason,
    Rejection,
    Sample,
    TopicDecoder,
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


# Poison pills: nesting deeper than MAX_DEPTH, and whatever else could make decoding raise.

ROOMY = Decoder(features=4, max_classes=3, max_message_bytes=1 << 22)
TOPICS = TopicDecoder(
    samples_topic="s", feedback_topic="f", features=4, max_classes=3, max_message_bytes=1 << 22
)


def nested(levels: int, kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * levels + b"1" + b"]" * levels
    return b'{"k":' * levels + b"1" + b"}" * levels


def decode_every_way(topic: str, value: bytes | None) -> list[object]:
    """Every way a message on ``topic`` is decoded: each Decoder method, and in a TopicDecoder batch."""
    methods = (ROOMY.decode_feedback,) if topic == "f" else (ROOMY.decode_sample, ROOMY.decode_sample_row)
    events: list[object] = [decode(value) for decode in methods]
    batch = TOPICS(topic, [value])
    events.extend(Rejection(Reason(reason), detail) for _, reason, detail in batch.rejections)
    events.extend(batch.rows)
    assert len(batch.rows) + len(batch.rejections) == 1
    return events


def deep_message(topic: str, field: str, levels: int, kind: str) -> bytes:
    pairs = {"id": b'"a"', "x": b"[0, 1, 2, 3]"} if topic == "s" else {"id": b'"a"', "y": b"1"}
    pairs[field] = nested(levels, kind)
    return b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in pairs.items()) + b"}"


@pytest.mark.parametrize("levels", [1_000, 100_000])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize(
    ("topic", "field"),
    [("s", "meta"), ("s", "unknown"), ("s", "x"), ("s", "id"), ("f", "meta"), ("f", "y"), ("f", "id")],
)
def test_deep_nesting_is_rejected_as_too_deep(topic: str, field: str, kind: str, levels: int) -> None:
    value = deep_message(topic, field, levels, kind)
    for event in decode_every_way(topic, value):
        assert isinstance(event, Rejection) and event.reason is Reason.TOO_DEEP, event
        assert f"nest {levels + 1} levels" in event.detail and f"MAX_DEPTH={MAX_DEPTH}" in event.detail


def test_a_whole_message_nested_too_deep_is_rejected() -> None:
    for topic in ("s", "f"):
        for event in decode_every_way(topic, nested(5_000, "arrays")):
            assert isinstance(event, Rejection) and event.reason is Reason.TOO_DEEP, event


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The message's own object is level 1, so meta may nest MAX_DEPTH - 1 levels.
    deepest = {"id": "a", "x": [0, 1, 2, 3], "meta": json.loads(nested(MAX_DEPTH - 1, "objects"))}
    event = ROOMY.decode_sample(json.dumps(deepest).encode())
    assert isinstance(event, Sample) and event.meta == deepest["meta"]
    deeper = {**deepest, "meta": {"k": deepest["meta"]}}
    event = ROOMY.decode_sample(json.dumps(deeper).encode())
    assert isinstance(event, Rejection) and event.reason is Reason.TOO_DEEP


@pytest.mark.parametrize(
    "text",
    ["[" * 5_000, '\\"' + "{" * 5_000, "\\\\" * 3 + "[[" * 2_000, "}" * 100 + "[" * 100],
    ids=["brackets", "escaped quote", "escaped backslashes", "closers first"],
)
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    value = json.dumps({"id": text[:500], "x": [0, 1, 2, 3], "meta": {"s": text, text: [text]}}).encode()
    event = ROOMY.decode_sample(value)
    assert isinstance(event, Sample) and event.meta == {"s": text, text: [text]}


class Raising:
    """Stands in for msgspec's decoder, raising what a decoder was never expected to."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def decode(self, value: bytes) -> object:
        raise self.error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("boom from msgspec"), Reason.UNDECODABLE),
        (MemoryError("boom from msgspec"), Reason.UNDECODABLE),
        (RecursionError("boom from msgspec"), Reason.TOO_DEEP),  # below MAX_DEPTH, on a short stack
    ],
    ids=["RuntimeError", "MemoryError", "RecursionError"],
)
def test_any_exception_while_decoding_rejects_the_message(
    monkeypatch: pytest.MonkeyPatch, error: Exception, reason: Reason
) -> None:
    decoder = Decoder(features=4, max_classes=3)
    monkeypatch.setattr(decoder, "_samples", Raising(error))
    monkeypatch.setattr(decoder, "_feedback", Raising(error))
    events = [
        decoder.decode_sample(sample(y=1)),
        decoder.decode_sample_row(sample(y=1)),
        decoder.decode_feedback(encode_feedback("a", 1)),
    ]
    for event in events:
        assert isinstance(event, Rejection) and event.reason is reason, event
        assert "boom from msgspec" in event.detail
        if reason is Reason.UNDECODABLE:
            assert event.detail == f"decoding raised {type(error).__name__}: boom from msgspec"


def test_one_message_raising_never_fails_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    topics = TopicDecoder(samples_topic="s", feedback_topic="f", features=4, max_classes=3)
    row = topics.decoder.decode_sample_row

    def fragile(value: bytes | None) -> object:
        if value == b"poison":
            raise RuntimeError(f"cannot decode {value!r}")
        return row(value)

    monkeypatch.setattr(topics.decoder, "decode_sample_row", fragile)
    decoded = topics("s", [sample(id="a"), b"poison", sample(id="b")])
    assert [r[0] for r in decoded.rows] == ["a", "b"] and decoded.positions == [0, 2]
    assert decoded.rejections == [(1, "undecodable", "decoding raised RuntimeError: cannot decode b'poison'")]


# Adversarial JSON text, written out by hand so that it may nest deeper than Python's json can
# write, repeat keys, and hold lone surrogates or bytes that are not UTF-8. Each value comes with
# how deeply it nests.
Text = tuple[bytes, int]
FIELDS = ["id", "x", "y", "ts", "meta", "v", "dtype", "b64", "extra"]

leaves: st.SearchStrategy[Text] = st.one_of(
    st.sampled_from(
        [
            b"null",
            b"true",
            b"false",
            b"0",
            b"-0",
            b"1.5",
            b"1e999",
            b"-1e999",
            b"1e-999",
            b"NaN",
            b"-Infinity",
            b'""',
            b'"\\ud800"',
            b'"\\udfff\\ud800"',
            b'"\\u0000"',
            b'"[[{{"',
            b'"\\\\"',
            b'"\\"[[["',
            b'"\\\\\\"{"',
        ]
    ),
    st.integers(-(10**40), 10**40).map(lambda i: str(i).encode()),
    st.integers(1, 5_000).map(lambda digits: b"9" * digits),  # no integer or float holds it
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.text().map(lambda s: json.dumps(s).encode()),
    st.text().map(lambda s: json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass")),
).map(lambda raw: (raw, 0))


@st.composite
def deep(draw: st.DrawFn, inner: st.SearchStrategy[Text]) -> Text:
    raw, depth = draw(inner)
    levels = draw(st.integers(1, 3_000))
    if draw(st.booleans()):
        return b"[" * levels + raw + b"]" * levels, depth + levels
    key = json.dumps(draw(st.sampled_from(FIELDS))).encode()
    return (b"{" + key + b":") * levels + raw + b"}" * levels, depth + levels


def obj(pairs: list[tuple[str, Text]]) -> Text:
    raw = b"{" + b",".join(json.dumps(key).encode() + b":" + value for key, (value, _) in pairs) + b"}"
    return raw, 1 + max((depth for _, (_, depth) in pairs), default=0)


def containers(children: st.SearchStrategy[Text]) -> st.SearchStrategy[Text]:
    arrays = st.lists(children, max_size=5).map(
        lambda items: (
            b"[" + b",".join(raw for raw, _ in items) + b"]",
            1 + max((d for _, d in items), default=0),
        )
    )
    objects = st.lists(st.tuples(st.sampled_from(FIELDS), children), max_size=5).map(obj)  # keys may repeat
    return arrays | objects | deep(children)


json_texts = st.recursive(leaves, containers, max_leaves=12)


@st.composite
def messages(draw: st.DrawFn, topic: str) -> Text:
    """A valid message of ``topic`` with some fields replaced, repeated or added, by adversarial values."""
    pairs: list[tuple[str, Text]] = [("id", (b'"a"', 0))]
    pairs.append(("x", (b"[0,1,2,3]", 1)) if topic == "s" else ("y", (b"1", 0)))
    for _ in range(draw(st.integers(1, 4))):
        field, value = draw(st.sampled_from(FIELDS)), draw(json_texts)
        at = draw(st.integers(0, len(pairs)))
        if draw(st.booleans()) and at < len(pairs):
            pairs[at] = (field, value)
        else:
            pairs.insert(at, (field, value))  # a new field, or a key repeated
    return obj(pairs)


@pytest.mark.parametrize("topic", ["s", "f"], ids=["samples", "feedback"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_adversarial_message_escapes_the_decoder(topic: str, data: st.DataObject) -> None:
    value, depth = data.draw(messages(topic))
    for event in decode_every_way(topic, value):
        assert isinstance(event, (Sample, Feedback, tuple, Rejection))
        too_deep = isinstance(event, Rejection) and event.reason is Reason.TOO_DEEP
        assert too_deep == (depth > MAX_DEPTH), (depth, event)
        # The catch-all is for what nobody foresaw: none of these should need it.
        assert not (isinstance(event, Rejection) and event.reason is Reason.UNDECODABLE), event
