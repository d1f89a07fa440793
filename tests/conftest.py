"""Shared fixtures: the real sample JP2 files, archives built from them, and a running server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliostat.archive import naming, sources
from heliostat.archive.header import read_record

DATA = Path(__file__).parent / "data" / "jp2"
SAMPLES = sorted(DATA.glob("*.jp2"))
AIA_171 = sorted(DATA.glob("*SDO_AIA_AIA_171.jp2"))
LASCO_C3 = next(DATA.glob("*LASCO_C3*.jp2"))


def place_samples(root: Path, files: list[Path] = SAMPLES) -> list[Path]:
    """Copy sample files into their Helioviewer folders under root."""
    out = []
    for f in files:
        rec = read_record(f, f.name)
        dest = root / naming.folder(sources.by_id(rec.source_id), rec.time_us) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
        out.append(dest)
    return out


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    place_samples(root)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, archive: Path, proc: subprocess.Popen[str], port: int) -> None:
        self.archive = archive
        self.proc = proc
        self.port = port
        self.target = f"127.0.0.1:{port}"


def start_server(archive: Path, *extra: str, ingest: bool = True) -> RunningServer:
    port = free_port()
    cmd = [sys.executable, "-m", "heliostat.cli", "serve", "--archive", str(archive),
           "--grpc-port", str(port), *(["--ingest"] if ingest else []), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    from heliostat.client import HeliostatClient

    deadline = time.monotonic() + 120
    with HeliostatClient(f"127.0.0.1:{port}") as c:
        while True:
            try:
                c.wait_ready(timeout=1)
                break
            except TimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out = proc.communicate()[0]
                    raise RuntimeError(f"server did not start:\n{out}") from None
    return RunningServer(archive, proc, port)


def stop_server(server: RunningServer) -> str:
    server.proc.terminate()
    try:
        out, _ = server.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("served") / "archive"
    place_samples(root)
    srv = start_server(root)
    yield srv
    stop_server(srv)


def ingest_then_kill(root: Path, catalog: Path, *, batch_size: int, kill_after: int) -> int:
    """Ingest root into a catalog in a child process, kill -9 it once it has reported at least
    kill_after files indexed (or it finished), and return the last count it reported."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from heliostat.archive.ingest import ingest
        from heliostat.catalog.store import Catalog
        cat = Catalog(Path({str(catalog)!r}))
        def report(r):
            print("indexed", r.indexed, flush=True)
        ingest(cat, Path({str(root)!r}), [Path({str(root)!r})], batch_size={batch_size},
               on_batch=report)
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        if line.startswith("indexed"):
            reported = int(line.split()[1])
            if reported >= kill_after:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return reported


def many_links(root: Path, files: list[Path], n: int) -> None:
    """n more distinct paths for the given archive files: hard links, cheap to make."""
    for i in range(n):
        src = files[i % len(files)]
        src.with_name(f"copy{i:04d}_{src.name}").hardlink_to(src)
