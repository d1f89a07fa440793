"""FTP push for the distribution action: one file to ``ftp://user:pass@host:port/dir``.

The folder is taken relative to the login folder (as curl does). The file is stored under a hidden
temporary name in the destination folder and then renamed to
its final name, so a reader of the folder never sees a partial file and a retry after a crash
overwrites rather than appends. ftplib is blocking: each push runs in a worker thread. Replies map
to outcomes: 4xx retry, 5xx failed (no such folder, permission denied), refused connections and
timeouts retry; a missing local file or a malformed url failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from heliostat.subscriptions.channels.base import Result


@dataclass(frozen=True, slots=True)
class FtpSettings:
    timeout_s: float = 30.0  # connect and every command or data block
    passive: bool = True
    block_size: int = 1 << 16


class FtpPusher:
    def __init__(self, settings: FtpSettings | None = None) -> None:
        self.settings = settings or FtpSettings()

    async def push(self, source: Path, url: str, remote_name: str) -> Result:
        return await asyncio.to_thread(self._push, source, url, remote_name)

    def _push(self, source: Path, url: str, remote_name: str) -> Result:
        u = urlsplit(url)
        if u.scheme != "ftp" or not u.hostname:
            return Result("failed", f"not an ftp:// url (scheme {u.scheme!r})")
        if not remote_name or "/" in remote_name or remote_name in (".", ".."):
            return Result("failed", f"not a file name: {remote_name!r}")
        try:
            port = u.port or 21
            f = source.open("rb")
        except ValueError:
            return Result("failed", "bad port in the url")  # the url holds a password
        except OSError as e:
            return Result("failed", f"cannot read {source}: {e.strerror or e}")
        s = self.settings
        tmp = f".{remote_name}.{uuid.uuid4().hex[:12]}.part"
        with f, ftplib.FTP(timeout=s.timeout_s) as ftp:
            try:
                ftp.connect(u.hostname, port)
                ftp.login(unquote(u.username or "anonymous"), unquote(u.password or ""))
                ftp.set_pasv(s.passive)
                folder = unquote(u.path).strip("/")
                if folder:
                    ftp.cwd(folder)  # relative to the login folder, as curl reads ftp:// urls
                try:
                    ftp.storbinary(f"STOR {tmp}", f, s.block_size)
                    reply = ftp.rename(tmp, remote_name)
                except (ftplib.Error, OSError, EOFError):
                    # The failure being reported matters more than a leftover part file.
                    with contextlib.suppress(ftplib.Error, OSError, EOFError):
                        ftp.delete(tmp)
                    raise
                return Result("delivered", reply)
            except ftplib.error_perm as e:
                return Result("failed", str(e))
            except (ftplib.Error, OSError, EOFError) as e:
                # error_temp (4xx), a garbled reply, a refused or dropped connection, a timeout
                return Result("retry", str(e) or type(e).__name__)
