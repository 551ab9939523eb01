"""Random and malformed requests at every RPC of the real server, through the raw covisit.v1 stubs.

Every call must end OK or with a status a client can act on (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAVAILABLE), never INTERNAL or UNKNOWN. A rejected
write must leave the model as it was: events are tallied from OK answers only (and, for a
stream refused part-way, from the batches it says it accepted before the bad one), and at the
end the model reflects exactly the startup events plus that tally. One server serves the whole
module; the tests run in file order and the last one checks the totals.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covisit.v1 import (admin_pb2, admin_pb2_grpc, feedback_pb2, feedback_pb2_grpc, recommend_pb2,
                        recommend_pb2_grpc)
from tests.server.serving import NOW, TOKEN, start

ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
AUTH = (("authorization", f"Bearer {TOKEN}"),)
DEFAULT_K, MAX_K = 10, 1000


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


# ---- the server and the bookkeeping -----------------------------------------------------------

@dataclass
class Fuzz:
    channel: grpc.Channel
    recommend: recommend_pb2_grpc.RecommendServiceStub
    feedback: feedback_pb2_grpc.FeedbackServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    events_before: int = 0
    accepted_before: int = 0
    tally: int = 0  # events the server said it accepted
    request_ids: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # keeps hypothesis' failure reports short
        return f"Fuzz(tally={self.tally}, codes={self.codes})"

    def call(self, method, request, admin: bool = False):
        """(response, None) or (None, code); fails on a status outside ACCEPTABLE."""
        name = method._method.decode() if hasattr(method, "_method") else repr(method)
        try:
            response = method(request, timeout=60, metadata=AUTH if admin else ())
        except grpc.RpcError as exc:
            code = exc.code()
            self.codes[code.name] = self.codes.get(code.name, 0) + 1
            assert code in ACCEPTABLE, f"{name} answered {code.name}: {exc.details()!r}"
            return None, exc
        self.codes["OK"] = self.codes.get("OK", 0) + 1
        return response, None

    def status(self) -> admin_pb2.GetStatusResponse:
        return self.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=30, metadata=AUTH)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    server, port = start(tmp_path_factory.mktemp("fuzz"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
    f = Fuzz(channel, recommend_pb2_grpc.RecommendServiceStub(channel),
             feedback_pb2_grpc.FeedbackServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel))
    f.events_before = f.status().events
    f.accepted_before = f.admin.GetMetrics(admin_pb2.GetMetricsRequest(), timeout=30, metadata=AUTH).events_accepted
    yield f
    print(f"\nfuzz status codes: {f.codes}; events accepted: {f.tally}")
    channel.close()
    server.stop(0)


# ---- strategies ------------------------------------------------------------------------------

KNOWN = ["a", "b", "c", "d", "e", "x", "never-seen"]
EVENT_TYPES = ["view", "click", "add_to_cart", "purchase"]
CHARS = st.characters(exclude_categories=("Cs",))  # protobuf strings cannot carry lone surrogates


def repeated(element, lo: int, hi: int):
    """`element` repeated lo..hi times: long inputs without drawing every item."""
    return st.tuples(element, st.integers(lo, hi)).map(lambda t: t[0] * t[1])


short_text = st.text(CHARS, min_size=1, max_size=16)  # always a valid id (<= 64 bytes)
ids = st.one_of(
    st.sampled_from(KNOWN),
    short_text,
    st.text(CHARS, max_size=12),  # may be empty
    st.just(""),
    repeated(st.text(CHARS, min_size=1, max_size=3), 60, 140),  # around the 256-byte limit
    st.integers(257, 60_000).map(lambda n: "h" * n),  # too long, up to huge
)
id_lists = st.one_of(
    st.lists(st.sampled_from(KNOWN), max_size=6),
    st.lists(ids, max_size=8),
    repeated(st.lists(st.sampled_from(KNOWN), min_size=1, max_size=1), 90, 130),  # around max_context_items
)
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-3, 20),
                   st.sampled_from([0, 1, MAX_K, MAX_K + 1, 2**31 - 1, -(2**31)]))
timestamps = st.one_of(
    st.floats(NOW - 30 * 86400, NOW + 3600),  # valid
    st.floats(),  # anything, NaN and infinities included
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 946684799.0, 946684800.0,
                     NOW + 86400 * 1.01, 1e308, -1e308]),
)
event_types = st.one_of(st.sampled_from(EVENT_TYPES), st.text(CHARS, max_size=12),
                        st.sampled_from(["View", "purchase ", "", "like", "view\x00"]))
versions = st.one_of(
    st.integers(-2, 40).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.text(CHARS, max_size=12),
    st.sampled_from(["", " 1 ", "+2", "0x1", "1_0", "\u0663", "1e3", "1.0", "NaN", "-0", "9" * 5000]),
)


def event(user_id: str, item_id: str, event_type: str, timestamp: float, session_id) -> feedback_pb2.Event:
    kwargs = {} if session_id is None else {"session_id": session_id}
    return feedback_pb2.Event(user_id=user_id, item_id=item_id, event_type=event_type, timestamp=timestamp,
                              **kwargs)


valid_events = st.builds(event, st.one_of(st.sampled_from(["fz1", "fz2", "u1"]), short_text),
                         st.one_of(st.sampled_from(KNOWN), short_text), st.sampled_from(EVENT_TYPES),
                         st.floats(NOW - 30 * 86400, NOW + 3600), st.one_of(st.none(), short_text))
any_events = st.builds(event, ids, ids, event_types, timestamps, st.one_of(st.none(), st.just(""), ids))


def _insert(t):
    good, bad, at = t
    return good[:at] + [bad] + good[at:]


def event_lists(big: bool):
    options = [
        st.lists(valid_events, min_size=1, max_size=12),
        st.lists(any_events, max_size=12),
        st.tuples(st.lists(valid_events, min_size=1, max_size=8), any_events, st.integers(0, 8)).map(_insert),
    ]
    if big:
        options.append(repeated(st.lists(valid_events, min_size=1, max_size=1), 9_995, 10_005))  # max per call
    return st.one_of(*options)


recommend_requests = st.builds(
    recommend_pb2.RecommendItemsRequest,
    user_id=st.one_of(st.just(""), st.sampled_from(["u1", "p3", "fz1", "nobody"]), ids),
    context_items=id_lists, k=int32s, exclude_items=id_lists, exclude_seen=st.booleans(),
    allowed_items=st.one_of(st.just([]), id_lists), categories=st.one_of(st.just([]), id_lists))

catalog_items = st.builds(admin_pb2.Item, item_id=ids, categories=st.lists(ids, max_size=4),
                          available=st.booleans(), tags=st.lists(ids, max_size=4))


# ---- RecommendService ------------------------------------------------------------------------

def _check_items(items, k: int, exclude=(), allowed=()) -> None:
    got = [i.item_id for i in items]
    assert len(got) <= (k or DEFAULT_K)
    assert len(set(got)) == len(got), f"duplicates in {got}"
    assert not set(got) & set(exclude), f"excluded items returned: {set(got) & set(exclude)}"
    if allowed:
        assert set(got) <= set(allowed), f"items outside allowed_items: {set(got) - set(allowed)}"


@fuzz_settings(25)
@given(request=recommend_requests)
def test_recommend_items(fuzz, request):
    response, _ = fuzz.call(fuzz.recommend.RecommendItems, request)
    if response is not None:
        _check_items(response.items, request.k, request.exclude_items, request.allowed_items)
        assert response.request_id and response.model_version
        if len(fuzz.request_ids) < 50:
            fuzz.request_ids.append(response.request_id)


@fuzz_settings(10)
@given(item_id=ids, k=int32s)
def test_get_similar_items(fuzz, item_id, k):
    response, _ = fuzz.call(fuzz.recommend.GetSimilarItems, recommend_pb2.GetSimilarItemsRequest(item_id=item_id, k=k))
    if response is not None:
        _check_items(response.items, k, exclude=[item_id])


@fuzz_settings(10)
@given(requests=st.one_of(st.lists(recommend_requests, max_size=4),
                          repeated(st.lists(recommend_requests, min_size=1, max_size=1), 98, 103)))
def test_batch_recommend_items(fuzz, requests):
    response, _ = fuzz.call(fuzz.recommend.BatchRecommendItems,
                            recommend_pb2.BatchRecommendItemsRequest(requests=requests))
    if response is not None:
        assert len(response.responses) == len(requests)
        for one, request in zip(response.responses, requests):
            _check_items(one.items, request.k, request.exclude_items, request.allowed_items)


# ---- FeedbackService -------------------------------------------------------------------------

def _unchanged_unless_ok(fuzz: Fuzz, response, before: admin_pb2.GetStatusResponse) -> None:
    if response is None:  # the model learns from the log, so an unchanged log is the check
        assert fuzz.status().log_events == before.log_events, "a rejected write reached the event log"


@fuzz_settings(25)
@given(events=event_lists(big=True))
def test_record_events(fuzz, events):
    before = fuzz.status()
    response, _ = fuzz.call(fuzz.feedback.RecordEvents, feedback_pb2.RecordEventsRequest(events=events))
    if response is not None:
        assert response.accepted == len(events)
        fuzz.tally += response.accepted
    _unchanged_unless_ok(fuzz, response, before)


STREAM_REFUSED = re.compile(r"^batch\[(\d+)\]\..*\((\d+) events before it were accepted\)$", re.S)


@fuzz_settings(20)
@given(batches=st.lists(st.one_of(event_lists(big=False), st.just([])), max_size=4))
def test_stream_events(fuzz, batches):
    before = fuzz.status()
    requests = [feedback_pb2.StreamEventsRequest(events=b) for b in batches]
    response, error = fuzz.call(fuzz.feedback.StreamEvents, iter(requests))
    if response is not None:
        assert response.accepted == sum(map(len, batches))
        fuzz.tally += response.accepted
        return
    # refused part-way: the batches before the bad one count, and the message says how many
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    match = STREAM_REFUSED.match(error.details())
    assert match, f"a refused stream should say how far it got: {error.details()!r}"
    bad, accepted = int(match[1]), int(match[2])
    assert accepted == sum(map(len, batches[:bad])), (bad, accepted, [len(b) for b in batches])
    fuzz.tally += accepted
    if accepted == 0:
        _unchanged_unless_ok(fuzz, None, before)


def _request_id(data, fuzz: Fuzz) -> str:
    if fuzz.request_ids and data.draw(st.booleans(), label="a real request id"):
        return data.draw(st.sampled_from(fuzz.request_ids), label="request_id")
    return data.draw(st.one_of(ids, st.text("0123456789abcdef", min_size=32, max_size=32)), label="request_id")


@fuzz_settings(10)
@given(data=st.data(), user_id=st.one_of(st.just(""), ids), item_ids=id_lists)
def test_record_impressions(fuzz, data, user_id, item_ids):
    request = feedback_pb2.RecordImpressionsRequest(request_id=_request_id(data, fuzz), user_id=user_id,
                                                    item_ids=item_ids)
    response, _ = fuzz.call(fuzz.feedback.RecordImpressions, request)
    if response is not None:
        assert response.recorded == len(item_ids)


@fuzz_settings(10)
@given(data=st.data(), user_id=st.one_of(st.just(""), ids), item_id=ids)
def test_record_clicks(fuzz, data, user_id, item_id):
    request = feedback_pb2.RecordClicksRequest(request_id=_request_id(data, fuzz), user_id=user_id, item_id=item_id)
    fuzz.call(fuzz.feedback.RecordClicks, request)


# ---- AdminService ----------------------------------------------------------------------------

@fuzz_settings(5)
@given(rpc=st.sampled_from(["GetStatus", "ListModelVersions", "GetMetrics"]))
def test_admin_reports(fuzz, rpc):
    request = getattr(admin_pb2, f"{rpc}Request")()
    response, _ = fuzz.call(getattr(fuzz.admin, rpc), request, admin=True)
    assert response is not None, f"{rpc} refused"
    if rpc == "ListModelVersions":
        numbers = [int(v.version) for v in response.versions]
        assert numbers == sorted(numbers, reverse=True), f"not newest first: {numbers}"
        serving = [v.version for v in response.versions if v.state == admin_pb2.ModelVersion.SERVING]
        assert serving == [fuzz.status().model_version]


@fuzz_settings(10)
@given(version=versions)
def test_get_model_version(fuzz, version):
    response, error = fuzz.call(fuzz.admin.GetModelVersion, admin_pb2.GetModelVersionRequest(version=version),
                                admin=True)
    if response is not None:
        assert response.version.version == str(int(version))
    else:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.code()


@fuzz_settings(10)
@given(version=versions)
def test_rollback_model(fuzz, version):
    # rollbacks change the serving version legitimately and pin it; the event totals are
    # checked at the end, after ResumeLearning has learned the whole log again
    response, error = fuzz.call(fuzz.admin.RollbackModel, admin_pb2.RollbackModelRequest(version=version),
                                admin=True)
    if response is not None:
        assert response.serving_version == str(int(version)) == fuzz.status().model_version
    else:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.code()


@fuzz_settings(3)
@given(st.just(None))
def test_rebuild_model(fuzz, _):
    before = fuzz.status()
    response, error = fuzz.call(fuzz.admin.RebuildModel, admin_pb2.RebuildModelRequest(), admin=True)
    if before.pinned_version:  # a fuzzed rollback pinned the model
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "pinned" in error.details()
        return
    assert int(response.model_version) > int(before.model_version)
    assert response.state == admin_pb2.ModelVersion.CANDIDATE  # serves once the gate has scored it


@fuzz_settings(20)
@given(items=st.one_of(st.lists(catalog_items, max_size=6),
                       repeated(st.lists(catalog_items, min_size=1, max_size=1), 100, 300)))
def test_upsert_items(fuzz, items):
    response, _ = fuzz.call(fuzz.admin.UpsertItems, admin_pb2.UpsertItemsRequest(items=items), admin=True)
    if response is not None:
        assert response.upserted == len({i.item_id for i in items})


@fuzz_settings(10)
@given(item_ids=id_lists)
def test_delete_items(fuzz, item_ids):
    response, _ = fuzz.call(fuzz.admin.DeleteItems, admin_pb2.DeleteItemsRequest(item_ids=item_ids), admin=True)
    if response is not None:
        assert response.deleted <= len(set(item_ids))


# ---- bytes that are not the request message --------------------------------------------------

METHODS = {
    "/covisit.v1.RecommendService/RecommendItems": recommend_pb2.RecommendItemsRequest(context_items=["a"]),
    "/covisit.v1.RecommendService/GetSimilarItems": recommend_pb2.GetSimilarItemsRequest(item_id="a"),
    "/covisit.v1.RecommendService/BatchRecommendItems": recommend_pb2.BatchRecommendItemsRequest(
        requests=[recommend_pb2.RecommendItemsRequest(context_items=["a"])]),
    "/covisit.v1.FeedbackService/RecordImpressions": feedback_pb2.RecordImpressionsRequest(request_id="nope"),
    "/covisit.v1.FeedbackService/RecordClicks": feedback_pb2.RecordClicksRequest(request_id="nope", item_id="a"),
    "/covisit.v1.AdminService/GetStatus": admin_pb2.GetStatusRequest(),
    "/covisit.v1.AdminService/GetModelVersion": admin_pb2.GetModelVersionRequest(version="1"),
    "/covisit.v1.AdminService/DeleteItems": admin_pb2.DeleteItemsRequest(),
}
UNKNOWN_FIELDS = b"\xa0\x3e\x05" + b"\xaa\x3e\x03xyz"  # field 999 varint 5, field 997 bytes "xyz"


def _raw(channel, method: str, payload: bytes):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    metadata = AUTH if "AdminService" in method else ()
    try:
        call(payload, timeout=30, metadata=metadata)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def test_unknown_fields_are_ignored(fuzz):
    for method, request in METHODS.items():
        plain = _raw(fuzz.channel, method, request.SerializeToString())
        extended = _raw(fuzz.channel, method, request.SerializeToString() + UNKNOWN_FIELDS)
        assert extended[0] == plain[0], (method, plain, extended)


def test_undecodable_requests_are_refused_as_invalid_argument(fuzz):
    """Bytes that do not decode as the request (bad UTF-8 in a string field, truncation, junk)."""
    payloads = {"invalid UTF-8 in field 1": b"\x0a\x02\xff\xfe", "truncated": b"\x0a\x05ab",
                "junk": b"\xff\xff\xff\xff"}
    failures = []
    for method in [*METHODS, "/covisit.v1.FeedbackService/RecordEvents", "/covisit.v1.AdminService/UpsertItems"]:
        for what, payload in payloads.items():
            code, details = _raw(fuzz.channel, method, payload)
            if code != grpc.StatusCode.OK and code not in ACCEPTABLE:
                failures.append(f"{method} with {what} {payload!r}: {code.name} {details!r}")
    assert not failures, "\n".join(failures)


# ---- after all of it (keep this test last) ---------------------------------------------------

def test_after_the_fuzz_the_server_serves_and_reflects_only_accepted_events(fuzz):
    metrics = fuzz.admin.GetMetrics(admin_pb2.GetMetricsRequest(), timeout=30, metadata=AUTH)
    assert metrics.events_accepted - fuzz.accepted_before == fuzz.tally
    # rollbacks may have pinned an older version: resuming learns the whole log again
    if fuzz.status().pinned_version:
        fuzz.admin.ResumeLearning(admin_pb2.ResumeLearningRequest(), timeout=60, metadata=AUTH)
    deadline = time.monotonic() + 30
    while (status := fuzz.status()).events != fuzz.events_before + fuzz.tally:
        assert time.monotonic() < deadline, (status, fuzz.events_before + fuzz.tally)
        time.sleep(0.05)
    assert status.log_events == status.events
    # the catalog may have hidden the known items: bring them back, then ask normally
    fuzz.admin.UpsertItems(admin_pb2.UpsertItemsRequest(items=[admin_pb2.Item(item_id=i, available=True)
                                                               for i in "abcdex"]), timeout=30, metadata=AUTH)
    rec = fuzz.recommend.RecommendItems(recommend_pb2.RecommendItemsRequest(context_items=["a", "b"], k=3),
                                        timeout=30)
    assert rec.items and rec.model_version == status.model_version
    health = health_pb2_grpc.HealthStub(fuzz.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
