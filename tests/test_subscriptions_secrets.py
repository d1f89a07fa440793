"""Secrets in actions (a webhook's signing secret, an FTP destination's password) over a real
server: never returned by any read, kept by a read-modify-write update, replaced by a new value,
and still what the channels deliver with (a real HTTP receiver checks the signature, a real FTP
server the login)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heliostat.client import HeliostatClient
from heliostat.errors import InvalidArgument
from heliostat.subscriptions.channels.base import Delivery, Result
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.model import (
    Action,
    ActionKind,
    Collection,
    redact_action,
    redact_text,
    restore_secrets,
    validate_action,
)
from heliostat.subscriptions.service import SubscriptionService
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import start_server, stop_server
from tests.test_channels_ftp import PASSWORD
from tests.test_channels_ftp import Server as FtpServer
from tests.test_channels_webhook import verify
from tests.test_delivery_pipeline import ALICE, OP, run_until, subscribe
from tests.test_delivery_pipeline import publish as publish_one
from tests.test_subscriptions_server import cli

T = TypeVar("T")
SECRET = "the-first-secret-of-32-bytes-xyz"
NEW_SECRET = "a-second-secret-of-32-bytes-abcd"
QUOTED = quote(PASSWORD, safe="")


class Hooks:
    """A real HTTP receiver: records (path, secret that verifies the signature) per POST."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = dict(self.headers.items())
                ok = next(
                    (s for s in (SECRET, NEW_SECRET) if verify(s.encode(), headers, body)), None
                )
                hooks.seen.append((self.path, ok))
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def wait_for(fn: Callable[[], T], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while not (out := fn()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[HeliostatClient, HeliostatClient, Hooks, FtpServer]]:
    root = tmp_path / "archive"
    (root / "incoming").mkdir(parents=True)
    (root / "incoming" / "g.hdf").write_bytes(b"granule bytes")
    tokens = {
        who: cli("token", "create", "--archive", str(root), "--owner", who, *extra)
        for who, extra in (("alice", ()), ("ops", ("--operator",)))
    }
    hooks, ftp = Hooks(), FtpServer(tmp_path / "ftproot")
    (ftp.root / "moved").mkdir()
    srv = start_server(root, ingest=False)
    try:
        with (
            HeliostatClient(srv.target, token=tokens["alice"]) as alice,
            HeliostatClient(srv.target, token=tokens["ops"]) as ops,
        ):
            ops.create_collection("MODIS", "6")
            yield alice, ops, hooks, ftp
    finally:
        stop_server(srv)
        hooks.stop()
        ftp.stop()


def publish(ops: HeliostatClient) -> None:
    t = Timestamp()
    t.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))
    ops.publish_events(
        [
            pb.GranuleEvent(
                collection="MODIS.6", type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
                granule="incoming/g.hdf", time=pb.TimeInterval(start=t),
            )
        ]
    )  # fmt: skip


def shows_no_secret(msg: object) -> bool:
    text = str(msg)
    return SECRET not in text and NEW_SECRET not in text and QUOTED not in text


