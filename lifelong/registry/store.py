"""The model registry: immutable version directories and a ``HEAD.json`` pointer swapped atomically.

``HEAD.json`` names the champion (the version that serves), every version that
became champion in order, and the versions rolled back from. Promotion and
rollback are each one atomic replacement of that file, made only after the
version directory it names is durable (rollback: verified), so a crash or a
damaged directory leaves the previous champion serving. Writers take an
exclusive lock on ``root/.lock``, so ``lifelong rollback`` can run beside the
daemon; readers re-read ``HEAD.json`` on every call, so each sees the other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import numbers
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lifelong.config import Settings
from lifelong.errors import NothingToRollBack, StateError, StateInUse, UnsupportedFormat, VersionNotFoundError
from lifelong.files import disk_full, fsync_dir, is_disk_full, write_atomically
from lifelong.registry.base import (
    MODEL,
    STATE,
    VERSION_DIR,
    LoadedVersion,
    ModelVersion,
    Status,
    describe,
    detached,
    dir_name,
    read_meta,
    read_tensors,
    verify,
    write_version,
)

logger = logging.getLogger(__name__)

HEAD = "HEAD.json"
HEAD_FORMAT = 1
LOCK = ".lock"


@dataclass
class _Head:
    champion: int | None = None
    promotions: list[int] = field(default_factory=list)
    rolled_back: dict[int, dict[str, Any]] = field(default_factory=dict)
    next: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format": HEAD_FORMAT,
            "champion": self.champion,
            "promotions": self.promotions,
            "rolled_back": {str(v): note for v, note in sorted(self.rolled_back.items())},
            "next": self.next,
        }


class ModelRegistry:
    """Every model version the daemon produced, which one serves, and the way back.

    Example::

        registry = ModelRegistry(root=Path("state/models"))
        registry.add(weights=model.state_dict(), state={}, promote=True, scores={"acc": 0.9}, parent=None)
        registry.rollback(reason="accuracy dropped")  # the previous champion serves again
        loaded = registry.load()                      # the champion, checksums verified
    """

    def __init__(
        self,
        *,
        root: Path,
        keep_versions: int = 20,
        clock: Callable[[], float] = time.time,
        lock_timeout_s: float = 30.0,
    ) -> None:
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1:
            raise ValueError(f"keep_versions must be an integer of at least 1, not {keep_versions!r}")
        if not lock_timeout_s >= 0:
            raise ValueError(f"lock_timeout_s must be at least 0, not {lock_timeout_s!r}")
        self.root = root
        self.keep_versions = keep_versions
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            # Under the lock, so another process's version being written is never taken for a leftover.
            for leftover in root.glob(".v*"):
                if leftover.is_dir() and (".tmp-" in leftover.name or ".del-" in leftover.name):
                    shutil.rmtree(leftover, ignore_errors=True)

    def add(
        self,
        *,
        weights: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
        promote: bool,
        scores: Mapping[str, float],
        parent: int | None,
        lineage: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        learner: Mapping[str, Any] | None = None,
        reason: str | None = None,
        expect_champion: int | Literal["any"] | None = "any",
    ) -> ModelVersion:
        """Write a new version; with ``promote`` it becomes champion once durable. Then prune.

        With ``expect_champion``, promotion happens only if that version is still the
        champion (checked under the lock): a rollback made while the candidate trained
        wins, and the candidate is kept as rejected with the reason.

        On a full disk it raises :class:`~lifelong.errors.DiskFull` and the registry is
        as it was: no partial version directory, ``HEAD.json`` untouched.
        """
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int)):
            raise TypeError(f"parent must be a version number or None, not {parent!r}")
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a string or None, not {reason!r}")
        meta: dict[str, Any] = {
            "parent": parent,
            "created_at": float(self.clock()),
            "decision": (Status.PROMOTED if promote else Status.REJECTED).value,
            "scores": _scores(scores),
            "lineage": _json_dict(lineage, "lineage"),
            "config": _json_dict(config, "config"),
            "learner": _json_dict(learner, "learner"),
            "reason": reason,
        }
        tensors, learner_tensors = detached(weights, "weights"), detached(state, "state")
        with self._locked():
            head = self._read_head()
            # HEAD's counter, or past the newest directory if a crash came between the two writes.
            number = max(head.next, max(self._numbers(), default=0) + 1)
            if promote and expect_champion != "any" and head.champion != expect_champion:
                promote = False
                meta["decision"] = Status.REJECTED.value
                meta["reason"] = (
                    f"the champion changed from {expect_champion} to {head.champion} while this "
                    f"version trained (a rollback?); kept, not promoted. Gate: {reason}"
                )
                # Its data was not judged on its merits: whoever tracks what was trained can retry it.
                meta["lineage"] = {**meta["lineage"], "superseded": True}
            try:
                write_version(self.root, number, weights=tensors, state=learner_tensors, meta=meta)
                head.next = number + 1
                if promote:
                    head.champion = number
                    head.promotions.append(number)
                self._write_head(head)
            except BaseException as error:
                self._discard_unrecorded(number)
                if is_disk_full(error):
                    raise disk_full(self.root, error) from error
                raise
            self._prune(head)
        logger.info("model version %d added (%s)", number, meta["decision"])
        return self.get(number)

    def versions(self) -> list[ModelVersion]:
        """Every version on disk, oldest first; one whose ``meta.json`` is damaged is logged and left out."""
        head = self._read_head()
        found = []
        for number in self._numbers():
            try:
                found.append(self._describe(number, head))
            except VersionNotFoundError:
                continue  # pruned while we listed
            except StateError as error:
                logger.warning("left out of the version list: %s", error)
        return found

    def get(self, version: int) -> ModelVersion:
        """One version's description (``meta.json`` checked; the weights are not read)."""
        return self._describe(version, self._read_head())

    def champion(self) -> ModelVersion | None:
        """The version serving now, or None before the first promotion."""
        head = self._read_head()
        return None if head.champion is None else self._describe(head.champion, head)

    def load(self, version: int | None = None) -> LoadedVersion:
        """A version's weights and learner state (the champion's by default), every checksum verified."""
        head = self._read_head()
        number = head.champion if version is None else version
        if number is None:
            raise NothingToRollBack(
                f"the model registry {self.root} has no champion yet: promote a version first"
            )
        info = self._describe(number, head)
        verify(info.path, read_meta(info.path))
        return LoadedVersion(
            info=info, weights=read_tensors(info.path, MODEL), state=read_tensors(info.path, STATE)
        )

    def rollback(
        self, version: int | None = None, *, reason: str = "manual", trigger: str = "manual"
    ) -> ModelVersion:
        """Make an earlier promoted version champion again and mark the current one rolled back.

        Without ``version``, the most recent earlier champion not itself rolled back from.
        The target is verified before ``HEAD.json`` changes: a damaged one is refused and
        the current champion keeps serving.
        """
        with self._locked():
            head = self._read_head()
            target = self._rollback_target(head) if version is None else self._named_target(head, version)
            path = self._describe(target, head).path
            verify(path, read_meta(path))
            if head.champion is not None:
                note = {"at": float(self.clock()), "reason": reason, "trigger": trigger}
                head.rolled_back[head.champion] = note
            head.rolled_back.pop(target, None)
            previous, head.champion = head.champion, target
            head.promotions.append(target)
            self._write_head(head)
        logger.warning("rolled back from model version %s to %d (%s, %s)", previous, target, trigger, reason)
        return self.get(target)

    def is_rolled_back(self, version: int) -> bool:
        """Whether ``version`` was rolled back from (the daemon never promotes it again on its own)."""
        return version in self._read_head().rolled_back

    def prune(self) -> list[int]:
        """Delete old rejected versions beyond the newest ``keep_versions``; returns their numbers."""
        with self._locked():
            return self._prune(self._read_head())

    # -- internals -------------------------------------------------------------------------------

    def _rollback_target(self, head: _Head) -> int:
        skip = {head.champion, *head.rolled_back}
        for number in reversed(head.promotions):
            if number not in skip:
                path = self.root / dir_name(number)
                if not path.is_dir():
                    raise NothingToRollBack(
                        f"model version {number}, the one to roll back to, is gone (no directory {path}); "
                        "name another with `lifelong rollback <version>`"
                    )
                return number
        raise NothingToRollBack(
            f"nothing to roll back to in {self.root}: no version before champion {head.champion!r} "
            "is promoted and not itself rolled back from; name one with `lifelong rollback <version>`"
        )

    def _named_target(self, head: _Head, version: int) -> int:
        info = self._describe(version, head)
        if info.status is Status.CHAMPION:
            raise NothingToRollBack(f"model version {version} is already the champion: nothing to roll back")
        if info.decision != Status.PROMOTED:
            promoted = [v for v in dict.fromkeys(head.promotions) if v != head.champion]
            raise NothingToRollBack(
                f"model version {version} was rejected by the evaluation gate and never served, so it "
                f"cannot be rolled back to; versions that served before: {promoted}"
            )
        return version

    def _describe(self, number: int, head: _Head) -> ModelVersion:
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"a version number is an int, not {number!r}")
        path = self.root / dir_name(number)
        if not path.is_dir():
            raise VersionNotFoundError(f"No model version {number!r} in {self.root}")
        meta = read_meta(path)
        if meta["version"] != number:
            raise StateError(f"{path} holds version {meta['version']!r}, not {number}: delete or rename it")
        note = head.rolled_back.get(number)
        status = (
            Status.CHAMPION
            if number == head.champion
            else Status.ROLLED_BACK
            if note is not None
            else Status(meta["decision"])
        )
        return describe(path, meta, status, note)

    def _numbers(self) -> list[int]:
        return sorted(
            int(match[1])
            for path in self.root.iterdir()
            if (match := VERSION_DIR.fullmatch(path.name)) and path.is_dir()
        )

    def _prune(self, head: _Head) -> list[int]:
        numbers = self._numbers()
        protected = {*numbers[-self.keep_versions :], *head.promotions, *head.rolled_back, head.champion}
        deleted = []
        for number in numbers:
            if number in protected:
                continue
            path = self.root / dir_name(number)
            try:
                decision = read_meta(path)["decision"]
            except StateError as error:
                logger.warning("not pruning a version that cannot be read: %s", error)
                continue
            if decision != Status.REJECTED:
                continue
            self._delete(path)
            deleted.append(number)
        if deleted:
            logger.info("pruned rejected model versions %s", deleted)
        return deleted

    def _delete(self, path: Path) -> None:
        # Renamed first, so a crash mid-delete leaves a leftover (removed on open), never half a version.
        trash = self.root / f".{path.name}.del-{time.time_ns()}"
        path.rename(trash)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def _discard_unrecorded(self, number: int) -> None:
        """Delete version ``number`` if its directory was written but ``HEAD.json`` does not record it."""
        path = self.root / dir_name(number)
        try:
            if path.is_dir() and self._read_head().next <= number:
                self._delete(path)
        except (OSError, StateError) as error:  # the failure being raised says more than this one
            logger.warning("could not remove model version %d after a failed write: %s", number, error)

    def _read_head(self) -> _Head:
        path = self.root / HEAD
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return _Head()
        except (OSError, ValueError) as error:
            raise StateError(f"{path} is unreadable ({error}); {self._head_hint(path)}") from None
        found = data.get("format") if isinstance(data, dict) else None
        if found != HEAD_FORMAT:
            newer = isinstance(found, int) and not isinstance(found, bool) and found > HEAD_FORMAT
            advice = (
                "it was written by a newer lifelong: upgrade lifelong" if newer else self._head_hint(path)
            )
            raise UnsupportedFormat(
                f"{path} has format {found!r}; this lifelong reads format {HEAD_FORMAT}: {advice}"
            )
        try:
            return _parse_head(data)
        except (KeyError, TypeError, ValueError) as error:
            raise StateError(f"{path} is malformed ({error!r}); {self._head_hint(path)}") from None

    def _write_head(self, head: _Head) -> None:
        write_atomically(self.root / HEAD, json.dumps(head.to_json(), indent=1).encode())

    @staticmethod
    def _head_hint(path: Path) -> str:
        return (
            f"move {path} aside (the registry then has no champion) and name one "
            "with `lifelong rollback <version>`"
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock locks belong to an open file, so every holder opens its own: threads and processes alike.
        with open(self.root / LOCK, "a+b") as file:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateInUse(
                            f"the model registry {self.root} is locked by another process "
                            f"({self.root / LOCK}) for over {self.lock_timeout_s:g}s; try again "
                            "when it finishes"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _parse_head(data: dict[str, Any]) -> _Head:
    def number(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{value!r} is not a version number")
        return value

    champion = data["champion"]
    rolled_back = data["rolled_back"]
    if not isinstance(rolled_back, dict) or not all(isinstance(n, dict) for n in rolled_back.values()):
        raise TypeError("rolled_back is not a map of version to note")
    return _Head(
        champion=None if champion is None else number(champion),
        promotions=[number(v) for v in data["promotions"]],
        rolled_back={int(v): note for v, note in rolled_back.items()},
        next=number(data["next"]),
    )


def _scores(scores: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in scores.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"scores must map str to a number; {name!r} maps to {value!r}")
        out[name] = float(value)
    return out


def _json_dict(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping, not {type(value).__name__}")
    try:
        # Round-tripped, so what is stored is exactly what a later read returns.
        loaded: dict[str, Any] = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable: {error}") from None
    return loaded


def open_registry(settings: Settings) -> ModelRegistry:
    """The model registry in the state directory."""
    return ModelRegistry(
        root=Path(settings.state.dir) / "models", keep_versions=settings.learner.keep_versions
    )
