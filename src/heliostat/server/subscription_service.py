"""gRPC SubscriptionService: bearer-token authentication and translation onto
heliostat.subscriptions.service.SubscriptionService (which holds every rule)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import dataclasses
import functools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from heliostat.errors import HeliostatError, InvalidArgument
from heliostat.server.calls import CODES, handles_errors, offload, wait_future
from heliostat.server.convert import timestamp_us, to_timestamp
from heliostat.subscriptions import model
from heliostat.subscriptions.auth import PermissionDenied, Principal
from heliostat.subscriptions.lifecycle import ActionState, Attempt
from heliostat.subscriptions.service import (
    CreateOp,
    DeleteOp,
    Patch,
    SubscriptionService,
    ThemeOp,
    UpdateOp,
    WriteOp,
)
from heliostat.v1 import subscriptions_pb2 as pb
from heliostat.v1 import subscriptions_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_S = TypeVar("_S", bound="SubscriptionServicer")

_FRAMES: dict[model.Frame, pb.Frame] = {
    "helioprojective": pb.FRAME_HELIOPROJECTIVE,
    "geographic": pb.FRAME_GEOGRAPHIC,
}
_FRAMES_IN = {v: k for k, v in _FRAMES.items()}
_TYPES: dict[model.EventType, pb.SubscriptionEventType] = {
    "insert": pb.SUBSCRIPTION_EVENT_TYPE_INSERT,
    "delete": pb.SUBSCRIPTION_EVENT_TYPE_DELETE,
    "update_metadata": pb.SUBSCRIPTION_EVENT_TYPE_UPDATE_METADATA,
}
_TYPES_IN = {v: k for k, v in _TYPES.items()}
_KINDS: dict[model.ActionKind, pb.ActionKind] = {
    "email": pb.ACTION_KIND_EMAIL,
    "webhook": pb.ACTION_KIND_WEBHOOK,
    "watch": pb.ACTION_KIND_WATCH,
    "datapool": pb.ACTION_KIND_DATAPOOL,
    "distribution": pb.ACTION_KIND_DISTRIBUTION,
}
_KINDS_IN = {v: k for k, v in _KINDS.items()}
_STATES = {
    "pending": pb.DELIVERY_STATE_PENDING,
    "leased": pb.DELIVERY_STATE_LEASED,
    "delivered": pb.DELIVERY_STATE_DELIVERED,
    "failed": pb.DELIVERY_STATE_FAILED,
    "disabled": pb.DELIVERY_STATE_DISABLED,
}
_OUTCOMES = {
    "delivered": pb.DELIVERY_OUTCOME_DELIVERED,
    "retry": pb.DELIVERY_OUTCOME_RETRY,
    "failed": pb.DELIVERY_OUTCOME_FAILED,
    "gone": pb.DELIVERY_OUTCOME_GONE,
}
_PAGE = struct.Struct(">Q")


def authenticated(
    method: Callable[[_S, Req, Ctx, Principal], Awaitable[Resp]],
) -> Callable[[_S, Req, Ctx], Awaitable[Resp]]:
    """Resolve the caller from ``authorization: Bearer <token>``, or answer UNAUTHENTICATED."""

    @functools.wraps(method)
    async def wrapper(self: _S, request: Req, context: Ctx) -> Resp:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(header).partition(" ")
        # On the loop: one small LMDB read and a hash cost less than a hop to the executor and
        # back. Not cached: a token revoked by the CLI fails at once.
        who = self.subs.authenticate(token) if scheme.lower() == "bearer" and token else None
        if who is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is needed")
        try:
            return await method(self, request, context, who)
        except PermissionDenied as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))

    return wrapper


# -- conversions ------------------------------------------------------------------------------


def _box_in(msg: pb.Box) -> model.Box:
    return model.Box(msg.x_min, msg.y_min, msg.x_max, msg.y_max)


def _box_out(b: model.Box) -> pb.Box:
    return pb.Box(x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max)


def _interval_in(msg: pb.TimeInterval, field: str) -> tuple[int, int]:
    start = timestamp_us(msg.start, f"{field}.start")
    end = timestamp_us(msg.end, f"{field}.end") if msg.HasField("end") else start
    return start, end


def _qualifiers_in(msg: pb.Qualifiers) -> model.Qualifiers:
    t = None
    if msg.HasField("temporal"):
        t = model.Temporal(*_interval_in(msg.temporal, "qualifiers.temporal"))
    return model.Qualifiers(
        t,
        tuple(model.NumericRange(n.attribute, n.min, n.max) for n in msg.numeric),
        tuple(model.StringEquals(s.attribute, s.value) for s in msg.strings),
        _box_in(msg.spatial) if msg.HasField("spatial") else None,
    )


def _qualifiers_out(q: model.Qualifiers) -> pb.Qualifiers:
    out = pb.Qualifiers(
        numeric=[
            pb.NumericQualifier(attribute=n.attribute, min=n.min, max=n.max) for n in q.numeric
        ],
        strings=[pb.StringQualifier(attribute=s.attribute, value=s.value) for s in q.strings],
    )
    if q.temporal is not None:
        out.temporal.start.CopyFrom(to_timestamp(q.temporal.start_us))
        out.temporal.end.CopyFrom(to_timestamp(q.temporal.end_us))
    if q.spatial is not None:
        out.spatial.CopyFrom(_box_out(q.spatial))
    return out


def _actions_in(msgs: Any) -> tuple[model.Action, ...]:
    out = []
    for i, a in enumerate(msgs):
        kind = _KINDS_IN.get(a.kind)
        if kind is None:
            raise InvalidArgument("name an action kind", field=f"actions[{i}].kind")
        out.append(model.Action(kind, tuple(sorted(a.params.items()))))
    return tuple(out)


def _action_out(a: model.Action) -> pb.Action:
    # Secrets are never shown (whoever reads a subscription cannot forge or log in): *** instead.
    return pb.Action(kind=_KINDS[a.kind], params=dict(model.redact_params(a.params)))


def _types_in(values: Any, field: str) -> frozenset[model.EventType]:
    out = set()
    for v in values:
        t = _TYPES_IN.get(v)
        if t is None:
            raise InvalidArgument("name an event type", field=field)
        out.add(t)
    return frozenset(out)


def _subscription_in(msg: pb.Subscription) -> model.Subscription:
    return model.Subscription(
        id=0,
        owner=msg.owner,
        collection=msg.collection,
        event_types=_types_in(msg.event_types, "event_types"),
        active=msg.active if msg.HasField("active") else True,
        expires_us=timestamp_us(msg.expire_time, "expire_time")
        if msg.HasField("expire_time")
        else 0,
        theme=msg.theme,
        qualifiers=_qualifiers_in(msg.qualifiers),
        actions=_actions_in(msg.actions),
    )


def _patch_in(request: pb.UpdateSubscriptionRequest) -> Patch:
    fields = frozenset(request.update_mask.paths)
    m = request.subscription
    return Patch(
        fields=fields,
        owner=m.owner,
        active=m.active,
        expires_us=timestamp_us(m.expire_time, "expire_time") if m.HasField("expire_time") else 0,
        qualifiers=_qualifiers_in(m.qualifiers) if "qualifiers" in fields else model.Qualifiers(),
        actions=_actions_in(m.actions) if "actions" in fields else (),
        event_types=_types_in(m.event_types, "event_types"),
        theme=m.theme,
    )


def _subscription_out(s: model.Subscription) -> pb.Subscription:
    out = pb.Subscription(
        id=s.id,
        owner=s.owner,
        collection=s.collection,
        event_types=[_TYPES[t] for t in sorted(s.event_types)],
        active=s.active,
        theme=s.theme,
        qualifiers=_qualifiers_out(s.qualifiers),
        actions=[_action_out(a) for a in s.actions],
        create_time=to_timestamp(s.created_us),
        update_time=to_timestamp(s.updated_us),
    )
    if s.expires_us:
        out.expire_time.CopyFrom(to_timestamp(s.expires_us))
    return out


def _collection_out(c: model.Collection) -> pb.SubscriptionCollection:
    return pb.SubscriptionCollection(
        short_name=c.short_name, version=c.version, frame=_FRAMES[c.frame],
        source_id=c.source_id or 0, key=c.key, owner=c.owner,
    )  # fmt: skip


def _event_in(msg: pb.GranuleEvent, i: int) -> model.GranuleEvent:
    where = f"events[{i}]"
    t = _TYPES_IN.get(msg.type)
    if t is None:
        raise InvalidArgument("name an event type", field=f"{where}.type")
    if not msg.HasField("time"):
        raise InvalidArgument("is required", field=f"{where}.time")
    start, end = _interval_in(msg.time, f"{where}.time")
    return model.GranuleEvent(
        msg.collection, t, msg.granule, start, end,
        _box_in(msg.footprint) if msg.HasField("footprint") else None,
        tuple(sorted(msg.numeric.items())), tuple(sorted(msg.strings.items())),
    )  # fmt: skip


def _event_out(e: model.GranuleEvent) -> pb.GranuleEvent:
    out = pb.GranuleEvent(
        collection=e.collection, type=_TYPES[e.type], granule=e.granule,
        time=pb.TimeInterval(start=to_timestamp(e.start_us), end=to_timestamp(e.end_us)),
        numeric=dict(e.numeric), strings=dict(e.strings),
    )  # fmt: skip
    if e.box is not None:
        out.footprint.CopyFrom(_box_out(e.box))
    return out


def _matched_out(a: model.MatchedAction) -> pb.MatchedAction:
    return pb.MatchedAction(
        id=a.id, event_id=a.event_id, subscription_id=a.subscription_id, owner=a.owner,
        action=_action_out(a.action), event=_event_out(a.event),
    )  # fmt: skip


def _status_out(st: ActionState) -> pb.ActionStatus:
    out = pb.ActionStatus(
        id=st.id, owner=st.owner, kind=_KINDS[st.kind], state=_STATES[st.state],
        attempts=st.attempts, last_result=st.detail,
    )  # fmt: skip
    if st.state in ("pending", "leased"):
        out.next_attempt_time.CopyFrom(to_timestamp(st.due_us))
    return out


def _attempt_out(a: Attempt) -> pb.DeliveryAttempt:
    outcome = _OUTCOMES.get(a.outcome, pb.DELIVERY_OUTCOME_UNSPECIFIED)
    return pb.DeliveryAttempt(
        number=a.number, time=to_timestamp(a.time_us), outcome=outcome, detail=a.detail,
        worker=a.worker,
    )  # fmt: skip


def _notification_out(a: model.MatchedAction) -> pb.Notification:
    return pb.Notification(
        id=a.id, event_id=a.event_id, subscription_id=a.subscription_id, owner=a.owner,
        params=dict(model.redact_params(a.action.params)), event=_event_out(a.event),
    )  # fmt: skip


def _page_token(after: int) -> str:
    return base64.urlsafe_b64encode(_PAGE.pack(after)).decode()


def _page_after(token: str) -> int:
    if not token:
        return 0
    try:
        return int(_PAGE.unpack(base64.urlsafe_b64decode(token.encode()))[0])
    except (binascii.Error, struct.error, ValueError):
        raise InvalidArgument("not a token this server issued", field="page_token") from None


WRITE_WINDOW = 4096  # unanswered writes per WriteSubscriptions stream before it stops reading
MAX_WRITES_PER_MESSAGE = 1000


def _error_result(e: BaseException) -> pb.SubscriptionWriteResult:
    if isinstance(e, PermissionDenied):
        code = grpc.StatusCode.PERMISSION_DENIED
    elif isinstance(e, HeliostatError):
        code = CODES.get(type(e), grpc.StatusCode.INTERNAL)
    else:  # the transaction failed (e.g. the store is full): every write in it did
        code = grpc.StatusCode.INTERNAL
    field = (e.field if isinstance(e, HeliostatError) else None) or ""
    return pb.SubscriptionWriteResult(code=code.value[0], message=str(e), field=field)


def _write_result(x: model.Subscription | BaseException) -> pb.SubscriptionWriteResult:
    if isinstance(x, BaseException):
        return _error_result(x)
    return pb.SubscriptionWriteResult(id=x.id)


def _op_in(w: pb.SubscriptionWrite) -> WriteOp:
    kind = w.WhichOneof("write")
    if kind == "create":
        return CreateOp(_subscription_in(w.create.subscription))
    if kind == "update":
        return UpdateOp(w.update.subscription.id, _patch_in(w.update))
    if kind == "delete":
        return DeleteOp(w.delete.id)
    raise InvalidArgument("name create, update or delete", field="write")


@dataclasses.dataclass(frozen=True, slots=True)
class _Queued:
    """One message's writes: those read, queued together; those not, answered at once."""

    written: concurrent.futures.Future[list[model.Subscription | BaseException]]
    unreadable: dict[int, pb.SubscriptionWriteResult]  # by position in the message
    n: int

    def results(self) -> list[pb.SubscriptionWriteResult]:
        written = iter(self.written.result())
        return [
            self.unreadable[i] if i in self.unreadable else _write_result(next(written))
            for i in range(self.n)
        ]


