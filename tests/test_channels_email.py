"""The e-mail channel against real SMTP servers (aiosmtpd) started by the tests."""

from __future__ import annotations

import asyncio
import email
import email.header
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from heliostat.errors import InvalidArgument
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.channels.base import Delivery
from heliostat.subscriptions.channels.email import EmailChannel, EmailSettings
from heliostat.subscriptions.channels.sendlog import Limits, SendLog
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    GranuleEvent,
    MatchedAction,
    NumericRange,
    Qualifiers,
    StringEquals,
    Subscription,
    Temporal,
    validate_action,
)
from heliostat.subscriptions.service import SubscriptionService
from heliostat.subscriptions.store import SubscriptionStore
from tests.conftest import free_port


class Recorder:
    """Accepts mail except for chosen recipients, answered with a chosen RCPT reply."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.refuse = refuse or {}
        self.mails: list[tuple[list[str], Message]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.mails.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return f"250 2.0.0 Ok: queued as Q{len(self.mails)}"


class SmtpServer:
    def __init__(self, handler: Recorder, port: int | None = None) -> None:
        self.handler = handler
        self.port = port or free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    s = SmtpServer(
        Recorder(
            {
                "full@example.org": "451 4.2.2 Mailbox full",
                "nobody@example.org": "550 5.1.1 No such user",
            }
        )
    )
    yield s
    s.stop()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SendLog]:
    """The send log, in a store of its own."""
    store = SubscriptionStore(tmp_path / "sendlog")
    yield SendLog(store)
    store.close()


def channel(server: SmtpServer, log: SendLog, **kw: Any) -> EmailChannel:
    settings: dict[str, Any] = {"digest_window_s": 0.0, "rate_limit": 0, "timeout_s": 5.0}
    settings.update(kw)
    return EmailChannel(
        EmailSettings(host="127.0.0.1", port=server.port, sender="hs@sun.example", **settings), log
    )


EVENT = GranuleEvent(
    "AIA_171.1", "insert", "2014/02/03/aia_171.jp2", 1_391_393_327_340_000, 1_391_393_327_340_000,
    Box(-1200.5, -1100, 1200, 1100), (("cloud", 12.5), ("wavelength", 171.0)),
    (("instrument", "AIA"), ("day", "y")),
)  # fmt: skip
SUB = Subscription(
    7, "alice", "AIA_171.1", frozenset({"insert"}),
    qualifiers=Qualifiers(temporal=Temporal(0, 2**62), numeric=(NumericRange("cloud", 0, 20),),
                          strings=(StringEquals("day", "y"),)),
)  # fmt: skip


def delivery(address: str, event_id: int = 1, content: str | None = None) -> Delivery:
    params = {"address": address} | ({"content": content} if content else {})
    action = validate_action(Action("email", tuple(params.items())), 0)
    return Delivery(MatchedAction(event_id, SUB.id, 0, SUB.owner, action, EVENT), 1, SUB)


def body(m: Message) -> str:
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_one_digest_per_address_listing_every_action_id(
    server: SmtpServer, log: SendLog
) -> None:
    ch = channel(server, log)
    batch = [delivery("a@example.org", 1), delivery("b@example.org", 2),
             delivery("a@example.org", 3), delivery("a@example.org", 4)]  # fmt: skip
    results = await ch.deliver(batch)
    await ch.close()
    assert [r.outcome for r in results] == ["delivered"] * 4
    assert results[0].detail == results[2].detail == results[3].detail
    assert results[0].detail.startswith("250 2.0.0 Ok: queued as Q")
    assert results[1].detail != results[0].detail
    by_to = {tuple(to): m for to, m in server.handler.mails}
    assert set(by_to) == {("a@example.org",), ("b@example.org",)}
    a = by_to[("a@example.org",)]
    ids = [batch[i].action.id for i in (0, 2, 3)]
    assert a["Heliostat-Action-Ids"].split() == ids
    assert a["From"] == "hs@sun.example"
    assert a["Subject"] == "Heliostat: 3 granule events"
    assert all(f"Action {i}" in body(a) for i in ids)
    b = by_to[("b@example.org",)]
    assert b["Heliostat-Action-Ids"] == batch[1].action.id
    assert b["Subject"] == "Heliostat: insert of 2014/02/03/aia_171.jp2 in AIA_171.1"


async def test_content_metadata_lists_everything_qualified_only_what_is_qualified(
    server: SmtpServer, log: SendLog
) -> None:
    ch = channel(server, log)
    await ch.deliver([delivery("m@example.org", 1), delivery("q@example.org", 2, "qualified")])
    await ch.close()
    by_to = {to[0]: body(m) for to, m in server.handler.mails}
    full, qualified = by_to["m@example.org"], by_to["q@example.org"]
    for text in (full, qualified):
        assert "granule: 2014/02/03/aia_171.jp2" in text
        assert "collection: AIA_171.1" in text and "event: insert" in text
        assert "time: 2014-02-03T02:08:47.340000Z to 2014-02-03T02:08:47.340000Z" in text
        assert "cloud: 12.5" in text and "day: y" in text
    for line in ("footprint: x -1200.5 to 1200, y -1100 to 1100", "wavelength: 171",
                 "instrument: AIA"):  # fmt: skip
        assert line in full
        assert line not in qualified


async def test_rate_limit_and_digest_window_defer_with_retry_after(
    server: SmtpServer, log: SendLog
) -> None:
    ch = channel(server, log, rate_limit=2, rate_window_s=3.0)
    assert [r.outcome for r in await ch.deliver([delivery("a@example.org", 1)])] == ["delivered"]
    assert [r.outcome for r in await ch.deliver([delivery("a@example.org", 2)])] == ["delivered"]
    t0 = time.monotonic()
    over = await ch.deliver([delivery("a@example.org", 3), delivery("a@example.org", 4),
                             delivery("b@example.org", 5)])  # fmt: skip
    assert [r.outcome for r in over] == ["retry", "retry", "delivered"]
    wait = over[0].retry_after_s
    assert wait is not None and 1.0 < wait <= 3.0
    assert "rate limited" in over[0].detail
    assert len(server.handler.mails) == 3
    await asyncio.sleep(wait - (time.monotonic() - t0) + 0.05)
    later = await ch.deliver([delivery("a@example.org", 3), delivery("a@example.org", 4)])
    assert [r.outcome for r in later] == ["delivered", "delivered"]
    to, folded = server.handler.mails[-1]
    assert to == ["a@example.org"] and len(folded["Heliostat-Action-Ids"].split()) == 2
    await ch.close()

    windowed = channel(server, log, digest_window_s=2.0)
    assert (await windowed.deliver([delivery("w@example.org", 6)]))[0].outcome == "delivered"
    r = (await windowed.deliver([delivery("w@example.org", 7)]))[0]
    assert r.outcome == "retry" and r.retry_after_s is not None and 1.0 < r.retry_after_s <= 2.0
    await windowed.close()


async def test_refused_recipient_fails_or_retries_only_its_actions(
    server: SmtpServer, log: SendLog
) -> None:
    ch = channel(server, log)
    batch = [delivery("nobody@example.org", 1), delivery("full@example.org", 2),
             delivery("ok@example.org", 3), delivery("nobody@example.org", 4)]  # fmt: skip
    results = await ch.deliver(batch)
    await ch.close()
    assert [r.outcome for r in results] == ["failed", "retry", "delivered", "failed"]
    assert results[0].detail == "550 5.1.1 No such user"
    assert results[1].detail == "451 4.2.2 Mailbox full"
    assert [to for to, _ in server.handler.mails] == [["ok@example.org"]]


async def test_no_server_and_silent_server_are_retry(log: SendLog) -> None:
    ch = EmailChannel(EmailSettings(host="127.0.0.1", port=free_port(), digest_window_s=0), log)
    r = await ch.deliver([delivery("a@example.org"), delivery("b@example.org")])
    assert [x.outcome for x in r] == ["retry", "retry"] and "no SMTP session" in r[0].detail
    await ch.close()
    with socket.socket() as silent:  # accepts connections, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        ch = EmailChannel(EmailSettings(host="127.0.0.1", port=port, connect_timeout_s=0.5,
                                        timeout_s=0.5, digest_window_s=0), log)  # fmt: skip
        t0 = time.monotonic()
        r = await ch.deliver([delivery(f"{n}@example.org") for n in "abcdef"])
        assert {x.outcome for x in r} == {"retry"}
        assert time.monotonic() - t0 < 2.5  # one timeout for the batch, not one per address
        await ch.close()


async def test_reconnects_after_the_server_restarts(log: SendLog) -> None:
    server = SmtpServer(Recorder())
    ch = channel(server, log)
    assert (await ch.deliver([delivery("a@example.org", 1)]))[0].outcome == "delivered"
    server.stop()
    again = SmtpServer(Recorder(), server.port)
    try:
        assert (await ch.deliver([delivery("a@example.org", 2)]))[0].outcome == "delivered"
        assert len(again.handler.mails) == 1
    finally:
        await ch.close()
        again.stop()


def test_content_param_is_validated() -> None:
    validate_action(Action("email", (("address", "a@b.org"), ("content", "qualified"))), 0)
    with pytest.raises(InvalidArgument) as e:
        validate_action(Action("email", (("address", "a@b.org"), ("content", "all"))), 2)
    assert e.value.field == "actions[2].content"


async def test_free_text_is_encoded_not_injected(server: SmtpServer, log: SendLog) -> None:
    odd = GranuleEvent(
        "AIA_171.1", "insert", "spectra/Ångström\nBcc: victim@example.org", 0, 0,
        strings=(("observer", "Jöns Ångström"),),
    )  # fmt: skip
    action = validate_action(Action("email", (("address", "a@example.org"),)), 0)
    d = Delivery(MatchedAction(9, SUB.id, 0, SUB.owner, action, odd), 1, SUB)
    ch = channel(server, log)
    assert (await ch.deliver([d]))[0].outcome == "delivered"
    await ch.close()
    ((to, m),) = server.handler.mails
    assert to == ["a@example.org"] and m["Bcc"] is None
    subject = str(email.header.make_header(email.header.decode_header(m["Subject"])))
    assert subject.startswith("Heliostat: insert of spectra/Ångström") and len(m.keys()) == 9
    text = body(m) if m.get_content_charset() == "us-ascii" else m.get_payload(decode=True).decode()
    assert "observer: Jöns Ångström" in text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def check_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"hs", b"pw")
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_and_login(security: str, certificate: tuple[Path, Path], log: SendLog) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    handler, port = Recorder(), free_port()
    # aiosmtpd counts only STARTTLS as TLS for AUTH; implicit TLS is TLS from the first byte.
    tls: dict[str, Any] = (
        {"tls_context": server_tls, "require_starttls": True, "auth_require_tls": True}
        if security == "starttls"
        else {"ssl_context": server_tls, "auth_require_tls": False}
    )
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=check_login,
                            **tls)  # fmt: skip
    controller.start()
    try:
        for password, outcome in (("pw", "delivered"), ("wrong", "retry")):
            settings = EmailSettings(host="127.0.0.1", port=port, security=security,  # type: ignore[arg-type]
                                     username="hs", password=password, digest_window_s=0,
                                     timeout_s=5)  # fmt: skip
            ch = EmailChannel(settings, log, tls_context=client_tls)
            r = (await ch.deliver([delivery("a@example.org")]))[0]
            await ch.close()
            assert r.outcome == outcome, r
        assert "SMTPAuthenticationError" in r.detail
        assert [to for to, _ in handler.mails] == [["a@example.org"]]
    finally:
        controller.stop()


async def test_mails_actions_as_the_service_records_them(
    server: SmtpServer, tmp_path: Path, log: SendLog
) -> None:
    """Publish → the store's MatchedAction → a qualified mail naming its action id."""
    op = Principal("ops", operator=True)
    svc = SubscriptionService(tmp_path / "subs")
    try:
        svc.create_collection(op, Collection("MODIS", "6", "geographic"))
        mail = Action("email", (("address", "a@example.org"), ("content", "qualified")))
        qualifiers = Qualifiers(numeric=(NumericRange("cloud", 0, 20),))
        s = svc.create(
            Principal("alice"),
            Subscription(0, "", "MODIS.6", frozenset({"insert"}), qualifiers=qualifiers,
                         actions=(mail,)),
        )  # fmt: skip
        event = GranuleEvent("MODIS.6", "insert", "MOD021KM.hdf", 1, 2, Box(-10, -5, 10, 5),
                             (("cloud", 3.0), ("sun", 40.0)))  # fmt: skip
        svc.publish(op, [event])
        (action,) = svc.store.actions_after(b"", 10, None)
        sub_now = svc.store.get(s.id)
    finally:
        svc.close()
    ch = channel(server, log)
    (r,) = await ch.deliver([Delivery(action, 1, sub_now)])
    await ch.close()
    assert r.outcome == "delivered"
    ((_, m),) = server.handler.mails
    assert m["Heliostat-Action-Ids"] == action.id
    text = body(m)
    assert f"Action {action.id}" in text and "cloud: 3" in text and "sun:" not in text


