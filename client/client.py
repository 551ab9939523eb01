"""CovisitClient: one channel, the three covisit.v1 stubs, and typed methods over them.

Needs only grpcio and protobuf. Every call has a deadline (the client's ``timeout``, or the call's
own ``timeout=``), and calls that fail with UNAVAILABLE are retried by gRPC itself, following the
channel's service config (``RETRY_SERVICE_CONFIG``); the deadline covers all attempts. A retried
write may reach the server twice, so events, impressions and clicks are recorded at least once.

Errors are not wrapped: a failed call raises the ``grpc.RpcError`` from the stub, whose ``code()``
and ``details()`` say what went wrong (e.g. INVALID_ARGUMENT naming the field, NOT_FOUND for an
unknown version, UNAUTHENTICATED without the admin token, DEADLINE_EXCEEDED, UNAVAILABLE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc

from covisit.client.types import (Event, Item, Metrics, ModelVersion, Promotion, Rebuild, Recommendations, Resume,
                                  Rollback, SimilarItems, Status)
from covisit.v1 import (admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc, recommend_pb2,
                        recommend_pb2_grpc)

RETRY_SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": f"covisit.v1.{service}"}
                 for service in ("RecommendService", "FeedbackService", "AdminService")],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


def channel_options(options: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The channel options: retries of UNAVAILABLE on, then ``options`` (which win on the same key)."""
    defaults = {"grpc.enable_retries": 1, "grpc.service_config": json.dumps(RETRY_SERVICE_CONFIG)}
    return list((defaults | dict(options)).items())


