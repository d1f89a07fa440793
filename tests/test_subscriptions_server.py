"""End to end through a real server: tokens from the CLI, auth, CRUD, ingest and publish."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from heliostat.client import HeliostatClient
from heliostat.v1 import subscriptions_pb2 as pb
from tests.conftest import RunningServer, place_samples, start_server, stop_server


def cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "heliostat.cli", *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    root = tmp_path_factory.mktemp("subs") / "archive"
    place_samples(root)
    tokens = {
        "alice": cli("token", "create", "--archive", str(root), "--owner", "alice"),
        "bob": cli("token", "create", "--archive", str(root), "--owner", "bob"),
    }
    srv = start_server(root, ingest=False)
    # Issued while the server runs: the environment is shared between processes.
    tokens["ops"] = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    yield srv, tokens
    stop_server(srv)


def client(served: tuple[RunningServer, dict[str, str]], who: str | None) -> HeliostatClient:
    srv, tokens = served
    return HeliostatClient(srv.target, token=tokens[who] if who else None)


def wait_actions(c: HeliostatClient, n: int) -> list[pb.MatchedAction]:
    deadline = time.monotonic() + 10
    while True:
        actions = c.actions(limit=1000)
        if len(actions) >= n or time.monotonic() > deadline:
            return actions
        time.sleep(0.05)


def test_auth(served: tuple[RunningServer, dict[str, str]]) -> None:
    with client(served, None) as anon:
        with pytest.raises(grpc.RpcError) as e:
            anon.collections()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert anon.data_sources()  # the archive stays public
    srv, tokens = served
    with HeliostatClient(srv.target, token=tokens["alice"] + "x") as bad:
        with pytest.raises(grpc.RpcError) as e:
            bad.collections()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    revoked = cli("token", "create", "--archive", str(srv.archive), "--owner", "eve")
    with HeliostatClient(srv.target, token=revoked) as eve:
        assert eve.collections()
        cli("token", "revoke", "--archive", str(srv.archive), revoked)
        with pytest.raises(grpc.RpcError) as e:
            eve.collections()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ops\towner" not in cli("token", "list", "--archive", str(srv.archive))


def test_image_ingest_matches(served: tuple[RunningServer, dict[str, str]]) -> None:
    srv, _ = served
    with client(served, "alice") as alice, client(served, "bob") as bob:
        keys = {c.key for c in alice.collections()}
        assert "AIA_171.1" in keys
        disc = pb.Subscription(
            collection="AIA_171.1",
            event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
            active=True,
            theme="flares",
            qualifiers=pb.Qualifiers(spatial=pb.Box(x_min=-100, y_min=-100, x_max=100, y_max=100)),
            actions=[pb.Action(kind=pb.ACTION_KIND_EMAIL, params={"address": "a@example.org"})],
        )
        s = alice.create_subscription(disc)
        assert s.owner == "alice" and s.id > 0
        with pytest.raises(grpc.RpcError) as e:
            bob.subscription(s.id)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert list(bob.subscriptions()) == []

        s.collection = "AIA_193.1"
        with pytest.raises(grpc.RpcError) as e:
            alice.update_subscription(s, ["collection"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("heliostat-field", "collection") in (e.value.trailing_metadata() or ())
        far = datetime(2100, 1, 1, tzinfo=UTC)
        s.expire_time.FromDatetime(far)
        assert alice.update_subscription(s, ["expire_time"]).expire_time.ToDatetime(UTC) == far

        alice.ingest([str(srv.archive)])
        actions = wait_actions(alice, 1)
        assert actions and all(a.subscription_id == s.id for a in actions)
        assert {a.event.collection for a in actions} == {"AIA_171.1"}
        assert actions[0].action.params["address"] == "a@example.org"
        assert bob.actions() == []


def test_publish_and_operator(served: tuple[RunningServer, dict[str, str]]) -> None:
    with client(served, "ops") as ops, client(served, "alice") as alice:
        assert ops.create_collection("MODIS", "6").key == "MODIS.6"
        mine = alice.create_collection("ALICE_L2")  # any caller, who then owns it
        assert (mine.key, mine.owner) == ("ALICE_L2.1", "alice")
        with pytest.raises(grpc.RpcError) as e:
            alice.create_collection("OTHER", owner="bob")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fires = alice.create_subscription(
            pb.Subscription(
                collection="MODIS.6",
                event_types=[pb.SUBSCRIPTION_EVENT_TYPE_INSERT],
                theme="fires",
                qualifiers=pb.Qualifiers(
                    spatial=pb.Box(x_min=-125, y_min=32, x_max=-114, y_max=42),
                    numeric=[pb.NumericQualifier(attribute="cloud", min=0, max=20)],
                ),
                actions=[
                    pb.Action(
                        kind=pb.ACTION_KIND_WEBHOOK,
                        params={"url": "https://x.org/h", "secret": "s" * 16},
                    )
                ],
            )
        )
        assert fires.active  # active unless created otherwise
        assert dict(fires.actions[0].params) == {"url": "https://x.org/h", "secret": "***"}
        before = alice.actions(limit=1000)
        ev = pb.GranuleEvent(
            collection="MODIS.6",
            type=pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
            granule="MOD021KM.A2026.hdf",
            footprint=pb.Box(x_min=-120, y_min=35, x_max=-110, y_max=45),
            numeric={"cloud": 5.0},
        )
        ev.time.start.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
        cloudy = pb.GranuleEvent()
        cloudy.CopyFrom(ev)
        cloudy.numeric["cloud"] = 80.0
        with pytest.raises(grpc.RpcError) as e:
            alice.publish_events([ev])  # the operator's collection
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "events[0].collection" in (e.value.details() or "")
        ids = ops.publish_events([ev, cloudy])
        assert len(ids) == 2
        own = pb.GranuleEvent()
        own.CopyFrom(ev)
        own.collection = "ALICE_L2.1"
        assert len(alice.publish_events([own])) == 1
        got = alice.actions(after=before[-1].id if before else "", limit=1000)
        assert [(a.event_id, a.subscription_id) for a in got] == [(ids[0], fires.id)]
        assert got[0].event.granule == "MOD021KM.A2026.hdf"
        assert dict(got[0].action.params) == {"url": "https://x.org/h", "secret": "***"}

        bad = pb.GranuleEvent()
        bad.CopyFrom(ev)
        bad.footprint.x_min = -500
        with pytest.raises(grpc.RpcError) as e:
            ops.publish_events([ev, bad])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("heliostat-field", "events[1].footprint") in (e.value.trailing_metadata() or ())

        owners = {s.owner for s in ops.subscriptions()}
        assert "alice" in owners
        assert ops.theme("suspend", "fires") == 1
        assert not alice.subscription(fires.id).active
        assert alice.theme("cancel", "fires") == 1
        with pytest.raises(grpc.RpcError) as e:
            alice.subscription(fires.id)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_index_survives_restart(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    token = cli("token", "create", "--archive", str(root), "--owner", "ops", "--operator")
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target, token=token) as ops:
            ops.create_collection("L2", "1")
            ops.create_subscription(
                pb.Subscription(
                    collection="L2.1",
                    event_types=[pb.SUBSCRIPTION_EVENT_TYPE_DELETE],
                    active=True,
                    actions=[pb.Action(kind=pb.ACTION_KIND_WATCH)],
                )
            )
    finally:
        stop_server(srv)
    srv = start_server(root, ingest=False)
    try:
        with HeliostatClient(srv.target, token=token) as ops:
            ev = pb.GranuleEvent(
                collection="L2.1", type=pb.SUBSCRIPTION_EVENT_TYPE_DELETE, granule="x"
            )
            ev.time.start.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
            ops.publish_events([ev])
            assert [a.action.kind for a in ops.actions()] == [pb.ACTION_KIND_WATCH]
            assert len(list(ops.subscriptions())) == 1
    finally:
        stop_server(srv)