async def test_rate_limit_survives_a_restart(server: SmtpServer, tmp_path: Path) -> None:
    """Mails up to the limit, then the server process's state is gone (a new service on the same
    store, as after a restart or kill -9): the next mail is deferred, not sent."""
    settings = EmailSettings(host="127.0.0.1", port=server.port, timeout_s=5.0, rate_limit=2,
                             rate_window_s=30.0, digest_window_s=0.0)  # fmt: skip
    svc = SubscriptionService(tmp_path / "subs")
    ch = EmailChannel(settings, SendLog(svc.store))
    t_first = time.time()
    assert (await ch.deliver([delivery("a@example.org", 1)]))[0].outcome == "delivered"
    # Several mails of one batch: each logged, before deliver() answers.
    batch = [delivery(f"{x}@example.org", 2) for x in "acd"]
    assert [r.outcome for r in await ch.deliver(batch)] == ["delivered"] * 3
    refused = await ch.deliver([delivery("nobody@example.org", 3)])
    assert refused[0].outcome == "failed"  # not accepted: not counted
    await ch.close()
    svc.close()

    svc = SubscriptionService(tmp_path / "subs")
    try:
        logged = SendLog(svc.store).times(["c@example.org", "d@example.org"])
        assert [len(t) for t in logged.values()] == [1, 1]
        ch = EmailChannel(settings, SendLog(svc.store))
        r = await ch.deliver([delivery("a@example.org", 4), delivery("nobody@example.org", 5),
                              delivery("b@example.org", 6)])  # fmt: skip
        t_end = time.time()
        await ch.close()
    finally:
        svc.close()
    assert [x.outcome for x in r] == ["retry", "failed", "delivered"]
    wait = r[0].retry_after_s
    # The first mail's time + the window, as measured before the restart.
    assert wait is not None and t_first + 30.0 - t_end <= wait <= 30.0
    assert "rate limited" in r[0].detail
    mailed = [to[0] for to, _ in server.handler.mails]
    assert mailed == [
        "a@example.org",
        "a@example.org",
        "c@example.org",
        "d@example.org",
        "b@example.org",
    ]


