"""E-mail notifications over SMTP, one digest per address and batch, rate limited per address.

All actions of a batch for one address go out as one mail listing them. An address gets at most
one mail per ``digest_window_s`` and at most ``rate_limit`` mails per ``rate_window_s``; actions
over either limit come back as ``retry`` with ``retry_after_s`` set to when the address may get
mail again, so they fold into that later digest instead of flooding the mailbox (a reprocessing
campaign matches thousands of granules). The send log (channels.sendlog) is durable in the
subscription store, in wall-clock time, so the limits hold across restarts and across the
processes serving one store (two processes mailing one address in the same instant may each send:
the check and the log are separate transactions).

Each mail names its action ids in a ``Heliostat-Action-Ids`` header and in the body, so a receiver
can drop one it has seen (delivery is at least once: a crash between the server's 250 and the
record of it sends the digest again).

An action's ``content`` param chooses the body: ``metadata`` (default) lists everything known of
the granule; ``qualified`` lists only what the subscription qualifies on (its temporal range,
footprint, numeric and string attributes) besides the granule's identity.

Replies map to outcomes per mail, so per address: 2xx delivered, 4xx retry, 5xx failed (a refused
RCPT fails only that address's actions). A refused or dropped connection, a timeout, TLS or login
trouble is retry for that address and the rest of the batch (it is the server's state, not the
address's, and an operator can fix it). Every Result carries the server's reply.
"""

from __future__ import annotations

import asyncio
import quopri
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.utils import formatdate, make_msgid
from typing import Literal, get_args

import aiosmtplib
import lmdb

from heliostat.archive.times import iso
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.channels.sendlog import SendLog
from heliostat.subscriptions.model import ActionKind, MatchedAction, Subscription

Security = Literal["none", "starttls", "tls"]
SECURITIES: tuple[Security, ...] = get_args(Security)


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str = "localhost"
    port: int = 25
    security: Security = "none"  # tls: TLS from the start (port 465); starttls: upgrade (587)
    username: str | None = None  # log in when set
    password: str | None = field(default=None, repr=False)
    sender: str = "heliostat@localhost"
    connect_timeout_s: float = 10.0
    timeout_s: float = 30.0  # per SMTP command
    idle_s: float = 20.0  # reconnect instead of reusing a connection idle this long
    digest_window_s: float = 60.0  # at most one mail per address in this window
    rate_limit: int = 20  # at most this many mails per address per rate window (0: no limit)
    rate_window_s: float = 3600.0