def test_secrets_are_redacted_kept_on_update_and_delivered(
    world: tuple[HeliostatClient, HeliostatClient, Hooks, FtpServer],
) -> None:
    alice, ops, hooks, ftp = world
    destination = ftp.url()  # ftp://writer:<quoted password>@127.0.0.1:port/incoming
    created = alice.create_subscription(
        pb.Subscription(
            collection="MODIS.6", event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
            actions=[
                pb.Action(kind=pb.ACTION_KIND_WEBHOOK,
                          params={"url": hooks.url + "/one", "secret": SECRET}),
                pb.Action(kind=pb.ACTION_KIND_DISTRIBUTION,
                          params={"media": "ftp", "destination": destination}),
                pb.Action(kind=pb.ACTION_KIND_WATCH,
                          params={"secret": SECRET, "feed": f"https://me:{QUOTED}@x.org/f"}),
            ],
        )
    )  # fmt: skip
    shown = f"ftp://writer:***@127.0.0.1:{ftp.port}/incoming"
    for s in (created, alice.subscription(created.id), *alice.subscriptions()):
        assert shows_no_secret(s)
        assert dict(s.actions[0].params) == {"url": hooks.url + "/one", "secret": "***"}
        assert dict(s.actions[1].params) == {"media": "ftp", "destination": shown}
        assert dict(s.actions[2].params) == {"secret": "***", "feed": "https://me:***@x.org/f"}

    # Delivered with the real secrets; every echo of the actions is redacted.
    with alice.watch(from_oldest=True, timeout=20) as stream:
        publish(ops)
        note = next(iter(stream))
    assert shows_no_secret(note) and dict(note.params)["secret"] == "***"
    wait_for(lambda: hooks.seen == [("/one", SECRET)])
    wait_for(lambda: (ftp.root / "incoming" / "g.hdf").is_file())
    listed = alice.actions()
    assert len(listed) == 3 and all(shows_no_secret(a) for a in listed)
    for a in listed[:2]:
        wait_for(lambda i=a.id: alice.action(i).state == pb.DELIVERY_STATE_DELIVERED)
        assert shows_no_secret(alice.action(a.id))

    # Read, change the url and the folder, write back with the *** as read: secrets kept.
    read = alice.subscription(created.id)
    read.actions[0].params["url"] = hooks.url + "/two"
    read.actions[1].params["destination"] = shown.replace("/incoming", "/moved")
    updated = alice.update_subscription(read, ["actions"])
    assert shows_no_secret(updated) and dict(updated.actions[0].params)["secret"] == "***"
    publish(ops)
    wait_for(lambda: hooks.seen[1:] == [("/two", SECRET)])
    wait_for(lambda: (ftp.root / "moved" / "g.hdf").is_file())

    # A new value replaces the secret.
    read = alice.subscription(created.id)
    read.actions[0].params["secret"] = NEW_SECRET
    alice.update_subscription(read, ["actions"])
    publish(ops)
    wait_for(lambda: hooks.seen[2:] == [("/two", NEW_SECRET)])

    # *** for a password of another server keeps nothing: it would leak the password there.
    read = alice.subscription(created.id)
    read.actions[1].params["destination"] = "ftp://writer:***@elsewhere.example/in"
    with pytest.raises(grpc.RpcError) as e:
        alice.update_subscription(read, ["actions"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())["heliostat-field"] == "actions[1].destination"
    # The placeholder is no secret of its own on create.
    with pytest.raises(grpc.RpcError) as e:
        alice.create_subscription(
            pb.Subscription(
                collection="MODIS.6", event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                actions=[pb.Action(kind=pb.ACTION_KIND_DISTRIBUTION,
                                   params={"media": "ftp", "destination": shown})],
            )
        )  # fmt: skip
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())["heliostat-field"] == "actions[0].destination"


def test_restore_rules() -> None:
    hook = validate_action(Action("webhook", (("secret", SECRET), ("url", "https://a.org/h"))), 0)
    other = validate_action(
        Action("webhook", (("secret", NEW_SECRET), ("url", "https://b.org/h"))), 1
    )
    ftp = validate_action(
        Action("distribution", (("destination", "ftp://u:pw@h.org:2121/d"), ("media", "ftp"))), 2
    )
    stored = (hook, other, ftp)
    shown = tuple(redact_action(a) for a in stored)
    assert dict(shown[2].params)["destination"] == "ftp://u:***@h.org:2121/d"
    assert restore_secrets(stored, shown) == stored
    # Reordered: each webhook finds its own secret by url; the ftp one by user, host and port.
    assert restore_secrets(stored, shown[::-1]) == stored[::-1]
    moved = Action("webhook", (("secret", "***"), ("url", "https://c.org/h")))
    assert dict(restore_secrets(stored, (moved,))[0].params)["secret"] == SECRET  # position 0
    with pytest.raises(InvalidArgument) as e:
        restore_secrets((), (moved,))
    assert e.value.field == "actions[0].secret"
    port = Action("distribution", (("destination", "ftp://u:***@h.org/d"), ("media", "ftp")))
    with pytest.raises(InvalidArgument) as e:
        restore_secrets(stored, (port,))  # port 21, not 2121: another server
    assert e.value.field == "actions[0].destination"
    # A webhook url with a password of its own: both come back.
    login = validate_action(
        Action("webhook", (("secret", SECRET), ("url", "https://u:pw@a.org/h"))), 0
    )
    assert restore_secrets((other, login), (redact_action(login),)) == (login,)
    assert redact_text("550 ftp://u:p%40ss@h.org/x and http://h.org:80/y") == (
        "550 ftp://u:***@h.org/x and http://h.org:80/y"
    )


class Quoting:
    """A receiver whose answer quotes the destination URL, password and all."""

    kind: ActionKind = "distribution"

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        return [
            Result("failed", f"550 {dict(d.action.action.params)['destination']}") for d in batch
        ]

    async def close(self) -> None:
        pass


def test_receivers_answers_are_kept_redacted(tmp_path: Path) -> None:
    svc = SubscriptionService(tmp_path / "subs")
    try:
        svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
        push = Action(
            "distribution", (("destination", f"ftp://u:{QUOTED}@h.org/d"), ("media", "ftp"))
        )
        subscribe(svc, ALICE, push)
        publish_one(svc)
        d = Drivers(svc, [Quoting()], DriverSettings(), name="t")
        d.tail()
        run_until(d, lambda: svc.dead_letters(OP, "", 0))
        (dead,) = svc.dead_letters(OP, "", 0)
        assert dead.detail == "550 ftp://u:***@h.org/d"
        _, _, attempts = svc.action_status(ALICE, dead.id)
        assert [a.detail for a in attempts] == ["550 ftp://u:***@h.org/d"]
    finally:
        svc.close()
