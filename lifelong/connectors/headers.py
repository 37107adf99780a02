"""The dead-letter headers: why a record was rejected and where it was read."""

from __future__ import annotations

from collections.abc import Iterable

from lifelong.connectors.base import DeadLetter

REASON = "lifelong.reason"
DETAIL = "lifelong.detail"
SOURCE_TOPIC = "lifelong.source.topic"
SOURCE_PARTITION = "lifelong.source.partition"
SOURCE_OFFSET = "lifelong.source.offset"
SOURCE_TIMESTAMP = "lifelong.source.timestamp"


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers for ``letter``: reason code, detail, source topic, partition, offset, timestamp."""
    record = letter.record
    # The record's own headers first, so ours win in source_of if it already carried some.
    return [
        *record.headers,
        (REASON, letter.reason.encode()),
        (DETAIL, letter.detail.encode("utf-8", "replace")[:1024]),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP, str(record.timestamp_ms).encode()),
    ]


def source_of(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int, int] | None:
    """The (topic, partition, offset) a dead letter came from, or None if not one of ours."""
    found = {name: value for name, value in headers if value is not None}
    try:
        return (
            found[SOURCE_TOPIC].decode(),
            int(found[SOURCE_PARTITION]),
            int(found[SOURCE_OFFSET]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