class SubscriptionServicer(subscriptions_pb2_grpc.SubscriptionServiceServicer):
    def __init__(self, subs: SubscriptionService, executor: Executor) -> None:
        self.subs = subs
        self.executor = executor

    @handles_errors
    @authenticated
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Ctx, who: Principal
    ) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(
            collections=[_collection_out(c) for c in self.subs.collections()]
        )

    @handles_errors
    @authenticated
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Ctx, who: Principal
    ) -> pb.SubscriptionCollection:
        m = request.collection
        frame = _FRAMES_IN.get(m.frame, "geographic")
        c = model.Collection(m.short_name, m.version, frame, owner=m.owner)
        done = await offload(context, self.executor, lambda: self.subs.create_collection(who, c))
        return _collection_out(done)

    @handles_errors
    @authenticated
    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Ctx, who: Principal
    ) -> pb.Subscription:
        # Checking and queueing are CPU-light, on the loop; the group commit answers the Future.
        s = _subscription_in(request.subscription)
        done = await wait_future(context, self.subs.submit_create(who, s))
        return _subscription_out(done)

    @handles_errors
    @authenticated
    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: Ctx, who: Principal
    ) -> pb.Subscription:
        s = await offload(context, self.executor, lambda: self.subs.get(who, request.id))
        return _subscription_out(s)

    @handles_errors
    @authenticated
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Ctx, who: Principal
    ) -> pb.ListSubscriptionsResponse:
        after = _page_after(request.page_token)
        page = await offload(
            context,
            self.executor,
            lambda: self.subs.list_subscriptions(
                who,
                owner=request.owner,
                theme=request.theme,
                after_id=after,
                limit=request.page_size,
            ),
        )
        size = request.page_size or 100
        return pb.ListSubscriptionsResponse(
            subscriptions=[_subscription_out(s) for s in page],
            next_page_token=_page_token(page[-1].id) if len(page) == size else "",
        )

    @handles_errors
    @authenticated
    async def UpdateSubscription(
        self, request: pb.UpdateSubscriptionRequest, context: Ctx, who: Principal
    ) -> pb.Subscription:
        patch = _patch_in(request)
        s = await wait_future(context, self.subs.submit_update(who, request.subscription.id, patch))
        return _subscription_out(s)

    @handles_errors
    @authenticated
    async def DeleteSubscription(
        self, request: pb.DeleteSubscriptionRequest, context: Ctx, who: Principal
    ) -> pb.DeleteSubscriptionResponse:
        await wait_future(context, self.subs.submit_delete(who, request.id))
        return pb.DeleteSubscriptionResponse()

    @handles_errors
    @authenticated
    async def WriteSubscriptions(
        self,
        requests: AsyncIterator[pb.WriteSubscriptionsRequest],
        context: Ctx,
        who: Principal,
    ) -> None:
        # A reader checks and queues each message's writes (in the executor: up to 1000 at a
        # time would hold the loop), one entry for the group commit per message, while this
        # coroutine answers them in order.
        queued: collections.deque[_Queued | None] = collections.deque()
        arrived = asyncio.Event()
        room = asyncio.Event()
        unanswered = 0

        async def read() -> None:
            nonlocal unanswered
            try:
                async for msg in requests:
                    if not msg.writes:
                        continue
                    if len(msg.writes) > MAX_WRITES_PER_MESSAGE:
                        raise InvalidArgument(
                            f"at most {MAX_WRITES_PER_MESSAGE} per message", field="writes"
                        )
                    while unanswered >= WRITE_WINDOW:  # backpressure: stop reading
                        room.clear()
                        await room.wait()
                    submit = functools.partial(self._submit, who, msg.writes)
                    q = await offload(context, self.executor, submit)
                    unanswered += q.n
                    queued.append(q)
                    arrived.set()
            finally:
                queued.append(None)
                arrived.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                while not queued:
                    arrived.clear()
                    await arrived.wait()
                head = queued[0]
                if head is None:
                    break
                await asyncio.wrap_future(head.written)  # a list: each write's error is in it
                # With it, whatever else is answered already: one response for all of them.
                results: list[pb.SubscriptionWriteResult] = []
                while queued and (q := queued[0]) is not None and q.written.done():
                    queued.popleft()
                    results += q.results()
                unanswered -= len(results)
                room.set()
                await context.write(pb.WriteSubscriptionsResponse(results=results))
            await reader  # its error (a message too big, the stream broken) ends the call
        finally:
            reader.cancel()

    def _submit(self, who: Principal, writes: Iterable[pb.SubscriptionWrite]) -> _Queued:
        ops: list[WriteOp] = []
        unreadable: dict[int, pb.SubscriptionWriteResult] = {}
        n = 0
        for n, w in enumerate(writes, 1):
            try:
                ops.append(_op_in(w))
            except HeliostatError as e:
                unreadable[n - 1] = _error_result(e)
        return _Queued(self.subs.submit_writes(who, ops), unreadable, n)

    async def _theme(
        self, request: pb.ThemeRequest, context: Ctx, who: Principal, op: ThemeOp
    ) -> pb.ThemeResponse:
        n = await offload(context, self.executor, lambda: self.subs.theme(who, request.theme, op))
        return pb.ThemeResponse(count=n)

    @handles_errors
    @authenticated
    async def SuspendTheme(
        self, request: pb.ThemeRequest, context: Ctx, who: Principal
    ) -> pb.ThemeResponse:
        return await self._theme(request, context, who, "suspend")

    @handles_errors
    @authenticated
    async def ResumeTheme(
        self, request: pb.ThemeRequest, context: Ctx, who: Principal
    ) -> pb.ThemeResponse:
        return await self._theme(request, context, who, "resume")

    @handles_errors
    @authenticated
    async def CancelTheme(
        self, request: pb.ThemeRequest, context: Ctx, who: Principal
    ) -> pb.ThemeResponse:
        return await self._theme(request, context, who, "cancel")

    @handles_errors
    @authenticated
    async def PublishEvents(
        self, request: pb.PublishEventsRequest, context: Ctx, who: Principal
    ) -> pb.PublishEventsResponse:
        events = [_event_in(e, i) for i, e in enumerate(request.events)]
        stored = await offload(context, self.executor, lambda: self.subs.publish(who, events))
        return pb.PublishEventsResponse(event_ids=[s.id for s in stored])

    @handles_errors
    @authenticated
    async def ListActions(
        self, request: pb.ListActionsRequest, context: Ctx, who: Principal
    ) -> pb.ListActionsResponse:
        actions = await offload(
            context, self.executor, lambda: self.subs.actions(who, request.after, request.limit)
        )
        return pb.ListActionsResponse(actions=[_matched_out(a) for a in actions])

    @handles_errors
    @authenticated
    async def GetAction(
        self, request: pb.GetActionRequest, context: Ctx, who: Principal
    ) -> pb.ActionStatus:
        a, st, attempts = await offload(
            context, self.executor, lambda: self.subs.action_status(who, request.id)
        )
        out = _status_out(st) if st is not None else pb.ActionStatus(id=a.id, owner=a.owner)
        out.kind = _KINDS[a.action.kind]
        out.action.CopyFrom(_matched_out(a))
        out.attempt_log.extend(_attempt_out(x) for x in attempts)
        return out

    @handles_errors
    @authenticated
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Ctx, who: Principal
    ) -> pb.ListDeadLettersResponse:
        dead = await offload(
            context,
            self.executor,
            lambda: self.subs.dead_letters(who, request.after, request.limit),
        )
        return pb.ListDeadLettersResponse(dead_letters=[_status_out(x) for x in dead])

    @handles_errors
    @authenticated
    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Ctx, who: Principal
    ) -> pb.ReplayDeadLettersResponse:
        ids = list(request.ids)
        done = await offload(context, self.executor, lambda: self.subs.replay(who, ids))
        return pb.ReplayDeadLettersResponse(replayed=done)

    @handles_errors
    @authenticated
    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: Ctx, who: Principal
    ) -> pb.PurgeDeadLettersResponse:
        before = timestamp_us(request.before, "before") if request.HasField("before") else None
        n = await offload(
            context,
            self.executor,
            lambda: self.subs.purge_dead_letters(who, request.owner, before),
        )
        return pb.PurgeDeadLettersResponse(purged=n)

    @handles_errors
    @authenticated
    async def WatchNotifications(
        self, request: pb.WatchNotificationsRequest, context: Ctx, who: Principal
    ) -> None:
        # On the loop (one small LMDB read): a watch opened in the executor after the caller's
        # deadline had passed would never give its place back.
        watch = self.subs.watch(
            who,
            cursor=request.cursor,
            from_oldest=request.from_oldest,
            owner=request.owner,
            subscription_ids=list(request.subscription_ids),
            collection=request.collection,
        )
        try:
            # The position is fixed: a client may publish now and will see the events.
            await context.send_initial_metadata((("heliostat-cursor", watch.start_id),))
            async for page in watch.pages():
                # One message per page: one write (and flow-control wait) for a whole batch.
                await context.write(
                    pb.WatchNotificationsResponse(
                        notifications=[_notification_out(a) for a in page.actions],
                        cursor=page.cursor,
                    )
                )
        finally:
            watch.close()  # at once, not when the suspended generator is collected
