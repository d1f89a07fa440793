"""The subscription service: CRUD with ownership checks, publishing and matching, actions.

Protocol-free, like heliostat.app: every check that names a field happens here. An owner sees
and changes only their own subscriptions; somebody else's is reported as not found, so that
existence is not revealed. The operator sees and changes all.

Changes are written to LMDB first; the in-memory index then catches up from the store's change
log (``_catch_up``), before every match too, so it follows the writes of every process serving
the same store (``serve --processes N``), in the store's order. An index further behind than
the pruned change log reaches is rebuilt from the store (``_rebuild``).

Creates, updates and deletes go through a group commit (heliostat.subscriptions.groupcommit):
those arriving together are checked one by one against the state the earlier ones in the batch
leave, written in one synced transaction, and answered after it. ``submit_*`` return a Future
of the subscription written (a delete's: as it was), answered in submission order, for the gRPC
layer, which awaits it without holding a thread; ``create`` etc. wait for it. ``submit_writes``
queues many writes with one Future for all their results (the bulk WriteSubscriptions stream).
Published event batches go through a group commit of their own: batches published together are
matched and recorded in one transaction (one synced commit, one index lookup per collection for
all of them), each caller answered once it is durable.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heliostat.archive import sources
from heliostat.catalog.codec import CatalogEvent, EventKind
from heliostat.errors import HeliostatError, InvalidArgument, NotFound
from heliostat.subscriptions.auth import PermissionDenied, Principal, authenticate
from heliostat.subscriptions.groupcommit import GroupCommit
from heliostat.subscriptions.lifecycle import ActionState, Attempt, Ledger
from heliostat.subscriptions.matching import MatchEngine
from heliostat.subscriptions.model import (
    Action,
    Box,
    Collection,
    EventType,
    GranuleEvent,
    MatchedAction,
    Qualifiers,
    StoredEvent,
    Subscription,
    restore_secrets,
    source_collection,
    validate_collection,
    validate_event,
    validate_subscription,
)
from heliostat.subscriptions.notifications import Notifications, Watch, WatchFilter
from heliostat.subscriptions.stats import PipelineCounts, PipelineStats, StatsLog
from heliostat.subscriptions.store import ChangesPruned, SubscriptionStore, action_key

MAX_PAGE = 1000
MAX_PUBLISH = 1000
CATALOG_CONSUMER = "subscriptions"
_CATALOG_TYPES: dict[EventKind, EventType] = {
    "insert": "insert",
    "update": "update_metadata",
    "delete": "delete",
}
ThemeOp = Literal["suspend", "resume", "cancel"]
UPDATABLE = frozenset(
    {"owner", "active", "expire_time", "qualifiers", "actions", "event_types", "theme"}
)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Patch:
    """Fields to change; ``fields`` names those that are set (the update mask)."""

    fields: frozenset[str]
    owner: str = ""
    active: bool = True
    expires_us: int = 0
    qualifiers: Qualifiers = dataclasses.field(default_factory=Qualifiers)
    actions: tuple[Action, ...] = ()
    event_types: frozenset[EventType] = frozenset()
    theme: str = ""


@dataclass(frozen=True, slots=True)
class CreateOp:
    sub: Subscription


@dataclass(frozen=True, slots=True)
class UpdateOp:
    sub_id: int
    patch: Patch


@dataclass(frozen=True, slots=True)
class DeleteOp:
    sub_id: int


WriteOp = CreateOp | UpdateOp | DeleteOp


@dataclass(frozen=True, slots=True)
class _Create:
    sub: Subscription  # validated


@dataclass(frozen=True, slots=True)
class _Update:
    who: Principal
    sub_id: int
    patch: Patch


@dataclass(frozen=True, slots=True)
class _Delete:
    who: Principal
    sub_id: int


@dataclass(frozen=True, slots=True)
class _Failed:
    error: HeliostatError  # found before queueing; answered in its place


_Write = _Create | _Update | _Delete | _Failed


class SubscriptionService:
    def __init__(self, path: Path, *, map_size: int = 1 << 30) -> None:
        self.store = SubscriptionStore(path, map_size=map_size)
        try:
            self.store.add_collections([source_collection(s) for s in sources.SOURCES])
            self._load_collections()
            rows, attrs, colls, self._generation = self.store.index_data()
            self.engine = MatchEngine.from_rows(rows, attrs, colls)
            self.ledger = Ledger(self.store)
            self.notifications = Notifications(self.store)
            # Summed over every process serving the store (see stats); flushed by the drivers.
            self.stats = PipelineStats(StatsLog(self.store))
        except BaseException:
            self.store.close()
            raise
        self._lock = threading.Lock()  # orders store writes with index updates
        self._on_record: list[Callable[[], None]] = []
        self._writes: GroupCommit[_Write, Subscription] = GroupCommit(
            self._apply, name="subscription-writes"
        )
        self._publishes: GroupCommit[GranuleEvent, StoredEvent] = GroupCommit(
            self._record_published, name="event-publishes"
        )

    def close(self) -> None:
        self._writes.close()
        self._publishes.close()
        self.notifications.close()
        try:
            self.stats.flush()  # what this process counted outlives it
        finally:
            self.store.close()

    def _load_collections(self) -> None:
        self._collections = {c.key: c for c in self.store.collections()}
        self._by_source = {c.source_id: c for c in self._collections.values() if c.source_id}

    def _catch_up(self) -> None:
        """Apply the subscription writes logged since the index's generation; caller holds
        the lock."""
        try:
            self._generation, changed = self.store.changes_after(self._generation)
        except ChangesPruned:
            self._rebuild()
            return
        for sid, s in changed.items():
            if s is None:
                self.engine.remove(sid)
            else:
                self.engine.upsert(s)

    def _rebuild(self) -> None:
        """Build the index afresh from the store (its changes since were pruned); caller holds
        the lock."""
        self._load_collections()
        rows, attrs, colls, self._generation = self.store.index_data()
        self.engine = MatchEngine.from_rows(rows, attrs, colls)
        self.stats.count("index_rebuilds")

    def prune_changes(self, reader: str, ttl_us: int, limit: int) -> tuple[int, int]:
        """One bounded pass over the change log: the index catches up, this process posts its
        position as ``reader``, and up to limit entries every live reader has applied are
        removed (SubscriptionStore.prune_changes); returns (removed, pruned up to)."""
        with self._lock:
            self._catch_up()
            position = self._generation
        return self.store.prune_changes(reader, position, now_us(), ttl_us, limit)

    def authenticate(self, token: str) -> Principal | None:
        return authenticate(self.store, token)

    # -- collections ----------------------------------------------------------------------------

    def collections(self) -> list[Collection]:
        return sorted(self._collections.values(), key=lambda c: c.key)

    def create_collection(self, who: Principal, c: Collection) -> Collection:
        """A collection of client granules, whose events its owner (the creator, unless the
        operator names another) and the operator publish."""
        if c.owner and c.owner != who.owner and not who.operator:
            raise InvalidArgument("only the operator creates collections for others", field="owner")
        c = dataclasses.replace(c, owner=c.owner or who.owner)
        if c.source_id is not None:
            raise InvalidArgument("image collections mirror the data sources", field="source_id")
        validate_collection(c)
        if c.frame != "geographic":
            raise InvalidArgument("client collections are geographic", field="frame")
        with self._lock:
            if not self.store.add_collections([c]):
                raise InvalidArgument(f"collection {c.key} exists", field="short_name")
            self._collections[c.key] = c
        return c

    def _collection(self, key: str, field: str = "collection") -> Collection:
        c = self._collections.get(key)
        if c is None:
            self._load_collections()  # another process may have created it
            c = self._collections.get(key)
        if c is None:
            raise NotFound(f"no collection {key!r}", field=field)
        return c

    # -- subscriptions --------------------------------------------------------------------------

    def create(self, who: Principal, s: Subscription) -> Subscription:
        return self.submit_create(who, s).result()

    def submit_create(self, who: Principal, s: Subscription) -> Future[Subscription]:
        return self._writes.submit(self._create(who, s))

    def _create(self, who: Principal, s: Subscription) -> _Create:
        owner = s.owner or who.owner
        if owner != who.owner and not who.operator:
            raise InvalidArgument("only the operator subscribes for others", field="owner")
        frame = self._collection(s.collection).frame
        t = now_us()
        s = dataclasses.replace(s, owner=owner, created_us=t, updated_us=t)
        return _Create(validate_subscription(s, frame))

    def get(self, who: Principal, sub_id: int) -> Subscription:
        s = self.store.get(sub_id) if sub_id > 0 else None
        if s is None or (s.owner != who.owner and not who.operator):
            raise NotFound(f"no subscription {sub_id}", field="id")
        return s

    def list_subscriptions(
        self, who: Principal, *, owner: str = "", theme: str = "", after_id: int = 0, limit: int = 0
    ) -> list[Subscription]:
        """A page of subscriptions by id; the owner's own unless the operator asks."""
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"must be 0-{MAX_PAGE}", field="page_size")
        if owner and owner != who.owner and not who.operator:
            return []  # others' subscriptions are invisible, not forbidden
        scope: str | None = owner or (None if who.operator else who.owner)
        return self.store.page(
            owner=scope, theme=theme or None, after_id=after_id, limit=limit or 100
        )

    def update(self, who: Principal, sub_id: int, patch: Patch) -> Subscription:
        return self.submit_update(who, sub_id, patch).result()

    def submit_update(self, who: Principal, sub_id: int, patch: Patch) -> Future[Subscription]:
        return self._writes.submit(self._update(who, sub_id, patch))

    def _update(self, who: Principal, sub_id: int, patch: Patch) -> _Update:
        if not patch.fields:
            raise InvalidArgument("name at least one field to change", field="update_mask")
        if "collection" in patch.fields:
            raise InvalidArgument("is fixed when the subscription is created", field="collection")
        unknown = patch.fields - UPDATABLE
        if unknown:
            raise InvalidArgument(
                f"cannot change {', '.join(sorted(unknown))}", field="update_mask"
            )
        if "owner" in patch.fields and not who.operator:
            raise InvalidArgument("only the operator changes owners", field="owner")
        return _Update(who, sub_id, patch)

    def delete(self, who: Principal, sub_id: int) -> None:
        self.submit_delete(who, sub_id).result()

    def submit_delete(self, who: Principal, sub_id: int) -> Future[Subscription]:
        return self._writes.submit(_Delete(who, sub_id))

    def submit_writes(
        self, who: Principal, ops: Sequence[WriteOp]
    ) -> Future[list[Subscription | BaseException]]:
        """Check and queue several writes together (for one commit, in order): one Future for
        their results, each as submit_* would answer it or that write's error. A bad write fails
        alone."""
        queued: list[_Write] = []
        for op in ops:
            try:
                if isinstance(op, CreateOp):
                    queued.append(self._create(who, op.sub))
                elif isinstance(op, UpdateOp):
                    queued.append(self._update(who, op.sub_id, op.patch))
                else:
                    queued.append(_Delete(who, op.sub_id))
            except HeliostatError as e:
                queued.append(_Failed(e))
        return self._writes.submit_many(queued)

    def _apply(self, batch: Sequence[_Write]) -> list[Subscription | BaseException]:
        """Check and write a batch of queued writes in one transaction (the group commit)."""
        out: dict[int, Subscription | BaseException] = {}  # by position in batch
        creates: list[int] = []  # positions in batch
        before: dict[int, Subscription] = {}  # as stored, for those changed by the batch
        after: dict[int, Subscription | None] = {}  # as the batch leaves them (None: deleted)
        with self._lock:
            for i, w in enumerate(batch):
                if isinstance(w, _Create):
                    creates.append(i)
                    continue
                if isinstance(w, _Failed):
                    out[i] = w.error
                    continue
                try:
                    old = self._current(w.who, w.sub_id, before, after)
                    if isinstance(w, _Delete):
                        after[old.id] = None
                        out[i] = old  # as it was when deleted
                        continue
                    new = self._patched(old, w.patch)
                except Exception as e:  # this request's error, not its neighbours'
                    out[i] = e
                    continue
                after[old.id] = out[i] = new
            pairs = [(before[sid], s) for sid, s in after.items() if s is not None]
            deletes = [before[sid] for sid, s in after.items() if s is None]
            new_subs = [w.sub for w in batch if isinstance(w, _Create)]
            made, generation = self.store.apply(new_subs, pairs, deletes)
            for i, stored in zip(creates, made, strict=True):
                out[i] = stored
            if generation != self._generation:
                self._catch_up()  # another process wrote too: read back in the store's order
                return [out[i] for i in range(len(batch))]
            # Only ours since the index's generation: no need to read them back.
            for s in made:
                self.engine.upsert(s)
            for _, new in pairs:
                self.engine.upsert(new)
            for old in deletes:
                self.engine.remove(old.id, old.collection)
            self._generation = generation + len(made) + len(pairs) + len(deletes)
        return [out[i] for i in range(len(batch))]

    def _current(
        self,
        who: Principal,
        sub_id: int,
        before: dict[int, Subscription],
        after: dict[int, Subscription | None],
    ) -> Subscription:
        """The subscription as the batch so far leaves it, if the caller may change it."""
        if sub_id not in after:
            before[sub_id] = self.get(who, sub_id)
            return before[sub_id]
        s = after[sub_id]
        if s is None or (s.owner != who.owner and not who.operator):
            raise NotFound(f"no subscription {sub_id}", field="id")
        return s

    def _patched(self, old: Subscription, patch: Patch) -> Subscription:
        f = patch.fields
        new = dataclasses.replace(
            old,
            owner=patch.owner if "owner" in f else old.owner,
            active=patch.active if "active" in f else old.active,
            expires_us=patch.expires_us if "expire_time" in f else old.expires_us,
            qualifiers=patch.qualifiers if "qualifiers" in f else old.qualifiers,
            # Secrets come back redacted from reads: *** keeps the stored one.
            actions=restore_secrets(old.actions, patch.actions) if "actions" in f else old.actions,
            event_types=patch.event_types if "event_types" in f else old.event_types,
            theme=patch.theme if "theme" in f else old.theme,
            updated_us=now_us(),
        )
        return validate_subscription(new, self._collection(old.collection).frame)

    def theme(self, who: Principal, theme: str, op: ThemeOp) -> int:
        """Suspend, resume or cancel (delete) every subscription of a theme the caller may
        change; returns how many."""
        if not theme:
            raise InvalidArgument("is required", field="theme")
        with self._lock:
            subs: list[Subscription] = []
            after = 0
            while page := self.list_subscriptions(who, theme=theme, after_id=after, limit=MAX_PAGE):
                subs += page
                after = page[-1].id
            if op == "cancel":
                self.store.delete(subs)
                self._catch_up()
                return len(subs)
            t = now_us()
            pairs = [(s, dataclasses.replace(s, active=op == "resume", updated_us=t)) for s in subs]
            self.store.replace(pairs)
            self._catch_up()
            return len(pairs)

    # -- events ---------------------------------------------------------------------------------

    def publish(self, who: Principal, events: Sequence[GranuleEvent]) -> list[StoredEvent]:
        """Match a batch of granule events and record them with their actions; returns the
        events with their ids once durable. Events come from data providers: the owner of each
        event's collection, or the operator."""
        if not events:
            raise InvalidArgument("name at least one event", field="events")
        if len(events) > MAX_PUBLISH:
            raise InvalidArgument(f"at most {MAX_PUBLISH} events per call", field="events")
        for i, e in enumerate(events):
            c = self._collection(e.collection, field=f"events[{i}].collection")
            if c.source_id is not None:
                raise InvalidArgument(
                    "image collections are fed by the catalog", field=f"events[{i}].collection"
                )
            if c.owner != who.owner and not who.operator:
                raise PermissionDenied(
                    f"only {c.owner!r} and the operator publish to {c.key}",
                    field=f"events[{i}].collection",
                )
            validate_event(e, c.frame, i)
        stored: list[StoredEvent] = []
        for x in self._publishes.submit_many(events).result():
            if isinstance(x, BaseException):  # the transaction failed: none is recorded
                raise x
            stored.append(x)
        return stored

    def _record_published(
        self, events: Sequence[GranuleEvent]
    ) -> list[StoredEvent | BaseException]:
        """The group commit's writer: published batches queued together, as one (published
        events are all kept, so the results line up with the events)."""
        return list(self._record(events, None))

    def _record(
        self, events: Sequence[GranuleEvent], catalog_seqs: Sequence[int] | None
    ) -> list[StoredEvent]:
        # Recording outside the lock, so that another caller's batch is matched meanwhile, was
        # measured slower (two threads trading the GIL): one batch at a time.
        with self._lock:
            self._catch_up()
            t0 = time.perf_counter()
            matches = self.engine.match(events, now_us())
            t1 = time.perf_counter()
            stored = self.store.record(matches, catalog_seqs)
            self.stats.time("match", t1 - t0, len(events))
            self.stats.time("record", time.perf_counter() - t1, len(events))
            self.stats.count("events", len(stored))
        if stored:
            self.notifications.signal.notify(stored[-1].id)  # committed: wake the watchers
            for fn in self._on_record:
                fn()
        return stored

    def catalog_event(self, e: CatalogEvent) -> GranuleEvent | None:
        c = self._by_source.get(e.source_id)
        if c is None:
            return None
        fp = e.footprint
        return GranuleEvent(
            c.key, _CATALOG_TYPES[e.kind], e.path, e.time_us, e.time_us,
            Box(fp.x_min, fp.y_min, fp.x_max, fp.y_max),
            (("width", float(e.width)), ("height", float(e.height)), ("scale", e.scale)),
            (("path", e.path),),
        )  # fmt: skip

    def consume(self, catalog_events: Sequence[CatalogEvent]) -> list[StoredEvent]:
        """Match and record catalog events (in sequence order); those already recorded, by
        this process or before a crash, are skipped."""
        pairs = [(g, e.seq) for e in catalog_events if (g := self.catalog_event(e)) is not None]
        if not pairs:
            return []
        return self._record([g for g, _ in pairs], [s for _, s in pairs])

    def actions(self, who: Principal, after: str, limit: int) -> list[MatchedAction]:
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"must be 0-{MAX_PAGE}", field="limit")
        try:
            key = action_key(after) if after else b""
        except ValueError:
            raise InvalidArgument("not an action id", field="after") from None
        return self.store.actions_after(key, limit or 100, None if who.operator else who.owner)

    def on_record(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call fn (from the recording thread) after each batch of events is recorded here;
        returns what stops it."""
        self._on_record.append(fn)
        return lambda: self._on_record.remove(fn)

    # -- delivery state (the drivers are heliostat.subscriptions.drivers) -----------------------

    def _key(self, action_id: str, field: str) -> bytes:
        try:
            return action_key(action_id)
        except ValueError:
            raise InvalidArgument("not an action id", field=field) from None

    def action_status(
        self, who: Principal, action_id: str
    ) -> tuple[MatchedAction, ActionState | None, list[Attempt]]:
        """An action with its delivery state (None: not queued yet, or a watch action) and every
        attempt so far; somebody else's is not found."""
        key = self._key(action_id, "id")
        (a,) = self.store.actions_at([key])
        if a is None or (a.owner != who.owner and not who.operator):
            raise NotFound(f"no action {action_id}", field="id")
        return a, self.ledger.state(key), self.ledger.attempts(key)

    def dead_letters(self, who: Principal, after: str, limit: int) -> list[ActionState]:
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"must be 0-{MAX_PAGE}", field="limit")
        key = self._key(after, "after") if after else b""
        return self.ledger.dead_letters(key, limit or 100, None if who.operator else who.owner)

    def replay(self, who: Principal, action_ids: Sequence[str]) -> list[str]:
        """Queue dead letters again (one's own, or any for the operator); returns the ids
        replayed. Ids that are not (the caller's) dead letters are skipped."""
        if not action_ids:
            raise InvalidArgument("name at least one action", field="ids")
        if len(action_ids) > MAX_PAGE:
            raise InvalidArgument(f"at most {MAX_PAGE} per call", field="ids")
        keys = [self._key(a, f"ids[{i}]") for i, a in enumerate(action_ids)]
        done = set(self.ledger.replay(keys, None if who.operator else who.owner, now_us()))
        self.stats.count("replayed", len(done))
        return [a for a, k in zip(action_ids, keys, strict=True) if k in done]

    def purge_dead_letters(self, who: Principal, owner: str, before_us: int | None) -> int:
        """Remove dead letters for good (an owner's or all; those failed before before_us, or
        all), with their attempt logs and emptied events; operator only."""
        who.require_operator("purge dead letters")
        before = 2**63 - 1 if before_us is None else max(before_us, 0)
        n, logs, events = self.ledger.purge_dead(owner or None, before, 500)
        self.stats.count("dead_letters_purged", n)
        self.stats.count("deleted_logs", logs)
        self.stats.count("deleted_events", events)
        return n

    def delivery_stats(self) -> PipelineCounts:
        depths = self.ledger.depths(now_us())
        counts = self.store.counts()
        depths["events_left"] = counts["events"]
        depths["actions_left"] = (
            sum(v for k, v in depths.items() if k.startswith("pending.")) + depths["leased"]
        )
        depths["actions_stored"] = counts["actions"]
        return self.stats.snapshot(depths)

    def watch(
        self,
        who: Principal,
        *,
        cursor: str = "",
        from_oldest: bool = False,
        owner: str = "",
        subscription_ids: Sequence[int] = (),
        collection: str = "",
    ) -> Watch:
        """A live stream of the caller's watch actions (the operator's: everyone's, or one
        owner's) after cursor; see heliostat.subscriptions.notifications."""
        if owner and owner != who.owner:
            who.require_operator("watch another owner's notifications")
        if collection:
            self._collection(collection)
        scope = owner or (None if who.operator else who.owner)
        keep = WatchFilter(scope, frozenset(subscription_ids), collection)
        return self.notifications.open(cursor, from_oldest, keep)
