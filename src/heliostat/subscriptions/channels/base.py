"""What a delivery channel is to the action driver.

The driver leases due actions, groups them by kind and hands each channel a batch (a channel may
fold a subscriber's actions into one digest). The channel answers one Result per Delivery, in
order. It never raises for a receiver's failure: that is a Result. The driver owns retries,
backoff, dead letters and the record of every attempt; a channel only says what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from heliostat.subscriptions.model import ActionKind, MatchedAction, Subscription

# delivered: the receiver accepted it. retry: a transient failure (timeout, 4xx SMTP, 5xx HTTP,
# rate limited). failed: permanent (5xx SMTP reply, malformed destination); no more tries.
# gone: the receiver says the endpoint no longer exists (HTTP 410); the driver disables this
# action of the subscription.
Outcome = Literal["delivered", "retry", "failed", "gone"]


@dataclass(frozen=True, slots=True)
class Delivery:
    action: MatchedAction
    attempt: int  # 1 on the first try
    subscription: Subscription | None  # as stored now; None once deleted


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str  # the receiver's answer, e.g. "250 2.0.0 Ok: queued as 4F2A" or "HTTP 503"
    retry_after_s: float | None = None  # the receiver's own hint (Retry-After, a rate limit)


class Channel(Protocol):
    kind: ActionKind

    async def deliver(self, batch: Sequence[Delivery]) -> list[Result]: ...

    async def close(self) -> None: ...
