"""Placing a granule's file (and a metadata sidecar) in a folder: atomically and idempotently.

A copy goes to a temporary name in the target folder, is fsynced, then renamed over the target,
so a reader never sees half a file and a crash leaves at most a stray temporary file (named by
the action id, so the retry overwrites it). The sidecar is written last: its presence, naming the
action id, says the placement is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from heliostat.subscriptions.channels.base import Result
from heliostat.subscriptions.model import MatchedAction, event_to_dict

SIDECAR = ".json"


def granule_file(archive_root: Path, granule: str) -> Path | None:
    """The file a granule names (a path relative to the archive root), if it lies inside it.
    Checked by name, not by resolving links: an archive may link to files kept elsewhere."""
    path = Path(os.path.normpath(archive_root / granule))
    if not path.is_relative_to(archive_root) or not path.is_file():
        return None
    return path


def metadata(a: MatchedAction) -> dict[str, Any]:
    return {
        "action_id": a.id, "event_id": a.event_id, "subscription_id": a.subscription_id,
        "owner": a.owner, "event": event_to_dict(a.event),
    }  # fmt: skip


def _write_atomic(target: Path, tmp_tag: str, fill: Any) -> None:
    tmp = target.with_name(f".{target.name}.{tmp_tag}.tmp")
    with open(tmp, "wb") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(source: Path, folder: Path, a: MatchedAction, *, sidecar: bool) -> Result:
    """Copy source into folder under its own name (with a sidecar of the action's metadata);
    a placement already done for this action id is not repeated."""
    target = folder / source.name
    meta_path = target.with_name(target.name + SIDECAR)
    if sidecar and target.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_bytes()).get("action_id") == a.id:
                return Result("delivered", f"already placed as {target}")
        except (OSError, ValueError):
            pass  # unreadable: place it again
    folder.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src:
        _write_atomic(target, a.id, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    if sidecar:
        body = json.dumps(metadata(a), indent=1).encode()
        _write_atomic(meta_path, a.id, lambda f: f.write(body))
    _fsync_dir(folder)
    return Result("delivered", f"placed {target}")


def remove(folder: Path, name: str) -> Result:
    """Take a granule (and its sidecar) out of a folder; done already counts as done."""
    target = folder / name
    for p in (target.with_name(name + SIDECAR), target):
        p.unlink(missing_ok=True)
    if folder.is_dir():
        _fsync_dir(folder)
    return Result("delivered", f"removed {target}")