def test_send_log_reserves_within_the_limits_and_releases(log: SendLog) -> None:
    s = 1_000_000
    limits = Limits(digest_window_us=0, rate_limit=3, rate_window_us=100 * s)
    for t in (1, 2, 3):
        assert log.reserve(["a@example.org"], t * s, limits) == {"a@example.org": 0}
    # The fourth waits until the first leaves the window; b has its own slots.
    assert log.reserve(["a@example.org", "b@example.org"], 4 * s, limits) == {
        "a@example.org": 97 * s, "b@example.org": 0,
    }  # fmt: skip
    assert log.times(["a@example.org", "b@example.org", "c@example.org"]) == {
        "a@example.org": [1 * s, 2 * s, 3 * s], "b@example.org": [4 * s], "c@example.org": [],
    }  # fmt: skip
    log.release([("a@example.org", 2 * s), ("b@example.org", 4 * s)])  # not sent after all
    assert log.times(["a@example.org", "b@example.org"]) == {
        "a@example.org": [1 * s, 3 * s], "b@example.org": [],
    }  # fmt: skip
    assert log.reserve(["a@example.org"], 5 * s, limits) == {"a@example.org": 0}
    # Past the window the old times are dropped; a digest window spaces mails out.
    windowed = Limits(digest_window_us=10 * s, rate_limit=3, rate_window_us=100 * s)
    assert log.reserve(["a@example.org"], 200 * s, windowed) == {"a@example.org": 0}
    assert log.times(["a@example.org"])["a@example.org"] == [200 * s]
    assert log.reserve(["a@example.org"], 204 * s, windowed) == {"a@example.org": 6 * s}
    assert log.prune(since_us=150 * s) == 1  # b's slot is gone: nothing limits it
    assert log.times(["a@example.org"])["a@example.org"] == [200 * s]