def admin_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata an admin call sends: the bearer token, or nothing without one."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _strings(name: str, values: Iterable[str]) -> list[str]:
    """``values`` as a list; a bare str is refused, since it would be sent as one id per character."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of ids, not a str: {values!r}")
    return list(values)


def recommend_request(context_items: Sequence[str] = (), *, user_id: str = "", k: int = 10,
                      exclude_items: Sequence[str] = (), exclude_seen: bool = False,
                      allowed_items: Sequence[str] | None = None,
                      categories: Sequence[str] = ()) -> recommend_pb2.RecommendItemsRequest:
    """A RecommendItemsRequest; ``allowed_items`` None and ``[]`` are both sent as an empty list."""
    return recommend_pb2.RecommendItemsRequest(
        user_id=user_id, context_items=_strings("context_items", context_items), k=k,
        exclude_items=_strings("exclude_items", exclude_items), exclude_seen=exclude_seen,
        allowed_items=_strings("allowed_items", allowed_items or ()),
        categories=_strings("categories", categories))


class CovisitClient:
    """A typed client for the covisit.v1 Recommend, Feedback and Admin services.

    ``target`` is "host:port". The channel is plaintext unless ``root_certificates`` (PEM) is
    given; with ``private_key`` and ``certificate_chain`` as well, it is mutual TLS. ``timeout``
    is the default deadline in seconds of every call; each method takes ``timeout=`` to override
    it. ``admin_token`` is sent as "authorization: Bearer <token>" on admin calls only (over a
    plaintext channel it travels in the clear). ``options`` are extra gRPC channel options;
    ``interceptors`` (unary-unary client interceptors) see every call.

    Use it as a context manager, or call ``close()``. Failed calls raise ``grpc.RpcError``.
    """

    def __init__(self, target: str, *, timeout: float = 1.0, admin_token: str | None = None,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, options: Sequence[tuple[str, Any]] = (),
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()):
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain")
        if private_key is not None and root_certificates is None:
            raise ValueError("private_key and certificate_chain need root_certificates (TLS)")
        opts = channel_options(options)
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, creds, options=opts)
        # e.g. a load tester's reporter; closing the client closes the channel under them
        channel = grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        self._timeout = timeout
        self._admin_metadata = admin_metadata(admin_token)
        self._recommend = recommend_pb2_grpc.RecommendServiceStub(channel)
        self._feedback = feedback_pb2_grpc.FeedbackServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)

    @classmethod
    def for_replicas(cls, addresses: Sequence[str], **kwargs) -> CovisitClient:
        """A client that spreads its calls over replicas round robin, one connection to each
        ("ip:port" each; a replica that goes away gets no calls until it is back). Other keyword
        arguments are the constructor's."""
        if not addresses or isinstance(addresses, str):
            raise ValueError("addresses must be a non-empty sequence of 'ip:port'")
        scheme = "ipv6" if any(a.startswith("[") for a in addresses) else "ipv4"
        options = [("grpc.lb_policy_name", "round_robin"), *kwargs.pop("options", ())]
        return cls(f"{scheme}:{','.join(addresses)}", options=options, **kwargs)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> CovisitClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, stub_method, request, timeout: float | None, admin: bool = False):
        """Call one stub method with the deadline (the client's default if ``timeout`` is None)."""
        return stub_method(request, timeout=self._timeout if timeout is None else timeout,
                           metadata=self._admin_metadata if admin else ())

    # RecommendService

    def recommend_items(self, context_items: Sequence[str] = (), *, user_id: str = "", k: int = 10,
                        exclude_items: Sequence[str] = (), exclude_seen: bool = False,
                        allowed_items: Sequence[str] | None = None, categories: Sequence[str] = (),
                        timeout: float | None = None) -> Recommendations:
        """Top-k items for ``context_items`` (newest last), or for ``user_id``'s recent history.

        ``allowed_items``: None means no allow-list. An empty list is sent the same way, and the
        server treats an empty allow-list as none at all (it does not mean "allow nothing").
        """
        request = recommend_request(context_items, user_id=user_id, k=k, exclude_items=exclude_items,
                                    exclude_seen=exclude_seen, allowed_items=allowed_items,
                                    categories=categories)
        return Recommendations.from_proto(self._call(self._recommend.RecommendItems, request, timeout))

    def get_similar_items(self, item_id: str, *, k: int = 10, timeout: float | None = None) -> SimilarItems:
        """The ``k`` items most often visited with ``item_id``."""
        request = recommend_pb2.GetSimilarItemsRequest(item_id=item_id, k=k)
        return SimilarItems.from_proto(self._call(self._recommend.GetSimilarItems, request, timeout))

    def batch_recommend_items(self, requests: Sequence[Mapping[str, Any]], *,
                              timeout: float | None = None) -> list[Recommendations]:
        """Many recommendations in one call, in order; each request is a dict of
        ``recommend_items`` keyword arguments, e.g. ``{"context_items": ["a"], "k": 5}``."""
        request = recommend_pb2.BatchRecommendItemsRequest(
            requests=[recommend_request(**r) for r in requests])
        response = self._call(self._recommend.BatchRecommendItems, request, timeout)
        return [Recommendations.from_proto(r) for r in response.responses]

    # FeedbackService

    def record_events(self, events: Sequence[Event], *, timeout: float | None = None) -> int:
        """Record a batch of events (all or, on the first bad one, none); returns how many."""
        request = feedback_pb2.RecordEventsRequest(events=[e.to_proto() for e in events])
        return self._call(self._feedback.RecordEvents, request, timeout).accepted

    def stream_events(self, batches: Iterable[Sequence[Event]], *, timeout: float | None = None) -> int:
        """Send event batches on one client stream; returns how many events the server accepted.

        ``batches`` is consumed lazily. The deadline covers the whole stream, so pass a
        ``timeout`` long enough for all of it.
        """
        requests = (feedback_pb2.StreamEventsRequest(events=[e.to_proto() for e in b]) for b in batches)
        return self._call(self._feedback.StreamEvents, requests, timeout).accepted

    def record_impressions(self, request_id: str, item_ids: Sequence[str], *, user_id: str = "",
                           timeout: float | None = None) -> int:
        """Record that the items of response ``request_id`` were shown; returns how many were recorded."""
        request = feedback_pb2.RecordImpressionsRequest(request_id=request_id, user_id=user_id,
                                                        item_ids=_strings("item_ids", item_ids))
        return self._call(self._feedback.RecordImpressions, request, timeout).recorded

    def record_clicks(self, request_id: str, item_id: str, *, user_id: str = "",
                      timeout: float | None = None) -> None:
        """Record a click on ``item_id`` from response ``request_id``."""
        request = feedback_pb2.RecordClicksRequest(request_id=request_id, user_id=user_id, item_id=item_id)
        self._call(self._feedback.RecordClicks, request, timeout)

    # AdminService (every call sends the admin token)

    def get_status(self, *, counts_digest: bool = False, timeout: float | None = None) -> Status:
        """The serving model and the server's state; `counts_digest` also hashes the model's
        exact counts (slow on large models)."""
        request = admin_pb2.GetStatusRequest(counts_digest=counts_digest)
        return Status.from_proto(self._call(self._admin.GetStatus, request, timeout, admin=True))

    def list_model_versions(self, *, timeout: float | None = None) -> list[ModelVersion]:
        """Every model version the server knows, newest first."""
        request = admin_pb2.ListModelVersionsRequest()
        response = self._call(self._admin.ListModelVersions, request, timeout, admin=True)
        return [ModelVersion.from_proto(v) for v in response.versions]

    def get_model_version(self, version: str, *, timeout: float | None = None) -> ModelVersion:
        """One model version (NOT_FOUND if the server does not know it)."""
        request = admin_pb2.GetModelVersionRequest(version=version)
        response = self._call(self._admin.GetModelVersion, request, timeout, admin=True)
        return ModelVersion.from_proto(response.version)

    def rollback_model(self, version: str, *, timeout: float | None = None) -> Rollback:
        """Serve the kept ``version`` again and pin it: new events are logged, not learned, until
        ``resume_learning()``."""
        request = admin_pb2.RollbackModelRequest(version=version)
        return Rollback.from_proto(self._call(self._admin.RollbackModel, request, timeout, admin=True))

    def resume_learning(self, *, timeout: float = 60.0) -> Resume:
        """Unpin: learn the events logged since the pin and serve the result (60 s deadline)."""
        request = admin_pb2.ResumeLearningRequest()
        return Resume.from_proto(self._call(self._admin.ResumeLearning, request, timeout, admin=True))

    def rebuild_model(self, *, timeout: float = 60.0) -> Rebuild:
        """Re-prune the whole model into a new version, which serves once the quality gate passes
        it (``Rebuild.state`` says where it stands; slow: 60 s deadline)."""
        request = admin_pb2.RebuildModelRequest()
        return Rebuild.from_proto(self._call(self._admin.RebuildModel, request, timeout, admin=True))

    def promote_model(self, version: str, *, timeout: float | None = None) -> Promotion:
        """Serve the kept ``version`` (a candidate, an A/B arm) to everyone, skipping the gate."""
        request = admin_pb2.PromoteModelRequest(version=version)
        return Promotion.from_proto(self._call(self._admin.PromoteModel, request, timeout, admin=True))

    def start_shadow(self, version: str, sample_rate: float = 0.1, *, timeout: float | None = None) -> None:
        """Score the kept ``version`` beside the serving one on ``sample_rate`` of requests, in
        (0, 1], off the response path; its figures are in ``get_metrics().shadow``."""
        request = admin_pb2.StartShadowRequest(version=version, sample_rate=sample_rate)
        self._call(self._admin.StartShadow, request, timeout, admin=True)

    def stop_shadow(self, *, timeout: float | None = None) -> None:
        """Stop the shadow version."""
        self._call(self._admin.StopShadow, admin_pb2.StopShadowRequest(), timeout, admin=True)

    def start_ab_test(self, version: str, fraction: float = 0.1, *, timeout: float | None = None) -> None:
        """Serve the kept ``version`` to a stable ``fraction`` of users, in (0, 1), chosen by a
        hash of user_id; the rest get the serving version."""
        request = admin_pb2.StartABTestRequest(version=version, fraction=fraction)
        self._call(self._admin.StartABTest, request, timeout, admin=True)

    def stop_ab_test(self, *, timeout: float | None = None) -> None:
        """End the A/B test: every user gets the serving version again."""
        self._call(self._admin.StopABTest, admin_pb2.StopABTestRequest(), timeout, admin=True)

    def get_metrics(self, *, timeout: float | None = None) -> Metrics:
        """The numbers the server's monitor keeps."""
        request = admin_pb2.GetMetricsRequest()
        return Metrics.from_proto(self._call(self._admin.GetMetrics, request, timeout, admin=True))

    def upsert_items(self, items: Sequence[Item], *, timeout: float | None = None) -> int:
        """Add or replace catalog items; returns how many were written."""
        request = admin_pb2.UpsertItemsRequest(items=[i.to_proto() for i in items])
        return self._call(self._admin.UpsertItems, request, timeout, admin=True).upserted

    def delete_items(self, item_ids: Sequence[str], *, timeout: float | None = None) -> int:
        """Remove catalog items; returns how many of them existed."""
        request = admin_pb2.DeleteItemsRequest(item_ids=_strings("item_ids", item_ids))
        return self._call(self._admin.DeleteItems, request, timeout, admin=True).deleted
