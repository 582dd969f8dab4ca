"""Who may call what: token authentication, per-RPC access rules, the per-identity send rate.

One server interceptor guards every RPC before its handler runs, so a refused
call never reaches the store: nothing stored, nothing deleted.

- Authentication (auth on): the `authorization: Bearer TOKEN` metadata must hold a
  token signed by a trusted key; else UNAUTHENTICATED saying what is wrong.
- Access rules, by method (`RULES`): a user token acts only for its own address
  (sender of Send/SendBatch, mailbox of Fetch/Ack/ReceiveAll); a peer token only
  on peer RPCs (replica repair); a method without a rule is refused (fail closed),
  so a new RPC cannot ship unguarded. Violations: PERMISSION_DENIED.
- Rate (if configured): a token bucket per identity (per client host with auth
  off) on the messages of Send and SendBatch; RESOURCE_EXHAUSTED with
  `retry-after-ms` trailing metadata and a google.rpc.RetryInfo detail.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from grpc_messenger.errors import MessengerError, PermissionDenied, Unauthenticated
from grpc_messenger.grpc_errors import to_grpc
from grpc_messenger.model import normalize_address
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.security.tokens import Identity, Role, TokenVerifier, bearer_token
from grpc_messenger.server.limits import RateLimiter

log = logging.getLogger(__name__)

SERVICE = "/messenger.MessengerService/"
REPLICA_SERVICE = "/messenger.ReplicaService/"
RETRY_AFTER_KEY = "retry-after-ms"
# Services that answer without a token: they reveal nothing of any mailbox.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Owned = Callable[[Any], Iterable[str]]


@dataclass(frozen=True, slots=True)
class Rule:
    """Which roles may call a method, which addresses a user must own, what it costs in the send rate."""

    roles: frozenset[Role]
    owned: Owned | None = None
    send_cost: Callable[[Any], int] | None = None


def _sender(request: pb.SendRequest) -> list[str]:
    return [request.self_email]


def _senders(request: pb.SendBatchRequest) -> set[str]:
    return {m.self_email for m in request.messages}


def _mailbox(request: pb.FetchRequest | pb.AckRequest | pb.ReceiveRequest) -> list[str]:
    return [request.self_email]


USER = frozenset({Role.USER})
ANY_ROLE = frozenset({Role.USER, Role.PEER})
PEER = frozenset({Role.PEER})  # replica-to-replica RPCs (repair)

RULES: dict[str, Rule] = {
    SERVICE + "Send": Rule(USER, owned=_sender, send_cost=lambda r: 1),
    SERVICE + "SendBatch": Rule(USER, owned=_senders, send_cost=lambda r: len(r.messages)),
    # checked for each request of the call (see _wrap)
    SERVICE + "SendBatchStream": Rule(USER, owned=_senders, send_cost=lambda r: len(r.messages)),
    SERVICE + "Fetch": Rule(USER, owned=_mailbox),
    SERVICE + "Ack": Rule(USER, owned=_mailbox),
    SERVICE + "ReceiveAll": Rule(USER, owned=_mailbox),
    SERVICE + "Subscribe": Rule(USER, owned=_mailbox),
    SERVICE + "Info": Rule(ANY_ROLE),
    # replica-to-replica repair: peers only, never a user token
    REPLICA_SERVICE + "Digests": Rule(PEER),
    REPLICA_SERVICE + "MailboxKeys": Rule(PEER),
    REPLICA_SERVICE + "Pull": Rule(PEER),
}


def check_access(rule: Rule | None, identity: Identity, request: Any) -> None:
    """Raise PermissionDenied unless `identity` may make this call. Pure: no I/O."""
    if rule is None:
        raise PermissionDenied("this method has no access rule; refused")
    if identity.role not in rule.roles:
        if identity.role is Role.PEER:
            raise PermissionDenied("a peer token cannot act for a mailbox; use a user token")
        raise PermissionDenied("a user token cannot make replica-to-replica calls; this needs a peer credential")
    if rule.owned is None or identity.role is not Role.USER:
        return
    if request is None:
        raise PermissionDenied("this method's access rule needs a request")
    subject = normalize_address(identity.subject)
    for address in rule.owned(request):
        if normalize_address(address) != subject:  # one mailbox however capitalised
            raise PermissionDenied(f"token for {identity.subject} cannot act for {address!r}")


def _client_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000" -> the host part
    return context.peer().rpartition(":")[0]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not proceed: the status its call ends with."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(self.code, self.details, trailing_metadata=self.trailing_metadata)


class StreamRequestRefused(Exception):
    """A request on a stream was refused: its call ends with the refusal, after the answers owed before it."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.details)
        self.refusal = refusal


