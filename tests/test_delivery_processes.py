"""Two processes run delivery drivers over one store: the leases split the work, and every
action is delivered exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from heliostat.subscriptions.auth import Principal
from heliostat.subscriptions.lifecycle import key_of
from heliostat.subscriptions.model import Action, Box, Collection, GranuleEvent, Subscription
from heliostat.subscriptions.service import SubscriptionService

OP = Principal("ops", operator=True)
EVENTS = 200
WORKER = """
import asyncio, sys, time
from pathlib import Path
from heliostat.subscriptions.channels.datapool import DataPoolChannel
from heliostat.subscriptions.drivers import Drivers, DriverSettings
from heliostat.subscriptions.service import SubscriptionService

store, archive, pool, name, go = sys.argv[1:]
svc = SubscriptionService(Path(store))
settings = DriverSettings(action_workers=2, batch=4, poll_s=0.01)
d = Drivers(svc, [DataPoolChannel(Path(archive), Path(pool))], settings, name=name)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.01)

async def main():
    await d.start()
    while True:
        left = svc.delivery_stats().depths
        if not left["untailed"] and not left["actions_left"]:
            break
        await asyncio.sleep(0.05)
    await d.stop()

asyncio.run(main())
svc.close()
"""


def test_two_processes_share_the_queue(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "g").mkdir(parents=True)
    for i in range(EVENTS):
        (archive / "g" / f"{i}.dat").write_bytes(b"x" * 4096)
    store = tmp_path / "subs"
    svc = SubscriptionService(store)
    svc.create_collection(OP, Collection("MODIS", "6", "geographic"))
    pool = Action("datapool", (("pool", "p"),))
    svc.create(Principal("alice"), Subscription(0, "", "MODIS.6", frozenset({"insert"}),
                                                actions=(pool,)))  # fmt: skip
    svc.publish(
        OP, [GranuleEvent("MODIS.6", "insert", f"g/{i}.dat", 0, 0, Box(0, 0, 1, 1))
             for i in range(EVENTS)]
    )  # fmt: skip
    svc.close()
    go = tmp_path / "go"
    args = [str(store), str(archive), str(tmp_path / "pool")]
    cmd = [sys.executable, "-c", WORKER, *args]
    procs = [
        subprocess.Popen([*cmd, f"proc{n}", str(go)], stdout=subprocess.PIPE, text=True)
        for n in range(2)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    for p in procs:
        assert p.wait(timeout=120) == 0

    svc = SubscriptionService(store)
    try:
        actions = svc.actions(OP, "", 1000)
        assert len(actions) == EVENTS
        by_worker: Counter[str] = Counter()
        for a in actions:
            st = svc.ledger.state(key_of(a))
            assert st is not None and st.state == "delivered" and st.attempts == 1
            (attempt,) = svc.ledger.attempts(key_of(a))
            by_worker[attempt.worker.split(":")[0]] += 1
        assert set(by_worker) == {"proc0", "proc1"}, by_worker
        assert len(list((tmp_path / "pool" / "p").glob("*.json"))) == EVENTS
    finally:
        svc.close()
