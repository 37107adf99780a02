"""Atomic, versioned snapshot directories with a ``CURRENT`` pointer.

A snapshot is written into a temporary directory, every file fsynced and
checksummed in ``manifest.json``, the directory renamed into place, and only
then ``CURRENT`` swapped (temp file, fsync, ``os.replace``). A crash at any
point leaves the previous snapshot current, and a write that fails (a full
disk: :class:`~lifelong.errors.DiskFull`) leaves nothing of the new one behind.
Loading checks the format number and every checksum, and refuses with a
message that says what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lifelong.errors import StateError, UnsupportedFormat
from lifelong.files import digest as _digest  # a local name below is ``digest``
from lifelong.files import disk_full, fsync_dir, is_disk_full, write_atomically

MANIFEST = "manifest.json"
POINTER = "CURRENT"


class SnapshotDir:
    """The snapshots of one component under ``root``, the newest named by ``root/CURRENT``.

    Example::

        snapshots = SnapshotDir(Path("state/memory"), kind="rehearsal-memory", format=1)
        with snapshots.begin() as draft:        # a temporary directory
            np.save(draft.path / "keys.npy", keys)
            draft.commit({"size": 10})          # manifest, rename, CURRENT
        manifest, path = snapshots.load()
    """

    def __init__(self, root: Path, *, kind: str, format: int, keep: int = 2) -> None:
        self.root = root
        self.kind = kind
        self.format = format
        self.keep = keep

    def begin(self) -> Draft:
        """A new, empty snapshot directory to fill."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"snapshot-{time.time_ns():020d}"
        path = self.root / f".{name}.tmp"
        path.mkdir()
        return Draft(self, path, name)

    def current(self) -> Path | None:
        """The current snapshot's directory, if any."""
        pointer = self.root / POINTER
        if not pointer.exists():
            return None
        return self.root / pointer.read_text().strip()

    def manifest(self) -> dict[str, Any] | None:
        """The current snapshot's manifest, unchecked (for status displays), or None."""
        path = self.current()
        if path is None:
            return None
        try:
            found = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def load(self) -> tuple[dict[str, Any], Path] | None:
        """The current snapshot's manifest and directory after checking format and checksums."""
        path = self.current()
        if path is None:
            return None
        hint = (
            f"move {self.root / POINTER} aside to start this {self.kind} empty (it is rebuilt "
            "from the sample store), or point it at an older snapshot directory beside it"
        )
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise StateError(f"{self.kind} snapshot {path} is unreadable ({error}); {hint}") from None
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != self.format or manifest.get("kind") != self.kind:
            advice = "upgrade lifelong to read it" if isinstance(found, int) and found > self.format else hint
            raise UnsupportedFormat(
                f"{self.kind} snapshot {path} has format {found!r} (kind {manifest.get('kind')!r}); "
                f"this lifelong reads format {self.format}: {advice}"
            )
        for name, digest in manifest["files"].items():
            file = path / name
            if not file.exists() or _digest(file) != digest:
                raise StateError(f"{self.kind} snapshot file {file} is missing or corrupt; {hint}")
        return manifest, path

    def _publish(self, draft: Draft, manifest: dict[str, Any]) -> Path:
        files = {p.name: _digest(p) for p in sorted(draft.path.iterdir())}
        for name in files:
            with open(draft.path / name, "rb") as file:
                os.fsync(file.fileno())
        body = {
            "format": self.format,
            "kind": self.kind,
            "created_at": time.time(),
            "files": files,
            **manifest,
        }
        write_atomically(draft.path / MANIFEST, json.dumps(body, indent=1).encode())
        final = self.root / draft.name
        os.replace(draft.path, final)
        try:
            fsync_dir(self.root)
            write_atomically(self.root / POINTER, f"{draft.name}\n".encode())
        except BaseException:
            if self._pointer() != draft.name:  # not published: CURRENT still names the previous one
                shutil.rmtree(final, ignore_errors=True)
            raise
        self._prune()
        return final

    def _pointer(self) -> str | None:
        try:
            return (self.root / POINTER).read_text().strip()
        except OSError:
            return None

    def _prune(self) -> None:
        current = self.current()
        older = sorted(p for p in self.root.glob("snapshot-*") if p != current)
        for path in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
        for leftover in self.root.glob(".snapshot-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)

    def drop_older(self) -> None:
        """Delete every snapshot but the current one (after a forget, so nothing resurrects it)."""
        current = self.current()
        for path in self.root.glob("snapshot-*"):
            if path != current:
                shutil.rmtree(path, ignore_errors=True)


class Draft:
    """A snapshot being written; :meth:`commit` publishes it, leaving without it discards it.

    Leaving on a full disk raises :class:`~lifelong.errors.DiskFull` (from the OS error).
    """

    def __init__(self, owner: SnapshotDir, path: Path, name: str) -> None:
        self.owner = owner
        self.path = path
        self.name = name
        self.published: Path | None = None

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Checksum, fsync and publish; the new snapshot becomes current."""
        self.published = self.owner._publish(self, manifest)
        return self.published

    def __enter__(self) -> Draft:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if self.published is None:
            shutil.rmtree(self.path, ignore_errors=True)
        if error is not None and is_disk_full(error):
            raise disk_full(self.owner.root, error) from error
