"""What a model version is: its value types and its immutable directory on disk.

A version directory ``v000007/`` holds ``model.safetensors`` (the weights),
``state.safetensors`` (the learner's tensors, to continue training) and
``meta.json``: format, decision, scores, lineage, and the checksum and size of
every other file. It is written once, into a temporary directory renamed into
place, and never changed; reading it checks all of that and says what to do
when something is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lifelong.errors import StateError, UnsupportedFormat
from lifelong.files import digest, fsync_dir, fsync_file, write_atomically

FORMAT = 1
META = "meta.json"
MODEL = "model.safetensors"
STATE = "state.safetensors"
VERSION_DIR = re.compile(r"v(\d{6,})")


class Status(StrEnum):
    """Where a version stands: serving, once served, refused by the gate, or rolled back from."""

    CHAMPION = "champion"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


DECISIONS = (Status.PROMOTED.value, Status.REJECTED.value)


@dataclass(frozen=True)
class ModelVersion:
    """One model version as ``lifelong versions`` lists it; ``rolled_back`` says when and why, if so."""

    version: int
    status: Status
    created_at: float
    parent: int | None
    scores: dict[str, float]
    decision: str
    reason: str | None
    lineage: dict[str, Any]
    config: dict[str, Any]
    learner: dict[str, Any]
    path: Path
    rolled_back: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict (a score that is NaN or infinite becomes ``null``)."""
        return {
            "version": self.version,
            "status": self.status.value,
            "created_at": self.created_at,
            "parent": self.parent,
            "decision": self.decision,
            "reason": self.reason,
            "scores": {name: v if math.isfinite(v) else None for name, v in self.scores.items()},
            "lineage": self.lineage,
            "config": self.config,
            "learner": self.learner,
            "rolled_back": self.rolled_back,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class LoadedVersion:
    """A version's description with its weights and learner state, checksums verified."""

    info: ModelVersion
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]


def dir_name(version: int) -> str:
    """``v000007`` for version 7."""
    return f"v{version:06d}"


def hint(path: Path) -> str:
    """What a user can do about a damaged version directory."""
    return (
        f"roll back to another version (`lifelong rollback <version>`), "
        f"or delete {path} if you no longer need version {path.name}"
    )


def detached(tensors: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Fresh contiguous CPU copies: safetensors refuses views and tensors that share storage."""
    copies: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what} must map str to torch.Tensor; {name!r} maps to {type(tensor).__name__}")
        copies[name] = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return copies


def write_version(
    root: Path,
    version: int,
    *,
    weights: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write ``root/v000007`` durably (temp dir, fsync every file, rename, fsync ``root``)."""
    name = dir_name(version)
    temp = root / f".{name}.tmp-{time.time_ns()}"
    temp.mkdir()
    try:
        save_file(weights, str(temp / MODEL))
        save_file(state, str(temp / STATE))
        files: dict[str, dict[str, Any]] = {}
        for file in (MODEL, STATE):
            fsync_file(temp / file)
            files[file] = {"digest": digest(temp / file), "size": (temp / file).stat().st_size}
        body = {"format": FORMAT, "version": version, **meta, "files": files}
        # write_atomically also fsyncs the temp directory, so its entries are durable before the rename.
        write_atomically(temp / META, json.dumps(body, indent=1).encode())
        final = root / name
        os.rename(temp, final)
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(error, SafetensorError) and (os_error := _os_error(error)) is not None:
            raise os_error from error
        raise
    fsync_dir(root)
    return final


def _os_error(error: SafetensorError) -> OSError | None:
    """The OSError inside a safetensors error (it says "... No space left on device (os error 28)")."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    return None if found is None else OSError(int(found[1]), str(error))


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a version directory, format and shape checked; StateError naming it otherwise."""
    file = path / META
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise StateError(f"model version directory {path} has no {META}; {hint(path)}") from None
    except (OSError, ValueError) as error:
        raise StateError(f"model version file {file} is not valid JSON ({error}); {hint(path)}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        newer = isinstance(found, int) and not isinstance(found, bool) and found > FORMAT
        advice = "it was written by a newer lifelong: upgrade lifelong to read it" if newer else hint(path)
        raise UnsupportedFormat(
            f"model version file {file} has format {found!r}; this lifelong reads format {FORMAT}: {advice}"
        )
    problem = _shape_problem(meta)
    if problem:
        raise StateError(f"model version file {file} is malformed ({problem}); {hint(path)}")
    return meta  # type: ignore[no-any-return]


def _shape_problem(meta: dict[str, Any]) -> str | None:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = {
        "version": is_int(meta.get("version")),
        "parent": meta.get("parent") is None or is_int(meta.get("parent")),
        "created_at": isinstance(meta.get("created_at"), int | float),
        "decision": meta.get("decision") in DECISIONS,
        "reason": meta.get("reason") is None or isinstance(meta.get("reason"), str),
        "scores": isinstance(meta.get("scores"), dict)
        and all(isinstance(v, int | float) for v in meta["scores"].values()),
        "lineage": isinstance(meta.get("lineage"), dict),
        "config": isinstance(meta.get("config"), dict),
        "learner": isinstance(meta.get("learner"), dict),
        "files": isinstance(meta.get("files"), dict)
        and {MODEL, STATE} <= meta["files"].keys()
        and all(_is_file_entry(name, entry) for name, entry in meta["files"].items()),
    }
    bad = [key for key, ok in checks.items() if not ok]
    return f"bad or missing {', '.join(bad)}" if bad else None


def _is_file_entry(name: object, entry: object) -> bool:
    # A plain name only: a damaged meta.json must not point the checks outside the directory.
    plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and name != META
    return (
        plain
        and isinstance(entry, dict)
        and isinstance(entry.get("digest"), str)
        and isinstance(entry.get("size"), int)
    )


def describe(
    path: Path, meta: dict[str, Any], status: Status, rolled_back: dict[str, Any] | None
) -> ModelVersion:
    """The ModelVersion for a checked ``meta.json``, with the status the registry pointer gives it."""
    return ModelVersion(
        version=meta["version"],
        status=status,
        created_at=float(meta["created_at"]),
        parent=meta["parent"],
        scores={name: float(value) for name, value in meta["scores"].items()},
        decision=meta["decision"],
        reason=meta["reason"],
        lineage=meta["lineage"],
        config=meta["config"],
        learner=meta["learner"],
        path=path,
        rolled_back=rolled_back,
    )


def verify(path: Path, meta: dict[str, Any]) -> None:
    """Check that every file ``meta.json`` lists is there, of its size and checksum."""
    for name, entry in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise StateError(f"model version file {file} is missing; {hint(path)}")
        size = file.stat().st_size
        if size != entry["size"]:
            raise StateError(
                f"model version file {file} has {size} bytes where {META} records {entry['size']} "
                f"(truncated or overwritten); {hint(path)}"
            )
        found = digest(file)
        if found != entry["digest"]:
            raise StateError(
                f"model version file {file} fails its checksum ({found}, {META} records "
                f"{entry['digest']}): it is corrupt; {hint(path)}"
            )


def read_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file (no pickle, so no code runs), on the CPU."""
    file = path / name
    try:
        return load_file(file)
    except (SafetensorError, OSError) as error:
        raise StateError(f"model version file {file} cannot be read ({error}); {hint(path)}") from None
