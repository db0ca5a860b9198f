"""Server interceptors that act inside each call, for every method of every service.

An aio interceptor sees only the method's name, not the call: to act on the
call's context or request it wraps the method's handler. ``wrap_handler``
does that once for all four kinds of methods, and ``HandlerWrapping`` applies
it: so that a request that is not a valid message is INVALID_ARGUMENT (grpc
would answer UNKNOWN), and to check the peer's certificate (``tls.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in the type stubs only
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
# Called first in every call, with the method's full name; aborts the call to refuse it.
Check = Callable[[Context, str], Awaitable[None]]
Behavior = Callable[..., Any]
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """What the safe deserializer returns for bytes that are not a valid message."""

    error: str


def wrap_handler(
    handler: Handler, method: str, check: Check | None = None, decode_safely: bool = False
) -> Handler:
    """``handler`` with ``check`` run first in each call and, with ``decode_safely``,
    undecodable requests aborted as INVALID_ARGUMENT."""
    replaced: dict[str, Any] = {}
    if decode_safely:
        replaced["request_deserializer"] = _safe(handler.request_deserializer)
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            replaced[kind] = _wrap(behavior, method, check, decode_safely, streaming_request=kind.startswith("stream"))
    return handler._replace(**replaced)  # type: ignore[attr-defined, no-any-return]  # a namedtuple at run time


class HandlerWrapping(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in the stubs only
    """Wraps every method's handler (see ``wrap_handler``): ``check`` first in each call, and,
    with ``decode_safely``, a request that does not decode as its message is INVALID_ARGUMENT,
    saying why."""

    def __init__(self, check: Check | None = None, decode_safely: bool = False) -> None:
        self._check = check
        self._decode_safely = decode_safely

    async def intercept_service(  # type: ignore[override]  # None (an unknown method) is what grpc passes on
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, handler_call_details.method, self._check, self._decode_safely)


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer else data
        except Exception as err:  # DecodeError, or whatever a deserializer raises
            return Undecodable(f"{type(err).__name__}: {err}"[:300])

    return decode


async def _accept(request: Any, context: Context, method: str) -> Any:
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message ({request.error})")
    return request


def _wrap(behavior: Behavior, method: str, check: Check | None, decode_safely: bool, streaming_request: bool) -> Behavior:
    async def prepare(request: Any, context: Context) -> Any:
        if check is not None:
            await check(context, method)
        if not decode_safely:
            return request
        if streaming_request:
            return _checked_stream(request, context, method)
        return await _accept(request, context, method)

    # grpc.aio dispatches on the kind of function (coroutine or async
    # generator), so the wrapper must be of the same kind.
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_stream(request: Any, context: Context) -> Any:
            async for response in behavior(await prepare(request, context), context):
                yield response

        return wrapped_stream
    if inspect.iscoroutinefunction(behavior):

        async def wrapped(request: Any, context: Context) -> Any:
            return await behavior(await prepare(request, context), context)

        return wrapped

    # Every servicer of the daemon is async; fail closed on anything else.
    async def unsupported(request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.INTERNAL, f"{method}: a synchronous handler cannot be wrapped")

    return unsupported


async def _checked_stream(requests: Any, context: Context, method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield await _accept(request, context, method)
