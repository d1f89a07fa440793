"""Kill -9 while publishing: every acknowledged event has all of its actions, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.service import SubscriptionService

OP = Principal("ops", operator=True)
PUBLISHER = """
import sys
from pathlib import Path
from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.model import Action, Box, Collection, GranuleEvent, Qualifiers
from heliostat.subscriptions.model import Subscription
from heliostat.subscriptions.service import SubscriptionService

op = Principal("ops", operator=True)
svc = SubscriptionService(Path(sys.argv[1]))
svc.create_collection(op, Collection("MODIS", "6", "geographic"))
actions = (Action("email", (("address", "a@b.org"),)), Action("watch", ()))
for i in range(3):
    q = Qualifiers(spatial=Box(-10 - i, -10, 10, 10))
    svc.create(Principal(f"o{i}"), Subscription(0, "", "MODIS.6", frozenset({"insert"}),
                                               qualifiers=q, actions=actions))
print("ready", flush=True)
n = 0
while True:
    batch = [GranuleEvent("MODIS.6", "insert", f"g{n + k}", 0, 0, Box(0, 0, 1, 1))
             for k in range(20)]
    n += len(batch)
    print(" ".join(str(s.id) for s in svc.publish(op, batch)), flush=True)
"""


def test_kill_9_while_publishing(tmp_path: Path) -> None:
    path = tmp_path / "subs"
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    acked: list[int] = []
    while len(acked) < 400:
        acked += [int(x) for x in proc.stdout.readline().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Whatever was printed after the last line read was acknowledged too; count those as well.
    acked += [int(x) for line in proc.stdout.read().splitlines() for x in line.split()]

    svc = SubscriptionService(path)
    try:
        counts = svc.store.counts()
        actions = []
        after = ""
        while page := svc.actions(OP, after, 1000):
            actions += page
            after = page[-1].id
        per_event = Counter(a.event_id for a in actions)
        assert len({a.id for a in actions}) == len(actions) == counts["actions"]
        assert set(per_event) == set(range(1, counts["events"] + 1))
        assert set(per_event.values()) == {6}  # 3 subscriptions x 2 actions, exactly
        assert set(acked) <= set(per_event)
    finally:
        svc.close()
