"""The distribution channel: a granule's file copied to a destination folder (media "file",
under a configured root) or pushed to an FTP server (media "ftp", by a pusher given)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from heliostat.subscriptions.channels import files
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.model import ActionKind


class Pusher(Protocol):
    async def push(self, source: Path, url: str, remote_name: str) -> Result: ...


class DistributionChannel:
    kind: ActionKind = "distribution"

    def __init__(
        self, archive_root: Path, destination_root: Path, ftp: Pusher | None = None
    ) -> None:
        self.archive_root = archive_root.resolve()
        self.destination_root = destination_root.resolve()
        self.ftp = ftp

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        return [await self._one(d) for d in batch]

    async def _one(self, d: Delivery) -> Result:
        a = d.action
        params = dict(a.action.params)
        if a.event.type == "delete":
            return Result("delivered", "nothing to distribute for a delete")
        if params["media"] == "ftp" and self.ftp is None:
            return Result("failed", "FTP push is not configured")
        source = files.granule_file(self.archive_root, a.event.granule)
        if source is None:
            return Result("failed", f"granule {a.event.granule!r} is not a file in the archive")
        if self.ftp is not None and params["media"] == "ftp":
            return await self.ftp.push(source, params["destination"], source.name)
        folder = (self.destination_root / params["destination"]).resolve()
        if not folder.is_relative_to(self.destination_root):  # validated at subscription too
            return Result("failed", f"destination {params['destination']!r} leaves the root")
        try:
            return await asyncio.to_thread(files.place, source, folder, a, sidecar=False)
        except OSError as e:
            return Result("retry", f"{type(e).__name__}: {e}")

    async def close(self) -> None:
        pass
