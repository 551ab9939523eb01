"""The `covisit` remote subcommands (recommend --target, record, admin) against the real server."""

import csv

import pytest

from covisit.client import CovisitClient
from covisit.server.cli import main
from covisit.server.config import ADMIN_TOKEN_ENV
from tests.server.serving import NOW, TOKEN, eventually, fields, run, start
from tests.server.test_tls import mtls_server, pki  # noqa: F401 (fixtures)


@pytest.fixture
def target(tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    server, port = start(tmp_path)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_recommend_asks_the_server(target, capsys):
    code, lines, err = run(capsys, "recommend", "--target", target, "--item", "a", "--item", "b", "-k", "3")
    assert code == 0
    rows = [line.split("\t") for line in lines]
    assert [r[0] for r in rows[:2]] == ["c", "d"] and rows[0][2] == "COOCCURRENCE"
    assert float(rows[0][1]) > 0
    version, request_id = err.split()
    assert version == "model_version=1" and request_id.startswith("request_id=") and len(request_id) > 11


def test_record_sends_the_file_in_batches(target, tmp_path, capsys):
    path = tmp_path / "new.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "event_type", "timestamp", "session_id"])
        w.writerow(["r1", "y", "like", NOW, "r1"])  # line 2: an unknown event type
        for n in range(5):
            w.writerow([f"r{n}", "y" if n % 2 else "z", "view", NOW - 10 + n, ""])
    with CovisitClient(target, admin_token=TOKEN) as client:
        before = client.get_status().events
        code, lines, err = run(capsys, "record", "--target", target, "--file", str(path), "--batch", "2")
        assert code == 0 and lines == ["accepted 5 of 5 events"]
        assert "1 bad rows left out (lines 2)" in err
        assert client.get_status().log_events == before + 5  # durable at once
        eventually(lambda: client.get_status().events == before + 5)  # learned soon after


def test_admin_subcommands(target, capsys):
    code, lines, _ = run(capsys, "admin", "status", "--target", target)  # token from the environment
    status = fields(lines)
    assert code == 0 and status["model_version"] == "1" and status["events"] == str(60 * 4 + 20 + 100)
    assert "config.server.admin_token" in status
    with CovisitClient(target) as client:
        client.recommend_items(["a"])
    assert fields(run(capsys, "admin", "metrics", "--target", target)[1])["recommend_requests"] == "1"
    rebuilt = fields(run(capsys, "admin", "rebuild", "--target", target)[1])
    assert (rebuilt["model_version"], rebuilt["state"]) == ("2", "CANDIDATE")
    code, lines, _ = run(capsys, "admin", "versions", "--target", target)
    assert [line.split()[:2] for line in lines] == [["2", "CANDIDATE"], ["1", "SERVING"]]
    assert run(capsys, "admin", "promote", "2", "--target", target)[0] == 0
    code, lines, _ = run(capsys, "admin", "versions", "--target", target)
    assert [line.split()[:2] for line in lines] == [["2", "SERVING"], ["1", "AVAILABLE"]]
    assert lines[1].split()[2].endswith("Z") and lines[1].split()[3:] == [status["items"], status["links"]]
    code, lines, _ = run(capsys, "admin", "rollback", "1", "--target", target, "--token", TOKEN)
    assert code == 0 and fields(lines) == {"serving_version": "1", "previous_version": "2"}


@pytest.mark.parametrize("argv, message", [
    (["admin", "status", "--token", "guess"], "covisit admin status: PERMISSION_DENIED: "),
    (["admin", "rollback", "99"], "covisit admin rollback: NOT_FOUND: "),
    (["recommend", "--item", "a", "-k", "5000"], "covisit recommend: INVALID_ARGUMENT: k: "),
])
def test_grpc_errors_exit_2_with_the_code_and_details(target, capsys, argv, message):
    code, lines, err = run(capsys, *argv, "--target", target)
    assert code == 2 and not lines
    assert err.startswith(message), err


def test_admin_without_a_token_is_unauthenticated(target, capsys, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    code, _, err = run(capsys, "admin", "versions", "--target", target)
    assert code == 2 and "UNAUTHENTICATED" in err


def test_mutual_tls_options(mtls_server, pki, capsys):  # noqa: F811 (fixtures)
    target = f"localhost:{mtls_server}"
    tls = ["--tls-ca", pki.path("ca.pem"), "--tls-cert", pki.path("client.pem"), "--tls-key", pki.path("client.key")]
    code, lines, _ = run(capsys, "recommend", "--target", target, "--item", "b", "-k", "1", *tls)
    assert code == 0 and lines[0].startswith("c\t")
    code, _, err = run(capsys, "recommend", "--target", target, "--item", "b", "--tls-ca", pki.path("ca.pem"))
    assert code == 2 and "UNAVAILABLE" in err  # no client certificate


@pytest.mark.parametrize("argv, message", [
    (["recommend", "--item", "a"], "one of the arguments --model --target is required"),
    (["recommend", "--model", "m", "--target", "h:1", "--item", "a"], "not allowed with argument"),
    (["recommend", "--model", "m", "--user", "u"], "--model needs --item"),
    (["record", "--target", "h:1", "--file", "x.csv", "--batch", "0"], "--batch must be at least 1"),
    (["admin", "status", "--target", "h:1", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["admin", "status", "--target", "h:1", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "need --tls-ca"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code != 0
    assert message in str(info.value.code) + capsys.readouterr().err
