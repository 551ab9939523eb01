"""The learning admin RPCs (pin and resume, promote, shadow, A/B) against the real server on a
loopback port, through the real client and the `covisit admin` command.

The server learns in the background: a recorded event reaches the serving model within
`learning.max_delay_seconds` (0.1 s here), so tests poll with a bounded deadline.
"""

import time

import grpc
import pytest

from covisit.client import CovisitClient, Event, Experiment, Promotion, Rollback
from covisit.server.cli import main
from covisit.server.config import ADMIN_TOKEN_ENV
from tests.server.serving import NOW, TOKEN, fields, run, start

START_EVENTS = 60 * 4 + 20 + 100  # what tests.server.serving.write_events writes
LEARN_DELAY = 0.1  # learning.max_delay_seconds of these servers
DEADLINE = 20.0  # seconds any background change may take before a test fails


@pytest.fixture
def served(tmp_path):
    server, port = start(tmp_path, **{"learning.max_delay_seconds": LEARN_DELAY})
    client = CovisitClient(f"127.0.0.1:{port}", timeout=10, admin_token=TOKEN)
    yield client, f"127.0.0.1:{port}"
    client.close()
    server.stop(0)


def wait_until(check, what: str, timeout: float = DEADLINE):
    """Call `check` until it returns something true, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"still not {what} after {timeout:.0f}s"
        time.sleep(0.05)
    return value


def sessions(items: str, users: str, t: float = NOW - 100) -> list[Event]:
    """One session per user, walking `items` in order."""
    return [Event(u, item, "view", t + n, f"{u}-s") for u in users.split() for n, item in enumerate(items)]


def learn(client: CovisitClient, events: list[Event]) -> str:
    """Record `events` and wait until the serving model reflects them; the new serving version."""
    before = client.get_status().events
    client.record_events(events)
    status = wait_until(lambda: (s := client.get_status()).events >= before + len(events) and s,
                        f"learned {len(events)} events")
    return status.model_version


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_rollback_pins_until_resume_learns_what_waited(served):
    client, _ = served
    status = client.get_status()
    assert (status.model_version, status.pinned_version, status.learning) == ("1", "", "learning")
    assert status.log_events == START_EVENTS and status.events_pending == 0
    learned = learn(client, sessions("ab", "v1 v2"))
    assert int(learned) > 1

    assert client.rollback_model("1") == Rollback("1", learned)
    status = client.get_status()
    assert (status.model_version, status.pinned_version, status.learning) == ("1", "1", "pinned")
    assert client.get_model_version("1").state == "SERVING"
    assert "pinned" in client.get_model_version("1").reason

    # while pinned, events are logged but not learned
    waited = sessions("yz", "w1 w2 w3")
    assert client.record_events(waited) == 6
    status = client.get_status()
    assert status.log_events == START_EVENTS + 4 + 6 and status.events_pending >= 6
    time.sleep(5 * LEARN_DELAY)  # several learning delays: an unpinned server would have learned them
    assert client.get_status().model_version == "1"
    assert client.recommend_items(["y"], k=1).items[0].source == "POPULARITY"
    code, details = code_of(client.rebuild_model)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "pinned" in details

    resumed = client.resume_learning()
    assert int(resumed.serving_version) > int(learned) and resumed.events_applied == 6
    status = client.get_status()
    assert (status.model_version, status.pinned_version, status.learning) == (resumed.serving_version, "",
                                                                            "learning")
    assert status.events == status.log_events == START_EVENTS + 10 and status.events_pending == 0
    learned_y = client.recommend_items(["y"], k=1).items[0]
    assert (learned_y.item_id, learned_y.source) == ("z", "COOCCURRENCE")
    code, _ = code_of(client.resume_learning)
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # nothing is pinned
    assert int(learn(client, sessions("cd", "v3"))) > int(resumed.serving_version)  # learning again


def test_rebuild_waits_for_the_gate_and_promote_serves_it(served):
    client, _ = served
    rebuilt = client.rebuild_model()
    assert rebuilt.state == "CANDIDATE" and rebuilt.build_seconds >= 0
    candidate = client.get_model_version(rebuilt.model_version)
    assert (candidate.state, candidate.reason) == ("CANDIDATE", "waiting for the quality gate; built: requested")
    assert client.get_status().model_version == "1"

    assert client.promote_model(rebuilt.model_version) == Promotion(rebuilt.model_version, "1")
    assert client.get_status().model_version == rebuilt.model_version
    assert client.get_model_version(rebuilt.model_version).state == "SERVING"
    assert client.recommend_items(["a"]).model_version == rebuilt.model_version
    # the promoted line keeps learning
    assert int(learn(client, sessions("ab", "p1"))) > int(rebuilt.model_version)
    metrics = client.get_metrics()
    assert metrics.publishes >= 3 and metrics.auto_rollbacks == 0 and metrics.freshness_lag_seconds >= 0


def test_shadow_start_stop_and_its_figures(served):
    client, _ = served
    learn(client, sessions("ab", "s1"))
    assert client.get_status().shadow is None and client.get_metrics().shadow is None
    client.start_shadow("1", sample_rate=1.0)
    status = client.get_status()
    assert status.shadow == Experiment("1", 1.0, status.shadow.started_at)
    assert status.shadow.started_at == pytest.approx(time.time(), abs=60)
    assert client.get_model_version("1").state == "SHADOW"
    for item in "abcdx":  # five contexts, so that no answer comes from the cache
        client.recommend_items([item], k=3)
    shadow = wait_until(lambda: (m := client.get_metrics().shadow) and m.requests + m.dropped >= 5 and m,
                        "scored 5 requests in shadow")
    assert shadow.version == "1" and 0.0 <= shadow.mean_overlap <= 1.0
    assert client.get_status().model_version != "1"  # a shadow never answers

    client.start_shadow("1")  # sample_rate unset: 0.1
    assert client.get_status().shadow.fraction == pytest.approx(0.1)
    client.stop_shadow()
    assert client.get_status().shadow is None and client.get_metrics().shadow is None
    assert client.get_model_version("1").state == "AVAILABLE"


def test_ab_test_serves_a_stable_share_of_users(served):
    client, _ = served
    serving = learn(client, sessions("ab", "t1"))
    client.start_ab_test("1", fraction=0.5)
    status = client.get_status()
    assert status.ab_test == Experiment("1", 0.5, status.ab_test.started_at) and status.shadow is None
    versions = {u: client.recommend_items(["a"], user_id=u).model_version for u in (f"user{n}" for n in range(40))}
    assert set(versions.values()) == {"1", serving}
    assert all(client.recommend_items(["a"], user_id=u).model_version == v for u, v in versions.items())  # stable
    client.start_ab_test("1")  # fraction unset: 0.1
    assert client.get_status().ab_test.fraction == pytest.approx(0.1)
    client.stop_ab_test()
    assert client.get_status().ab_test is None
    assert {client.recommend_items(["a"], user_id=u).model_version for u in versions} == {serving}


def test_promoting_the_ab_arm_ends_the_test(served):
    client, _ = served
    serving = learn(client, sessions("ab", "t1"))
    client.start_ab_test("1", fraction=0.5)
    assert client.promote_model("1") == Promotion("1", serving)
    status = client.get_status()
    assert status.model_version == "1" and status.ab_test is None


def test_bad_versions_fractions_and_states(served):
    client, _ = served
    for call in (lambda: client.promote_model("abc"), lambda: client.start_shadow("1.5"),
                 lambda: client.start_ab_test("v1"), lambda: client.rollback_model("")):
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("version:"), details
    for call in (lambda: client.promote_model("99"), lambda: client.start_shadow("99"),
                 lambda: client.start_ab_test("99"), lambda: client.rollback_model("99")):
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "99" in details, details
    for fraction in (1.0, 1.5, -0.25):
        code, details = code_of(lambda: client.start_ab_test("1", fraction=fraction))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("fraction:"), details
    for rate in (1.5, -0.25):
        code, details = code_of(lambda: client.start_shadow("1", sample_rate=rate))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sample_rate:"), details
    # the serving version cannot be its own A/B arm or shadow
    assert code_of(lambda: client.start_ab_test("1"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: client.start_shadow("1"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    status = client.get_status()
    assert (status.ab_test, status.shadow, status.pinned_version, status.alerts) == (None, None, "", ())


# ---- `covisit admin` ---------------------------------------------------------------------------



def test_admin_learning_and_experiment_actions(served, capsys, monkeypatch):
    client, target = served
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    serving = learn(client, sessions("ab", "c1"))

    def admin(*argv):
        code, lines, err = run(capsys, "admin", *argv, "--target", target)
        assert code == 0, err
        return fields(lines)

    status = admin("status")
    assert (status["model_version"], status["pinned_version"], status["learning"]) == (serving, "", "learning")
    assert status["ab_test"] == status["shadow"] == status["alerts"] == ""
    assert int(status["log_events"]) == START_EVENTS + 2 and status["events_pending"] == "0"

    shadow = admin("shadow-start", "1", "--rate", "0.5")
    assert (shadow["version"], shadow["fraction"]) == ("1", "0.5") and float(shadow["started_at"]) > 0
    assert admin("status")["shadow.version"] == "1"
    assert admin("shadow-stop") == {} and client.get_status().shadow is None

    ab = admin("ab-start", "1")
    assert (ab["version"], ab["fraction"]) == ("1", "0.1")
    assert (admin("status")["ab_test.version"], client.get_status().ab_test.fraction) == ("1", 0.1)
    assert admin("ab-start", "1", "--fraction", "0.25")["fraction"] == "0.25"
    assert admin("ab-stop") == {} and client.get_status().ab_test is None

    assert admin("rollback", "1") == {"serving_version": "1", "previous_version": serving}
    assert (admin("status")["pinned_version"], admin("status")["learning"]) == ("1", "pinned")
    client.record_events(sessions("yz", "c2"))
    resumed = admin("resume")
    assert int(resumed["serving_version"]) > int(serving) and resumed["events_applied"] == "2"
    assert admin("status")["pinned_version"] == ""

    assert admin("promote", "1") == {"serving_version": "1", "previous_version": resumed["serving_version"]}
    metrics = admin("metrics")
    assert int(metrics["publishes"]) >= 3 and metrics["auto_rollbacks"] == "0" and metrics["shadow"] == ""


@pytest.mark.parametrize("argv, message", [
    (["promote", "abc"], "covisit admin promote: INVALID_ARGUMENT: version: "),
    (["promote", "99"], "covisit admin promote: NOT_FOUND: "),
    (["ab-start", "1", "--fraction", "2"], "covisit admin ab-start: INVALID_ARGUMENT: fraction: "),
    (["shadow-start", "1", "--rate", "1.5"], "covisit admin shadow-start: INVALID_ARGUMENT: sample_rate: "),
    (["shadow-start", "99"], "covisit admin shadow-start: NOT_FOUND: "),
    (["resume"], "covisit admin resume: FAILED_PRECONDITION: "),
])
def test_admin_action_errors_exit_2_with_the_code_and_details(served, capsys, monkeypatch, argv, message):
    _, target = served
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    code, lines, err = run(capsys, "admin", *argv, "--target", target)
    assert code == 2 and not lines
    assert err.startswith(message), err


@pytest.mark.parametrize("argv", [["promote"], ["shadow-start"], ["ab-start"], ["ab-start", "1", "--fraction", "x"]])
def test_admin_action_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["admin", *argv, "--target", "h:1"])
    assert info.value.code == 2
