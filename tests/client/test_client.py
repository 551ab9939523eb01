"""The client alone: what it imports, its channel options, deadlines, metadata, request building."""

import json
import subprocess
import sys

import grpc
import pytest

from covisit.client import CovisitClient
from covisit.client.client import admin_metadata, channel_options, recommend_request
from covisit.v1 import admin_pb2, feedback_pb2, recommend_pb2

FORBIDDEN = ("numpy", "numba", "covisit.core", "covisit.server")


def test_client_imports_no_numpy_numba_or_core():
    code = (
        "import sys, covisit.client\n"
        "client = covisit.client.CovisitClient('127.0.0.1:1', timeout=0.1)\n"
        "client.close()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'numba')\n"
        "                or m.startswith(('covisit.core', 'covisit.server')))\n"
        "assert 'covisit.client.client' in sys.modules and 'grpc' in sys.modules, 'client not imported'\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"covisit.client pulled in {result.stdout.strip()}"


def _service_config(options):
    return json.loads(dict(options)["grpc.service_config"])


def test_service_config_retries_only_unavailable_on_every_service():
    options = dict(channel_options())
    assert options["grpc.enable_retries"] == 1
    (method_config,) = _service_config(options)["methodConfig"]
    services = {f"covisit.v1.{name}" for module in (recommend_pb2, feedback_pb2, admin_pb2)
                for name in module.DESCRIPTOR.services_by_name}
    assert {n["service"] for n in method_config["name"]} == services
    assert all(set(n) == {"service"} for n in method_config["name"])  # whole services, every method
    policy = method_config["retryPolicy"]
    assert 3 <= policy["maxAttempts"] <= 5
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    for key in ("initialBackoff", "maxBackoff"):
        assert policy[key].endswith("s") and float(policy[key][:-1]) > 0
    assert policy["backoffMultiplier"] > 1


def test_caller_options_are_added_and_win_on_the_same_key():
    options = channel_options([("grpc.enable_retries", 0), ("grpc.max_receive_message_length", 1 << 20)])
    assert [k for k, _ in options].count("grpc.enable_retries") == 1
    assert dict(options)["grpc.enable_retries"] == 0
    assert dict(options)["grpc.max_receive_message_length"] == 1 << 20
    assert "retryPolicy" in _service_config(options)["methodConfig"][0]


@pytest.mark.parametrize("call", [
    lambda c: c.recommend_items(["i1"]),
    lambda c: c.record_events([]),
    lambda c: c.stream_events([[]]),
    lambda c: c.get_status(),
    lambda c: c.rebuild_model(timeout=0.2),
])
def test_a_call_to_a_dead_port_fails_within_the_deadline(call):
    # Nothing listens on 127.0.0.1:1: the call ends as an RpcError, never hangs.
    with CovisitClient("127.0.0.1:1", timeout=0.2, admin_token="t") as client:
        with pytest.raises(grpc.RpcError) as info:
            call(client)
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


def test_admin_metadata_is_a_bearer_token_or_nothing():
    assert admin_metadata("s3cret") == (("authorization", "Bearer s3cret"),)
    assert admin_metadata(None) == ()
    assert admin_metadata("") == ()


class _Recording:
    """Stands in for a stub method: remembers the keyword arguments of the last call."""

    def __init__(self, response):
        self.response, self.kwargs = response, None

    def __call__(self, request, **kwargs):
        self.kwargs = kwargs
        return self.response


def test_every_call_gets_the_default_deadline_or_its_own_and_admin_calls_the_token():
    client = CovisitClient("127.0.0.1:1", timeout=0.7, admin_token="s3cret")
    client._recommend.GetSimilarItems = similar = _Recording(recommend_pb2.GetSimilarItemsResponse())
    client._admin.GetStatus = status = _Recording(admin_pb2.GetStatusResponse())
    client._admin.RebuildModel = rebuild = _Recording(admin_pb2.RebuildModelResponse())
    client.get_similar_items("i1")
    assert similar.kwargs == {"timeout": 0.7, "metadata": ()}
    client.get_similar_items("i1", timeout=3.0)
    assert similar.kwargs == {"timeout": 3.0, "metadata": ()}
    client.get_status()
    assert status.kwargs == {"timeout": 0.7, "metadata": (("authorization", "Bearer s3cret"),)}
    client.rebuild_model()
    assert rebuild.kwargs["timeout"] == 60.0
    client.close()


def test_recommend_request_fields_and_an_empty_allow_list():
    request = recommend_request(["a", "b"], user_id="u1", k=5, exclude_items=["c"], exclude_seen=True,
                                allowed_items=["a"], categories=["shoes"])
    assert (request.user_id, list(request.context_items), request.k, list(request.exclude_items),
            request.exclude_seen, list(request.allowed_items), list(request.categories)) == (
        "u1", ["a", "b"], 5, ["c"], True, ["a"], ["shoes"])
    assert recommend_request().k == 10
    # The wire cannot tell "no allow-list" from an empty one: both are sent empty.
    assert recommend_request(allowed_items=None) == recommend_request(allowed_items=[]) == recommend_request()


@pytest.mark.parametrize("kwargs", [{"context_items": "abc"}, {"exclude_items": "abc"},
                                    {"allowed_items": "abc"}, {"categories": "abc"}])
def test_a_bare_string_for_a_list_of_ids_is_refused(kwargs):
    with pytest.raises(TypeError, match="not a str"):
        recommend_request(**kwargs)


def test_a_batch_request_with_an_unknown_key_is_refused_before_any_call():
    client = CovisitClient("127.0.0.1:1", timeout=0.1)
    client._recommend.BatchRecommendItems = batch = _Recording(recommend_pb2.BatchRecommendItemsResponse())
    with pytest.raises(TypeError):
        client.batch_recommend_items([{"context_items": ["a"], "kk": 5}])
    assert batch.kwargs is None
    client.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"root_certificates": b"ca", "private_key": b"key"}, "both"),
    ({"root_certificates": b"ca", "certificate_chain": b"chain"}, "both"),
    ({"private_key": b"key", "certificate_chain": b"chain"}, "root_certificates"),
])
def test_incomplete_tls_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CovisitClient("127.0.0.1:1", **kwargs)


def test_a_closed_client_refuses_calls():
    with CovisitClient("127.0.0.1:1", timeout=0.1) as client:
        pass
    with pytest.raises(ValueError):
        client.get_similar_items("i1")
