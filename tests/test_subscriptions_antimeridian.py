"""Geographic boxes across the antimeridian (x_min > x_max): accepted for subscriptions and
events, matched on both sides, kept across a restart; not in helioprojective arcsec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from heliostat.errors import InvalidArgument
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    GranuleEvent,
    Qualifiers,
    Subscription,
    validate_subscription,
)
from heliostat.subscriptions.service import SubscriptionService

ALICE = Principal("alice")
OP = Principal("ops", operator=True)
EMAIL = (Action("email", (("address", "a@example.org"),)),)


def sub(box: Box, collection: str = "MODIS.6") -> Subscription:
    q = Qualifiers(spatial=box)
    return Subscription(0, "", collection, frozenset({"insert"}), qualifiers=q, actions=EMAIL)


def owned(box: Box) -> Subscription:
    return dataclasses.replace(sub(box), owner="alice")


def event(box: Box) -> GranuleEvent:
    return GranuleEvent("MODIS.6", "insert", "g", 0, 0, box)


def test_validation() -> None:
    validate_subscription(owned(Box(170, -10, -170, 10)), "geographic")
    with pytest.raises(InvalidArgument) as e:
        validate_subscription(owned(Box(170, -10, -190, 10)), "geographic")
    assert e.value.field == "qualifiers.spatial"
    with pytest.raises(InvalidArgument) as e:  # arcsec have no antimeridian
        validate_subscription(owned(Box(170, -10, -170, 10)), "helioprojective")
    assert e.value.field == "qualifiers.spatial"


def test_matches_across_and_survives_restart(tmp_path: Path) -> None:
    svc = SubscriptionService(tmp_path / "subs")
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    pacific = svc.create(ALICE, sub(Box(170, -10, -170, 10)))
    east = svc.create(ALICE, sub(Box(175, 0, 180, 5)))
    west = svc.create(ALICE, sub(Box(-180, 0, -175, 5)))
    greenwich = svc.create(ALICE, sub(Box(-5, -5, 5, 5)))
    cases = [
        (Box(178, 1, 179, 2), {pacific.id, east.id}),
        (Box(-179, 1, -178, 2), {pacific.id, west.id}),
        (Box(179, 1, -179, 2), {pacific.id, east.id, west.id}),  # the event crosses too
        (Box(160, 1, 165, 2), set()),
        (Box(-165, 1, -160, 2), set()),
        (Box(100, 1, -100, 2), {pacific.id, east.id, west.id}),  # all but the prime meridian
        (Box(-10, -1, 10, 1), {greenwich.id}),
        (Box(179, 20, -179, 30), set()),  # across, but north of them all
    ]

    def matched(s: SubscriptionService) -> list[set[int]]:
        return [set(ids) for _, ids in s.engine.match([event(b) for b, _ in cases], 0)]

    assert matched(svc) == [want for _, want in cases]
    stored = svc.publish(OP, [event(Box(179, 1, -179, 2))])
    assert stored[0].event.box == Box(179, 1, -179, 2)
    actions = svc.actions(ALICE, "", 100)
    assert {a.subscription_id for a in actions} == {pacific.id, east.id, west.id}
    assert actions[0].event.box == Box(179, 1, -179, 2)
    svc.close()
    reopened = SubscriptionService(tmp_path / "subs")
    assert matched(reopened) == [want for _, want in cases]
    assert reopened.get(ALICE, pacific.id).qualifiers.spatial == Box(170, -10, -170, 10)
    reopened.close()
