"""The FTP pusher against a real pyftpdlib server run in a thread by the tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from heliostat.subscriptions.channels.ftp import FtpPusher, FtpSettings
from tests.conftest import AIA_171, free_port

PASSWORD = "p@ss:w/rd"  # needs quoting in the url


class Handler(FTPHandler):  # type: ignore[misc]
    """Records where files land and renames; the user "busy" gets 450 to every STOR."""

    events: list[tuple[str, ...]]
    auth_failed_timeout = 0.1  # answer a bad login at once (pyftpdlib waits 3 s by default)

    def on_file_received(self, file: str) -> None:
        self.events.append(("stored", Path(file).name))

    def ftp_RNTO(self, path: str) -> Any:
        self.events.append(("rename", Path(self._rnfr).name, Path(path).name))
        return super().ftp_RNTO(path)

    def ftp_STOR(self, file: str, mode: str = "w") -> Any:
        if self.username == "busy":
            self.respond("450 Busy, try again later.")
            return None
        return super().ftp_STOR(file, mode)


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "incoming").mkdir(parents=True)
        auth = DummyAuthorizer()
        auth.add_user("writer", PASSWORD, str(root), perm="elradfmw")
        auth.add_user("reader", "pw", str(root), perm="elr")
        auth.add_user("busy", "pw", str(root), perm="elradfmw")
        self.events: list[tuple[str, ...]] = []
        handler = type("H", (Handler,), {"authorizer": auth, "events": self.events})
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"timeout": 0.05})
        self.thread.start()

    def url(self, user: str = "writer", password: str = PASSWORD, folder: str = "incoming") -> str:
        return f"ftp://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{folder}"

    def stop(self) -> None:
        self.server.close_all()
        self.thread.join(5)


@pytest.fixture
def ftp(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "ftproot")
    yield s
    s.stop()


async def test_upload_lands_atomically_with_the_right_bytes(ftp: Server) -> None:
    source = AIA_171[0]
    r = await FtpPusher().push(source, ftp.url(), "aia_171.jp2")
    assert (r.outcome, r.detail) == ("delivered", "250 Renaming ok.")
    landed = ftp.root / "incoming" / "aia_171.jp2"
    assert landed.read_bytes() == source.read_bytes()
    assert [p.name for p in landed.parent.iterdir()] == ["aia_171.jp2"]  # no part file left
    (stored,), (renamed,) = (
        [e for e in ftp.events if e[0] == "stored"],
        [e for e in ftp.events if e[0] == "rename"],
    )
    tmp = stored[1]
    assert tmp.startswith(".aia_171.jp2.") and tmp.endswith(".part")
    assert renamed == ("rename", tmp, "aia_171.jp2")
    # a second push (a retry) replaces the file whole
    other = tmp_path_file(ftp.root.parent, b"new content")
    r = await FtpPusher(FtpSettings(passive=True)).push(other, ftp.url(), "aia_171.jp2")
    assert r.outcome == "delivered" and landed.read_bytes() == b"new content"


def tmp_path_file(folder: Path, data: bytes) -> Path:
    p = folder / "local.bin"
    p.write_bytes(data)
    return p


async def test_replies_map_to_outcomes(ftp: Server, tmp_path: Path) -> None:
    source = tmp_path_file(tmp_path, b"x" * 1000)
    pusher = FtpPusher(FtpSettings(timeout_s=2))
    busy = await pusher.push(source, ftp.url("busy", "pw"), "f.bin")
    assert (busy.outcome, busy.detail) == ("retry", "450 Busy, try again later.")
    no_dir = await pusher.push(source, ftp.url(folder="missing"), "f.bin")
    assert no_dir.outcome == "failed" and no_dir.detail.startswith("550")
    read_only = await pusher.push(source, ftp.url("reader", "pw"), "f.bin")
    assert read_only.outcome == "failed" and read_only.detail.startswith("550")
    bad_login = await pusher.push(source, ftp.url(password="wrong"), "f.bin")
    assert bad_login.outcome == "failed" and bad_login.detail.startswith("530")
    missing = await pusher.push(tmp_path / "nope.bin", ftp.url(), "f.bin")
    assert missing.outcome == "failed" and "cannot read" in missing.detail
    assert (await pusher.push(source, "http://h/x", "f.bin")).outcome == "failed"
    bad_port = await pusher.push(source, f"ftp://writer:{quote(PASSWORD)}@h:99999/x", "f.bin")
    assert bad_port.outcome == "failed" and "bad port" in bad_port.detail
    for r in (busy, no_dir, read_only, bad_login, missing, bad_port):
        assert PASSWORD not in r.detail and quote(PASSWORD, safe="") not in r.detail
    assert (await pusher.push(source, ftp.url(), "../f.bin")).outcome == "failed"
    assert list((ftp.root / "incoming").iterdir()) == []


async def test_unreachable_and_silent_servers_retry(tmp_path: Path) -> None:
    source = tmp_path_file(tmp_path, b"x")
    pusher = FtpPusher(FtpSettings(timeout_s=0.5))
    refused = await pusher.push(source, f"ftp://u:p@127.0.0.1:{free_port()}/d", "f.bin")
    assert refused.outcome == "retry" and "refused" in refused.detail.lower()
    with socket.socket() as silent:  # accepts connections, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t0 = time.monotonic()
        r = await pusher.push(source, f"ftp://u:p@127.0.0.1:{silent.getsockname()[1]}/", "f.bin")
        assert r.outcome == "retry" and time.monotonic() - t0 < 3
