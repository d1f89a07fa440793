"""Running domain calls from gRPC handlers: off the event loop, within the deadline, with
domain errors turned into status codes that name the field."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, NoReturn, TypeVar

import grpc

from heliostat import errors

Ctx = grpc.aio.ServicerContext[Any, Any]

T = TypeVar("T")
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

CODES: dict[type[errors.HeliostatError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}


async def abort(context: Ctx, e: errors.HeliostatError) -> NoReturn:
    if e.field:
        context.set_trailing_metadata((("heliostat-field", e.field),))
    await context.abort(CODES.get(type(e), grpc.StatusCode.INTERNAL), str(e))


def handles_errors(
    method: Callable[[S, Req, Ctx], Awaitable[Resp]],
) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
    """Turn domain errors raised by a handler into gRPC status codes naming the field."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except errors.HeliostatError as e:
            await abort(context, e)

    return wrapper


async def offload(context: Ctx, executor: Executor, fn: Callable[[], T]) -> T:
    """Run CPU or I/O work in the executor, giving up when the caller's deadline passes."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(executor, fn)
    # None when the caller set no deadline (the stubs say float).
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return await fut
    try:
        return await asyncio.wait_for(fut, max(remaining, 0.0))
    except TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


async def wait_future(context: Ctx, fut: concurrent.futures.Future[T]) -> T:
    """Wait for a Future answered by another thread (a write queued for the group commit)
    without holding a thread, within the caller's deadline."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return await asyncio.wrap_future(fut)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), max(remaining, 0.0))
    except TimeoutError:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
