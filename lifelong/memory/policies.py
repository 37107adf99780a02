"""What a full rehearsal memory does with a new sample: the policies, decided from labels alone.

When full, the ``policy`` decides what a new sample replaces:

``reservoir``
    every sample seen so far is kept with equal probability (Vitter's algorithm R).
``class_balanced``
    class-balanced reservoir (Chrysakis & Moens, 2020): a new sample replaces one
    of the largest class, so rare classes keep their share.
``diversity``
    a near-duplicate of a stored sample is not stored again, and a new sample
    replaces one from the most crowded region (the fullest IVF list).

``recency`` (0 by default) is the least chance a new sample has to enter a full
reservoir (``reservoir`` and ``class_balanced`` within a class): 0 keeps every
sample seen with equal chance, however old; above 0 the memory leans to the newest
samples, about ``capacity / recency`` of them (biased reservoir sampling,
Aggarwal 2006), for streams whose concept moves on.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, NamedTuple

POLICIES = ("reservoir", "class_balanced", "diversity")
Policy = Literal["reservoir", "class_balanced", "diversity"]
# Where an admitted sample's slot comes from, besides a class label (labels are >= 0).
FREE, ANY, CROWDED = -1, -2, -3


class Admission(NamedTuple):
    """The rows a policy stores, in order, each with where its slot comes from."""

    rows: list[int]
    sources: list[int]  # FREE, ANY (any stored sample), CROWDED (the most crowded region) or a label
    skipped: int
    seen: int  # samples seen, this batch's included


def admit(
    policy: Policy,
    *,
    capacity: int,
    labels: list[int],
    draws: list[float],
    skip: list[bool],
    free: int,
    seen: int,
    seen_by_class: Counter[int],
    class_sizes: dict[int, int],
    recency: float = 0.0,
) -> Admission:
    """Decide, row by row, which of a batch's samples the memory stores and what each replaces.

    ``draws`` holds one uniform [0, 1) number per row; ``skip`` marks near-duplicates (never
    stored); ``seen_by_class`` is updated in place. Deciding needs only the class sizes, so
    the rows a policy skips (most of them, once the stream is long) cost a few comparisons.

    >>> admit("reservoir", capacity=2, labels=[0, 1, 0], draws=[0.9, 0.9, 0.1], skip=[False] * 3,
    ...       free=1, seen=5, seen_by_class=Counter(), class_sizes={}).rows
    [0, 2]
    """
    balanced = policy == "class_balanced"
    sizes = dict(class_sizes) if balanced else {}
    top = max(sizes.values(), default=0)
    rows: list[int] = []
    sources: list[int] = []
    skipped = 0
    for n, label in enumerate(labels):
        seen += 1
        seen_by_class[label] += 1
        if skip[n]:
            continue
        if free:
            free -= 1
            source = FREE
        elif policy == "reservoir":  # Vitter's R: the n-th sample stays with probability capacity/n
            if draws[n] >= max(capacity / seen, recency):
                skipped += 1
                continue
            source = ANY
        elif not balanced:
            source = CROWDED
        elif sizes.get(label, 0) < top:  # not (one of) the largest classes: evict from the largest
            source = min(key for key, size in sizes.items() if size == top)
            sizes[source] -= 1
        elif draws[n] >= max(sizes[label] / seen_by_class[label], recency):  # reservoir within its class
            skipped += 1
            continue
        else:
            source = label
        if balanced and source != label:
            sizes[label] = sizes.get(label, 0) + 1
            top = max(sizes.values())
        rows.append(n)
        sources.append(source)
    return Admission(rows, sources, skipped, seen)
