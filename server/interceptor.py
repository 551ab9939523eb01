"""One place that turns exceptions into gRPC status codes, checks the admin token, and times RPCs."""

from __future__ import annotations

import hmac
import logging
import threading
import time

import grpc
import numpy as np

from covisit.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from covisit.core.eventlog import EventLogError

log = logging.getLogger(__name__)
ADMIN_PREFIX = "/covisit.v1.AdminService/"


class AuthError(Exception):
    """A refused admin call; `code` is UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message)


CODES = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (EventLogError, grpc.StatusCode.UNAVAILABLE),  # the log is out of reach: nothing was acknowledged
]


class Latencies:
    """The latest handler latencies of each RPC, for percentiles in GetMetrics and the SLO
    checks: a ring of floats per method, so that reading percentiles is a sort in NumPy
    (without the GIL), not one over Python floats that would stall request threads."""

    def __init__(self, size: int = 10_000):
        self._by_method: dict[str, list] = {}  # method -> [ring, calls so far]
        self._size = size
        self._lock = threading.Lock()

    def add(self, method: str, seconds: float) -> None:
        with self._lock:
            ring = self._by_method.get(method)
            if ring is None:
                ring = self._by_method[method] = [np.empty(self._size), 0]
            ring[0][ring[1] % self._size] = seconds
            ring[1] += 1

    def percentiles(self, method: str, qs=(50, 95, 99)) -> list[float]:
        with self._lock:
            ring = self._by_method.get(method)
            samples = ring[0][:min(ring[1], self._size)].copy() if ring else np.empty(0)
        if not len(samples):
            return [0.0 for _ in qs]
        samples.sort()
        return [float(samples[min(len(samples) - 1, int(len(samples) * q / 100))]) for q in qs]


class _Undecodable:
    """Stands in for a request whose bytes are not the expected message."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserialize):
    # grpcio answers a decode failure with INTERNAL before any handler runs; bad bytes are the
    # caller's error, so hand them to the handler as a value it can refuse properly.
    def decode(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:
            return _Undecodable(exc)
    return decode


def _checked(request):
    if isinstance(request, _Undecodable):
        raise InvalidArgument("request", f"not a valid message ({request.error})")
    return request


def _checked_stream(requests):
    for request in requests:
        yield _checked(request)


class ServiceInterceptor(grpc.ServerInterceptor):
    """Maps core errors to status codes (anything else is INTERNAL, logged), guards the admin
    service with a bearer token, and records each handler's latency; `observe(method, code
    name, seconds)` also gets every call (metrics)."""

    def __init__(self, admin_token: str, insecure_admin: bool, latencies: Latencies,
                 observe=lambda method, code, seconds: None):
        self._token = admin_token.encode()
        self._insecure_admin = insecure_admin
        self.latencies = latencies
        self._observe = observe

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        admin = method.startswith(ADMIN_PREFIX)
        if handler.unary_unary:
            inner, wrap, streaming = handler.unary_unary, grpc.unary_unary_rpc_method_handler, False
        elif handler.stream_unary:
            inner, wrap, streaming = handler.stream_unary, grpc.stream_unary_rpc_method_handler, True
        else:  # no streaming responses in this API
            return handler

        def guarded(request, context):
            started = time.perf_counter()
            code, message = None, ""
            try:
                if admin:
                    metadata = dict(handler_call_details.invocation_metadata or ())
                    self._authorize(metadata.get("authorization", ""))
                request = _checked_stream(request) if streaming else _checked(request)
                return inner(request, context)
            except AuthError as exc:
                code, message = exc.code, str(exc)
            except tuple(cls for cls, _ in CODES) as exc:
                code = next(code for cls, code in CODES if isinstance(exc, cls))
                message = str(exc)
            except Exception:
                log.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, "internal error (logged on the server)"
            finally:
                seconds = time.perf_counter() - started
                self.latencies.add(method, seconds)
                self._observe(method, code.name if code is not None else "OK", seconds)
            context.abort(code, message)  # outside the try: abort works by raising

        return wrap(guarded, request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer)

    def _authorize(self, header: str) -> None:
        if not self._token:
            if self._insecure_admin:
                return
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            "admin is disabled: set COVISIT_ADMIN_TOKEN (or --insecure-admin on loopback)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "authorization: expected 'Bearer <admin token>'")
        if not hmac.compare_digest(token.encode(), self._token):
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "authorization: wrong admin token")
