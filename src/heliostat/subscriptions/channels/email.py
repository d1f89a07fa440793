"""E-mail notifications over SMTP, one digest per address and batch, rate limited per address.

All actions of a batch for one address go out as one mail listing them. An address gets at most
one mail per ``digest_window_s`` and at most ``rate_limit`` mails per ``rate_window_s``; actions
over either limit come back as ``retry`` with ``retry_after_s`` set to when the address may get
mail again, so they fold into that later digest instead of flooding the mailbox (a reprocessing
campaign matches thousands of granules). The send log (channels.sendlog) is durable in the
subscription store, in wall-clock time, so the limits hold across restarts and across the
processes serving one store: each batch's addresses are checked and their slots taken in one
transaction before any is mailed, and the slots of mails not sent are given back (see sendlog).

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
from heliostat.subscriptions.channels.sendlog import Limits, SendLog
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
        self._limits = Limits(
            int(settings.digest_window_s * 1e6),
            settings.rate_limit,
            int(settings.rate_window_s * 1e6),
        )
        self._lock = asyncio.Lock()  # one SMTP conversation at a time

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
            await self._deliver(batch, by_address, results)
        return [r for r in results if r is not None]

    async def _deliver(
        self, batch: Sequence[Delivery], by_address: dict[str, list[int]],
        results: list[Result | None],
    ) -> None:  # fmt: skip
        t_us, waits = await self._reserve(list(by_address))
        unsent = [a for a in by_address if not waits.get(a)]  # reserved, not sent yet
        down: Result | None = None  # once the server is out of reach, the rest wait too
        try:
            for address, idx in by_address.items():
                wait = waits.get(address, 0) / 1e6
                if down is not None:
                    r = down
                elif wait > 0:
                    why = f"rate limited: next mail to {address} in {wait:.0f} s"
                    r = Result("retry", why, wait)
                else:
                    unsent.remove(address)  # cancelled while sending: its fate is unknown
                    try:
                        r, maybe_sent = await self._send(address, [batch[i] for i in idx])
                    except _Unreachable as e:
                        r, maybe_sent, down = e.result, e.maybe_sent, e.result
                    if not maybe_sent:
                        unsent.append(address)
                for i in idx:
                    results[i] = r
        finally:  # even when stopped midway: the slots of mails not sent are free again
            if unsent and self._limited():
                try:
                    await asyncio.to_thread(self.log.release, [(a, t_us) for a in unsent])
                except lmdb.Error as e:  # the mails sent must not be retried: slots stay taken
                    print(f"heliostat: e-mail send log: {e!r}", file=sys.stderr, flush=True)

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    # -- rate limit ------------------------------------------------------------------------------

    def _limited(self) -> bool:
        return self.settings.rate_limit > 0 or self.settings.digest_window_s > 0

    async def _reserve(self, addresses: list[str]) -> tuple[int, dict[str, int]]:
        """Take a send slot now for each address the limits allow (and, at most once a minute,
        forget those whose last mail no longer limits them); returns the time of the slots and
        each address's wait in µs (0: reserved)."""
        now_us = time.time_ns() // 1000
        if not self._limited():
            return now_us, {}
        if now_us / 1e6 - self._swept >= 60:
            self._swept = now_us / 1e6
            await asyncio.to_thread(self.log.prune, now_us - self._limits.window_us)
        return now_us, await asyncio.to_thread(self.log.reserve, addresses, now_us, self._limits)

    # -- SMTP ------------------------------------------------------------------------------------

    async def _send(self, address: str, deliveries: list[Delivery]) -> tuple[Result, bool]:
        """The server's answer to the mail, and whether it may have been sent (accepted, or lost
        mid-conversation); raises _Unreachable when the connection fails."""
        message = render(self.settings.sender, address, deliveries)
        for fresh in (False, True):
            try:
                smtp = await self._connection(fresh)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                # Not this address's fault (no server, TLS or login trouble): try again later.
                await self._disconnect()
                raise _Unreachable(f"no SMTP session: {_reason(e)}", maybe_sent=False) from e
            try:
                _, reply = await smtp.sendmail(self.settings.sender, [address], message)
            except aiosmtplib.SMTPRecipientsRefused as e:
                refused = e.recipients[0]
                return _reply_result(refused.code, refused.message), False
            except aiosmtplib.SMTPServerDisconnected as e:
                await self._disconnect()
                if fresh:
                    raise _Unreachable(f"connection lost: {e}", maybe_sent=True) from e
                continue  # a reused connection may have been closed by the server: once more
            except aiosmtplib.SMTPResponseException as e:
                r = _reply_result(e.code, e.message)
                return r, r.outcome == "delivered"
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                await self._disconnect()  # a timeout: the server may be stuck
                raise _Unreachable(_reason(e), maybe_sent=True) from e
            self._last_used = time.monotonic()
            return Result("delivered", f"250 {reply}"), True
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
    def __init__(self, detail: str, *, maybe_sent: bool) -> None:
        super().__init__(detail)
        self.result = Result("retry", detail)
        self.maybe_sent = maybe_sent  # lost mid-conversation: the server may have accepted it


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