class EmailChannel:
    kind: ActionKind = "email"

    def __init__(
        self, settings: EmailSettings, log: SendLog, tls_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.log = log
        self._tls_context = tls_context
        self._smtp: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        self._swept = 0.0
        self._unlogged: list[tuple[str, int]] = []  # (address, time µs) accepted, not logged yet
        self._logger: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one SMTP conversation and one send log at a time

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        by_address: dict[str, list[int]] = {}
        for i, d in enumerate(batch):
            address = dict(d.action.action.params).get("address", "")
            if address:
                by_address.setdefault(address, []).append(i)
            else:
                results[i] = Result("failed", "the action has no address")
        async with self._lock:
            try:
                await self._deliver(batch, by_address, results)
            finally:
                await self._logged()  # even when stopped midway: those mails are out
        return [r for r in results if r is not None]

    async def _deliver(
        self, batch: Sequence[Delivery], by_address: dict[str, list[int]],
        results: list[Result | None],
    ) -> None:  # fmt: skip
        sent = await self._sent(list(by_address))
        down: Result | None = None  # once the server is out of reach, the rest wait too
        for address, idx in by_address.items():
            wait = self._wait_s(sent.get(address, []))
            if down is not None:
                r = down
            elif wait > 0:
                r = Result("retry", f"rate limited: next mail to {address} in {wait:.0f} s", wait)
            else:
                try:
                    r = await self._send(address, [batch[i] for i in idx])
                except _Unreachable as e:
                    r = down = e.result
            for i in idx:
                results[i] = r

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    # -- rate limit ------------------------------------------------------------------------------

    def _limited(self) -> bool:
        return self.settings.rate_limit > 0 or self.settings.digest_window_s > 0

    def _window_us(self) -> int:
        s = self.settings
        return int(max(s.rate_window_s if s.rate_limit else 0.0, s.digest_window_s) * 1e6)

    async def _sent(self, addresses: list[str]) -> dict[str, list[int]]:
        """The addresses' last mail times (and, at most once a minute, forget those whose last
        mail no longer limits them)."""
        if not self._limited():
            return {}
        now = time.time()
        if now - self._swept >= 60:
            self._swept = now
            await asyncio.to_thread(self.log.prune, int(now * 1e6) - self._window_us())
        return await asyncio.to_thread(self.log.times, addresses)

    # Each accepted mail is logged as soon as the server has answered 250, not with the result:
    # the driver records the results in one ledger transaction once the whole batch is sent, so
    # a crash in between would lose every send of the batch, and a restart could then mail those
    # addresses again at once. Here a crash loses at most the mails accepted while one log
    # commit was in flight (they are sent again on retry: at least once, as ever), and no mail
    # is counted that the server did not accept. The commits run beside the next mails' SMTP
    # conversations, several mails to one commit, and deliver() returns only once all are done.

    def _log_sent(self, address: str) -> None:
        self._unlogged.append((address, int(time.time() * 1e6)))
        if self._logger is None or self._logger.done():
            self._logger = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._unlogged:
            sent, self._unlogged = self._unlogged, []
            now_us = max(t for _, t in sent)
            keep = max(self.settings.rate_limit, 1)
            await asyncio.to_thread(self.log.add, sent, keep, now_us - self._window_us())

    async def _logged(self) -> None:
        """Wait for the mails sent so far to be logged."""
        logger, self._logger = self._logger, None
        if logger is None:
            return
        try:
            await logger
        except lmdb.Error as e:  # the mails are out: retrying them would repeat them
            self._unlogged.clear()
            print(f"heliostat: e-mail send log: {e!r}", file=sys.stderr, flush=True)

    def _wait_s(self, sent: list[int]) -> float:
        """Seconds until an address with these last mail times may get its next (0: now)."""
        s = self.settings
        if not sent:
            return 0.0
        now = time.time() * 1e6
        wait = sent[-1] + s.digest_window_s * 1e6 - now
        if s.rate_limit and len(sent) >= s.rate_limit:
            wait = max(wait, sent[-s.rate_limit] + s.rate_window_s * 1e6 - now)
        # A clock set back waits one window at most.
        return min(max(wait / 1e6, 0.0), self._window_us() / 1e6)

    # -- SMTP ------------------------------------------------------------------------------------

    async def _send(self, address: str, deliveries: list[Delivery]) -> Result:
        """The server's answer to the mail; raises _Unreachable when the connection fails."""
        message = render(self.settings.sender, address, deliveries)
        for fresh in (False, True):
            try:
                smtp = await self._connection(fresh)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                # Not this address's fault (no server, TLS or login trouble): try again later.
                await self._disconnect()
                raise _Unreachable(f"no SMTP session: {_reason(e)}") from e
            try:
                _, reply = await smtp.sendmail(self.settings.sender, [address], message)
            except aiosmtplib.SMTPRecipientsRefused as e:
                refused = e.recipients[0]
                return _reply_result(refused.code, refused.message)
            except aiosmtplib.SMTPServerDisconnected as e:
                await self._disconnect()
                if fresh:
                    raise _Unreachable(f"connection lost: {e}") from e
                continue  # a reused connection may have been closed by the server: once more
            except aiosmtplib.SMTPResponseException as e:
                return _reply_result(e.code, e.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                await self._disconnect()  # a timeout: the server may be stuck
                raise _Unreachable(_reason(e)) from e
            self._last_used = time.monotonic()
            if self._limited():
                self._log_sent(address)
            return Result("delivered", f"250 {reply}")
        raise AssertionError("unreachable")

    async def _connection(self, fresh: bool) -> aiosmtplib.SMTP:
        s = self.settings
        smtp = self._smtp
        stale = time.monotonic() - self._last_used > s.idle_s
        if smtp is not None and smtp.is_connected and not fresh and not stale:
            return smtp
        await self._disconnect()
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout_s,
            use_tls=s.security == "tls", start_tls=s.security == "starttls",
            tls_context=self._tls_context,
        )  # fmt: skip
        await smtp.connect(timeout=s.connect_timeout_s)
        if s.username is not None:
            await smtp.login(s.username, s.password or "")
        self._smtp = smtp
        return smtp

    async def _disconnect(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()


class _Unreachable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.result = Result("retry", detail)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _reply_result(code: int, message: str) -> Result:
    detail = f"{code} {message}"
    if 200 <= code < 300:
        return Result("delivered", detail)
    return Result("failed" if code >= 500 else "retry", detail)


# -- content ------------------------------------------------------------------------------------


def render(sender: str, address: str, deliveries: Sequence[Delivery]) -> bytes:
    """The digest mail for one address listing its deliveries' actions.

    Built by hand: the email package's EmailMessage took ~3 ms a mail, more than the SMTP
    conversation itself."""
    ids = [d.action.id for d in deliveries]
    n = len(deliveries)
    if n == 1:
        e = deliveries[0].action.event
        subject = f"Heliostat: {e.type} of {e.granule} in {e.collection}"
    else:
        subject = f"Heliostat: {n} granule events"
    lines = [
        f"Heliostat subscription notification: {n} granule event{'s' if n > 1 else ''}.",
        "Each action id is stable across retries: drop any you have seen before.",
        "",
    ]
    lines += [line for d in deliveries for line in describe(d.action, d.subscription)]
    text = "\r\n".join(lines) + "\r\n"
    plain = text.isascii() and max(len(line) for line in lines) <= 900
    body = text.encode() if plain else quopri.encodestring(text.encode("utf-8"))
    domain = sender.rpartition("@")[2] or "localhost"
    headers = [
        f"From: {sender}",
        f"To: {address}",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: {make_msgid(domain=domain)}",
        # Granule names are free text: encode anything that is not one printable ASCII line.
        "Subject: "
        + (subject if subject.isascii() and subject.isprintable() and len(subject) < 900
           else Header(subject, "utf-8").encode()),
        "Heliostat-Action-Ids: " + "\r\n ".join(ids),  # one id per folded line
        "MIME-Version: 1.0",
        f"Content-Type: text/plain; charset={'us-ascii' if plain else 'utf-8'}",
        f"Content-Transfer-Encoding: {'7bit' if plain else 'quoted-printable'}",
    ]  # fmt: skip
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def describe(a: MatchedAction, sub: Subscription | None) -> list[str]:
    """The lines about one action: the granule's metadata, or only what sub qualifies on."""
    e = a.event
    lines = [
        f"Action {a.id}",
        f"  subscription: {a.subscription_id}",
        f"  collection: {e.collection}",
        f"  event: {e.type}",
        f"  granule: {e.granule}",
    ]
    if dict(a.action.params).get("content", "metadata") == "qualified":
        q = sub.qualifiers if sub is not None else None
        temporal = q is not None and q.temporal is not None
        spatial = q is not None and q.spatial is not None
        numeric = {n.attribute for n in q.numeric} if q is not None else set()
        strings = {s.attribute for s in q.strings} if q is not None else set()
    else:
        temporal = spatial = True
        numeric = {name for name, _ in e.numeric}
        strings = {name for name, _ in e.strings}
    if temporal:
        lines.append(f"  time: {iso(e.start_us)} to {iso(e.end_us)}")
    if spatial and e.box is not None:
        b = e.box
        lines.append(f"  footprint: x {b.x_min:g} to {b.x_max:g}, y {b.y_min:g} to {b.y_max:g}")
    lines += [f"  {name}: {v:g}" for name, v in e.numeric if name in numeric]
    lines += [f"  {name}: {v}" for name, v in e.strings if name in strings]
    lines.append("")
    return lines
