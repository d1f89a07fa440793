"""The data-pool channel: a granule's file placed in an online pool folder with its metadata.

Pool ``P`` is the folder ``<pool root>/P``; an insert or metadata update places the file and a
JSON sidecar (``<name>.json``: action id, event, subscription), a delete takes both out.
Placement is atomic and idempotent by action id (channels.files).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from heliostat.subscriptions.channels import files
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.model import ActionKind


class DataPoolChannel:
    kind: ActionKind = "datapool"

    def __init__(self, archive_root: Path, pool_root: Path) -> None:
        self.archive_root = archive_root.resolve()
        self.pool_root = pool_root

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        return await asyncio.to_thread(lambda: [self._one(d) for d in batch])

    def _one(self, d: Delivery) -> Result:
        a = d.action
        folder = self.pool_root / dict(a.action.params)["pool"]
        try:
            if a.event.type == "delete":
                return files.remove(folder, Path(a.event.granule).name)
            source = files.granule_file(self.archive_root, a.event.granule)
            if source is None:
                return Result("failed", f"granule {a.event.granule!r} is not a file in the archive")
            return files.place(source, folder, a, sidecar=True)
        except OSError as e:  # a full or unmounted pool may come back
            return Result("retry", f"{type(e).__name__}: {e}")

    async def close(self) -> None:
        pass
