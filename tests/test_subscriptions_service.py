"""Subscription model validation, the LMDB store, tokens and the protocol-free service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heliostat.catalog.codec import CatalogEvent, Footprint
from heliostat.errors import InvalidArgument, NotFound
from heliostat.subscriptions import auth
from heliostat.subscriptions.auth import PermissionDenied, Principal
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    GranuleEvent,
    NumericRange,
    Qualifiers,
    StringEquals,
    Subscription,
    Temporal,
    validate_subscription,
)
from heliostat.subscriptions.service import Patch, SubscriptionService

ALICE = Principal("alice")
BOB = Principal("bob")
OP = Principal("ops", operator=True)
EMAIL = Action("email", (("address", "a@example.org"),))


def sub(collection: str = "MODIS.6", **kw: object) -> Subscription:
    fields: dict[str, object] = {
        "owner": "", "event_types": frozenset({"insert"}), "actions": (EMAIL,),
    }  # fmt: skip
    fields.update(kw)
    return Subscription(0, collection=collection, **fields)  # type: ignore[arg-type]


@pytest.fixture
def svc(tmp_path: Path) -> SubscriptionService:
    s = SubscriptionService(tmp_path / "subs")
    s.create_collection(OP, Collection("MODIS", "6", "geographic"))
    return s


def granule(box: Box | None = None, **kw: object) -> GranuleEvent:
    fields: dict[str, object] = {"start_us": 100, "end_us": 200, "box": box}
    fields.update(kw)
    return GranuleEvent("MODIS.6", "insert", "g1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_types": frozenset()}, "event_types"),
        ({"owner": "bad owner"}, "owner"),
        ({"expires_us": -1}, "expire_time"),
        ({"qualifiers": Qualifiers(Temporal(5, 1))}, "qualifiers.temporal"),
        ({"qualifiers": Qualifiers(numeric=(NumericRange("w", 2, 1),))}, "qualifiers.numeric"),
        ({"qualifiers": Qualifiers(spatial=Box(0, 0, 200, 1))}, "qualifiers.spatial"),
        ({"qualifiers": Qualifiers(spatial=Box(0, 5, 1, 1))}, "qualifiers.spatial"),
        ({"actions": (Action("email", ()),)}, "actions[0].address"),
        ({"actions": (Action("email", (("address", "nope"),)),)}, "actions[0].address"),
        ({"actions": (Action("webhook", (("url", "ftp://x"),)),)}, "actions[0].url"),
        ({"actions": (Action("distribution", (("media", "ftp"),)),)}, "actions[0].destination"),
    ],
)
def test_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    s = sub(owner="alice")
    fields = {k: getattr(s, k) for k in s.__dataclass_fields__}
    fields.update(changes)
    with pytest.raises(InvalidArgument) as e:
        validate_subscription(Subscription(**fields), "geographic")  # type: ignore[arg-type]
    assert e.value.field == field


def test_helioprojective_boxes_take_arcsec() -> None:
    s = sub(owner="a", qualifiers=Qualifiers(spatial=Box(-1200, -1200, 1200, 1200)))
    validate_subscription(s, "helioprojective")
    with pytest.raises(InvalidArgument):
        validate_subscription(s, "geographic")


def test_image_collections_mirror_sources(svc: SubscriptionService) -> None:
    keys = {c.key: c for c in svc.collections()}
    assert keys["AIA_171.1"].source_id == 10
    assert keys["AIA_171.1"].frame == "helioprojective"
    assert keys["MODIS.6"].frame == "geographic"
    with pytest.raises(InvalidArgument) as e:
        svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    assert e.value.field == "short_name"
    # Any caller creates collections and owns them; only the operator names another owner.
    assert svc.create_collection(ALICE, Collection("X", "1", "geographic")).owner == "alice"
    with pytest.raises(InvalidArgument) as e:
        svc.create_collection(ALICE, Collection("Y", "1", "geographic", owner="bob"))
    assert e.value.field == "owner"
    made = svc.create_collection(OP, Collection("Y", "1", "geographic", owner="bob"))
    assert made.owner == "bob"
    assert {c.key: c.owner for c in svc.collections()}["Y.1"] == "bob"  # stored


def test_collection_owner_publishes(svc: SubscriptionService) -> None:
    """A data provider creates its collection and publishes to it; others may not."""
    svc.create_collection(ALICE, Collection("SWATH", "2", "geographic"))
    watcher = svc.create(BOB, sub(collection="SWATH.2"))
    ev = GranuleEvent("SWATH.2", "insert", "g1", 100, 200)
    (stored,) = svc.publish(ALICE, [ev])
    assert [(a.event_id, a.subscription_id) for a in svc.actions(BOB, "", 0)] == [
        (stored.id, watcher.id)
    ]
    with pytest.raises(PermissionDenied) as e:
        svc.publish(BOB, [ev])
    assert e.value.field == "events[0].collection"
    assert svc.store.event_ids()[1] == stored.id  # nothing more recorded


def test_crud_and_ownership(svc: SubscriptionService) -> None:
    a = svc.create(ALICE, sub(theme="fires"))
    b = svc.create(BOB, sub(theme="fires"))
    assert a.owner == "alice" and a.id != b.id
    assert svc.get(ALICE, a.id) == a
    with pytest.raises(NotFound):
        svc.get(BOB, a.id)  # exists, but not bob's: not revealed
    with pytest.raises(NotFound):
        svc.delete(BOB, a.id)
    with pytest.raises(NotFound):
        svc.create(ALICE, sub(collection="NOPE.1"))
    with pytest.raises(InvalidArgument) as e:
        svc.create(ALICE, sub(owner="bob"))
    assert e.value.field == "owner"
    assert [s.id for s in svc.list_subscriptions(ALICE)] == [a.id]
    assert svc.list_subscriptions(ALICE, owner="bob") == []
    assert [s.id for s in svc.list_subscriptions(OP)] == [a.id, b.id]
    assert [s.id for s in svc.list_subscriptions(OP, theme="fires", limit=1)] == [a.id]
    assert [s.id for s in svc.list_subscriptions(OP, theme="fires", after_id=a.id)] == [b.id]

    with pytest.raises(InvalidArgument) as e:
        svc.update(ALICE, a.id, Patch(frozenset({"collection"})))
    assert e.value.field == "collection"
    with pytest.raises(InvalidArgument) as e:
        svc.update(ALICE, a.id, Patch(frozenset({"owner"}), owner="bob"))
    assert e.value.field == "owner"
    moved = svc.update(OP, a.id, Patch(frozenset({"owner", "theme"}), owner="bob", theme="x"))
    assert moved.owner == "bob" and moved.collection == a.collection
    assert svc.list_subscriptions(ALICE) == []
    assert [s.id for s in svc.list_subscriptions(OP, theme="fires")] == [b.id]
    assert svc.theme(BOB, "fires", "suspend") == 1
    assert not svc.get(BOB, b.id).active
    assert svc.theme(ALICE, "fires", "cancel") == 0
    assert svc.theme(BOB, "fires", "cancel") == 1
    svc.delete(BOB, moved.id)
    assert svc.list_subscriptions(OP) == []


def test_publish_matches_and_records_actions(svc: SubscriptionService) -> None:
    box = svc.create(ALICE, sub(qualifiers=Qualifiers(spatial=Box(-10, -10, 10, 10))))
    hot = svc.create(
        BOB,
        sub(
            qualifiers=Qualifiers(
                Temporal(150, 300), (NumericRange("cloud", 0, 20),), (StringEquals("day", "y"),)
            ),
            actions=(
                EMAIL,
                Action("webhook", (("secret", "s" * 16), ("url", "https://h.example/x"))),
            ),
        ),
    )
    svc.create(ALICE, sub(event_types=frozenset({"delete"})))
    paused = svc.create(ALICE, sub(active=False))
    expired = svc.create(ALICE, sub(expires_us=1))
    with pytest.raises(PermissionDenied) as denied:
        svc.publish(ALICE, [granule()])  # MODIS.6 is the operator's
    assert denied.value.field == "events[0].collection"
    with pytest.raises(InvalidArgument) as e:
        svc.publish(OP, [granule(), granule(start_us=5, end_us=1)])
    assert e.value.field == "events[1].end"
    stored = svc.publish(
        OP,
        [
            granule(Box(5, 5, 20, 20), numeric=(("cloud", 10.0),), strings=(("day", "y"),)),
            granule(Box(50, 50, 60, 60), numeric=(("cloud", 30.0),)),
        ],
    )
    assert [s.id for s in stored] == [1, 2]
    actions = svc.actions(OP, "", 0)
    got = {(a.event_id, a.subscription_id, a.index) for a in actions}
    assert got == {(1, box.id, 0), (1, hot.id, 0), (1, hot.id, 1)}
    assert {a.subscription_id for a in actions} & {paused.id, expired.id} == set()
    assert [a.owner for a in svc.actions(ALICE, "", 0)] == ["alice"]
    assert len(svc.actions(OP, actions[0].id, 0)) == 2  # paging after an action id
    with pytest.raises(InvalidArgument) as e:
        svc.actions(OP, "junk", 0)
    assert e.value.field == "after"


def test_restart_rebuilds_index(tmp_path: Path) -> None:
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    keep = svc.create(ALICE, sub(qualifiers=Qualifiers(spatial=Box(0, 0, 1, 1))))
    gone = svc.create(ALICE, sub())
    svc.delete(ALICE, gone.id)
    svc.close()
    svc = SubscriptionService(tmp_path / "subs")
    assert len(svc.engine) == 1
    svc.publish(OP, [granule(Box(1, 1, 2, 2))])
    assert [a.subscription_id for a in svc.actions(OP, "", 0)] == [keep.id]
    svc.close()


WRITER = """
import sys
from pathlib import Path
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Subscription
from heliostat.subscriptions.service import SubscriptionService