def _refuse(method: str, error: MessengerError) -> Refusal:
    log.info("event=auth.refused method=%s code=%s", method.rpartition("/")[2], error.code.name)
    return Refusal(to_grpc(error.code), str(error))


def _refuse_rate(method: str, wait_ms: int, rate: float) -> Refusal:
    message = f"send rate limit of {rate:g} messages/s for this identity reached; retry in {wait_ms} ms"
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    delay = duration_pb2.Duration(seconds=wait_ms // 1000, nanos=(wait_ms % 1000) * 1_000_000)
    info = error_details_pb2.RetryInfo(retry_delay=delay)
    status.details.add().Pack(info)
    details = rpc_status.to_status(status)
    log.info("event=limit.rate method=%s wait_ms=%d", method.rpartition("/")[2], wait_ms)
    return Refusal(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        trailing_metadata=(*details.trailing_metadata, (RETRY_AFTER_KEY, str(wait_ms))),
    )


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and rate-limits every call before its handler runs.

    Also installed with auth and rate limits off: it turns undecodable request
    bodies into INVALID_ARGUMENT instead of gRPC's UNKNOWN.
    """

    def __init__(self, *, verifier: TokenVerifier | None, limiter: RateLimiter | None) -> None:
        self._verifier = verifier
        self._limiter = limiter
        # method -> guarded handler, built once: the checks run per call inside it. Only
        # methods the server has are kept, so the map is bounded by the services.
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        rule = RULES.get(method)
        wrapped: grpc.RpcMethodHandler[Any, Any] = _wrap(
            handler, lambda request, context: self._admit(method, rule, request, context)
        )
        self._guarded[method] = wrapped
        return wrapped

    async def _admit(
        self, method: str, rule: Rule | None, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Refusal | None:
        """None if the request may proceed; otherwise why not."""
        identity = None
        if self._verifier is not None:
            try:
                identity = self._verifier.verify(bearer_token(context.invocation_metadata() or ()))
            except Unauthenticated as exc:
                return _refuse(method, exc)
        if isinstance(request, Undecodable):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"request does not decode: {request.reason}")
        if identity is not None:
            try:
                check_access(rule, identity, request)
            except PermissionDenied as exc:
                return _refuse(method, exc)
        if self._limiter is not None and rule is not None and rule.send_cost is not None and request is not None:
            identity_key = f"{identity.role.value}:{identity.subject}" if identity else _client_host(context)
            wait_ms = self._limiter.check(identity_key, rule.send_cost(request))
            if wait_ms:
                return _refuse_rate(method, wait_ms, self._limiter.rate_per_s)
        return None


Admit = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Refusal | None]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request body that is not valid protobuf for its method (refused as INVALID_ARGUMENT)."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # gRPC answers a deserializer's exception with UNKNOWN; we want a clear INVALID_ARGUMENT
    if deserializer is None:
        return None
    decode = deserializer

    def tolerant(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:
            return Undecodable(f"{type(exc).__name__}: {exc}"[:300])

    return tolerant


async def _admitted(admit: Admit, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Return if the request may proceed; otherwise end its call with the refusal."""
    refusal = await admit(request, context)
    if refusal is not None:
        await refusal.abort(context)


def _wrap(handler: Any, admit: Admit) -> Any:
    """The same handler, with `admit` run first.

    A client-streaming call that answers once is admitted without a request; one
    that answers as it goes (SendBatchStream) has each request admitted before
    its handler sees it, so a token acts on a stream exactly as on unary calls.
    """
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await _admitted(admit, request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        inner_uw = handler.unary_stream

        async def unary_stream_writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await _admitted(admit, request, context)
            await inner_uw(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream_writer, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await _admitted(admit, request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, _tolerant(handler.request_deserializer), handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await _admitted(admit, None, context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async def admitted() -> AsyncIterator[Any]:
            async for request in requests:
                refusal = await admit(request, context)
                if refusal is not None:
                    raise StreamRequestRefused(refusal)  # the handler answers what came before, then ends
                yield request

        try:
            async for item in inner_ss(admitted(), context):
                yield item
        except StreamRequestRefused as refused:
            await refused.refusal.abort(context)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, _tolerant(handler.request_deserializer), handler.response_serializer
    )
