"""The dead-letter headers: why a record was rejected and where it was read.

Every ``lifelong.*`` header on a dead letter is the daemon's: a producer's own
headers of that name are kept renamed ``original.lifelong.*``, so none can forge
a reason or a source.
"""

from __future__ import annotations

from collections.abc import Iterable

from lifelong.connectors.base import DeadLetter

REASON = "lifelong.reason"
DETAIL = "lifelong.detail"
SOURCE_TOPIC = "lifelong.source.topic"
SOURCE_PARTITION = "lifelong.source.partition"
SOURCE_OFFSET = "lifelong.source.offset"
SOURCE_TIMESTAMP = "lifelong.source.timestamp"
OURS = "lifelong."
ORIGINAL = "original."


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers for ``letter``: its record's own, then the reason, detail and source position.

    The record's own headers named ``lifelong.*`` are renamed ``original.lifelong.*``.
    """
    record = letter.record
    return [
        *((ORIGINAL + name if name.startswith(OURS) else name, value) for name, value in record.headers),
        (REASON, letter.reason.encode()),
        (DETAIL, letter.detail.encode("utf-8", "replace")[:1024]),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (SOURCE_TIMESTAMP, str(record.timestamp_ms).encode()),
    ]


def source_of(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int, int] | None:
    """The (topic, partition, offset) a dead letter came from, or None if not one of ours."""
    # Only the daemon writes lifelong.* headers. Where a letter written before the renaming holds
    # a producer's too, the daemon's came last, and the last one read wins.
    found = {name: value for name, value in headers if value is not None}
    try:
        return (
            found[SOURCE_TOPIC].decode(),
            int(found[SOURCE_PARTITION]),
            int(found[SOURCE_OFFSET]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