svc = SubscriptionService(Path(sys.argv[1]))
s = svc.create(Principal("carol"), Subscription(0, "", "MODIS.6", frozenset({"insert"})))
svc.delete(Principal("ops", operator=True), int(sys.argv[2]))
print(s.id)
"""


def test_index_follows_other_processes(svc: SubscriptionService, tmp_path: Path) -> None:
    gone = svc.create(ALICE, sub())
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path / "subs"), str(gone.id)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    svc.publish(OP, [granule()])
    assert [a.subscription_id for a in svc.actions(OP, "", 0)] == []  # carol's has no actions
    assert len(svc.engine) == 1
    assert svc.engine.match([granule()], 0)[0][1] == [int(out.stdout)]


def test_catalog_events_are_recorded_once(svc: SubscriptionService) -> None:
    s = svc.create(ALICE, sub("AIA_171.1", qualifiers=Qualifiers(spatial=Box(-100, -100, 0, 0))))
    fp = Footprint(-1200.0, -1200.0, 1200.0, 1200.0)
    events = [
        CatalogEvent(seq, "insert", seq, 10, 1_000, fp, f"a{seq}.jp2", 4096, 4096, 0.6)
        for seq in (1, 2)
    ]
    events.append(CatalogEvent(3, "insert", 3, 11, 1_000, fp, "b.jp2", 4096, 4096, 0.6))
    assert len(svc.consume(events)) == 2  # the AIA 193 event matched nothing: not copied
    assert svc.consume(events) == []  # a repeat after a crash before the catalog ack
    assert svc.store.catalog_seq() == 3
    actions = svc.actions(OP, "", 0)
    assert [(a.subscription_id, a.event.granule) for a in actions] == [
        (s.id, "a1.jp2"),
        (s.id, "a2.jp2"),
    ]


def test_tokens(tmp_path: Path, svc: SubscriptionService) -> None:
    token = auth.create_token(svc.store, "alice")
    op = auth.create_token(svc.store, "root", operator=True)
    assert svc.authenticate(token) == ALICE
    assert svc.authenticate(op) == Principal("root", True)
    assert svc.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert svc.authenticate("garbage") is None
    (record,) = [t for t in svc.store.tokens() if t.owner == "alice"]
    assert token.split("_", 2)[2].encode() not in record.digest + record.salt
    raw = b"".join(p.read_bytes() for p in (tmp_path / "subs").iterdir())
    assert token.split("_", 2)[2].encode() not in raw  # never stored in plaintext
    tid = auth.token_id(token)
    assert tid is not None and svc.store.remove_token(tid)
    assert svc.authenticate(token) is None
