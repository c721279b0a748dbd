"""Versioned memory snapshots from the trainer to the rollout workers (verl runs them in other processes).

The trainer updates its :class:`~atlasva.memory.SkillMemory` after each batch and :meth:`SnapshotStore.publish`
writes it to ``ROOT/v<version>/`` (a temp folder renamed into place) and then points ``ROOT/LATEST`` at it
(written atomically). A worker's :meth:`SnapshotStore.snapshot` loads the version ``LATEST`` names — once
per version — and returns its frozen :class:`~atlasva.memory.MemorySnapshot`; the episode records which
version it used (``memory_version``). Every process must see ``ROOT``: one machine, or a shared file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from atlasva.memory import MemorySnapshot, SkillMemory

LATEST = "LATEST"


class SnapshotStore:
    def __init__(self, root: str | Path, *, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()
        self._cached: tuple[int, MemorySnapshot] | None = None

    def publish(self, memory: SkillMemory) -> int:
        """Write ``memory`` as its version and make it the latest; returns the version."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = int(memory.version)
        final = self.root / f"v{version:08d}"
        if not final.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".v{version:08d}-", dir=self.root))
            try:
                memory.save(tmp)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        pointer = self.root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, self.root / LATEST)
        for old in sorted(self.root.glob("v*"))[: -self.keep]:  # readers load LATEST only: older ones can go
            shutil.rmtree(old, ignore_errors=True)
        return version

    def latest_version(self) -> int | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        return int(pointer.read_text().strip()[1:])

    def snapshot(self) -> MemorySnapshot | None:
        """The latest published snapshot (None before the first publish), loaded once per version."""
        version = self.latest_version()
        if version is None:
            return None
        with self._lock:
            if self._cached is None or self._cached[0] != version:
                self._cached = (version, SkillMemory.load(self.root / f"v{version:08d}").snapshot())
            return self._cached[1]


_STORES: dict[str, SnapshotStore] = {}


def store_at(root: str | Path, **kwargs: Any) -> SnapshotStore:
    """One store per folder per process (its cache is shared by the episodes a worker runs)."""
    key = str(Path(root).resolve())
    if key not in _STORES:
        _STORES[key] = SnapshotStore(root, **kwargs)
    return _STORES[key]