RACER = """
import asyncio, sys, time
from pathlib import Path
from heliostat.subscriptions.channels.base import Delivery
from heliostat.subscriptions.channels.email import EmailChannel, EmailSettings
from heliostat.subscriptions.channels.sendlog import Limits, SendLog
from heliostat.subscriptions.store import SubscriptionStore
from tests.test_channels_email import delivery

store, port, go = sys.argv[1:]
log = SendLog(SubscriptionStore(Path(store)))
settings = EmailSettings(host="127.0.0.1", port=int(port), timeout_s=5.0, rate_limit=3,
                         rate_window_s=600.0, digest_window_s=0.0)

async def main():
    ch = EmailChannel(settings, log)
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.001)
    outcomes = [(await ch.deliver([delivery("race@example.org", n)]))[0].outcome
                for n in range(6)]
    await ch.close()
    print(" ".join(outcomes), flush=True)

asyncio.run(main())
"""


def test_two_processes_racing_for_one_address_send_exactly_the_limit(
    server: SmtpServer, tmp_path: Path
) -> None:
    """Two processes on one store mail one address as fast as they can: the limit (3) holds
    between them, because each check takes its slot in the same transaction."""
    store, go = tmp_path / "subs", tmp_path / "go"
    SubscriptionStore(store).close()
    root = str(Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-c", RACER, str(store), str(server.port), str(go)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        outcomes += out.split()
    assert len(server.handler.mails) == 3
    assert outcomes.count("delivered") == 3 and outcomes.count("retry") == 9
