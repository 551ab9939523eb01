"""TLS and mutual TLS: the real server with generated certificates, called through CovisitClient.

The certificates (a CA, a server certificate for localhost / 127.0.0.1, a client certificate,
and a second, untrusted CA with its own client certificate) are made with the `openssl`
command line, since the `cryptography` package is not a dependency.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from covisit.client import CovisitClient
from covisit.server.config import ConfigError, load_config
from tests.server.serving import TOKEN, start

OPENSSL = shutil.which("openssl")
_SERIALS = itertools.count(1001)


def _openssl(*args: str, cwd: Path) -> None:
    if OPENSSL is None:
        pytest.fail("the TLS tests need the `openssl` command line to make certificates; install openssl")
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def _key_and_csr(name: str, subject: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)


def _ca(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)


def _signed(name: str, ca: str, subject: str, extensions: str, cwd: Path) -> None:
    _key_and_csr(name, subject, cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(next(_SERIALS)), "-days", "2", "-sha256",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd)


class Pki:
    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca("ca", d)
    _signed("server", "ca", "/CN=localhost",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n", d)
    client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    _signed("client", "ca", "/CN=covisit test client", client_ext, d)
    _ca("rogue-ca", d)  # nobody trusts this one
    _signed("rogue-client", "rogue-ca", "/CN=rogue client", client_ext, d)
    return Pki(d)


def _probe(pki: Pki, client_cert: bool = False) -> grpc.ChannelCredentials:
    if client_cert:
        return grpc.ssl_channel_credentials(pki.read("ca.pem"), pki.read("client.key"), pki.read("client.pem"))
    return grpc.ssl_channel_credentials(pki.read("ca.pem"))


def _code(client: CovisitClient) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        client.recommend_items(["a"], k=1)
    return info.value.code()


def _recommends(client: CovisitClient) -> None:
    rec = client.recommend_items(["a", "b"], k=2)
    assert [i.item_id for i in rec.items] == ["c", "d"]


@pytest.fixture
def tls_server(tmp_path, pki):
    server, port = start(tmp_path, probe_credentials=_probe(pki), probe_host="localhost",
                            **{"server.tls_cert": pki.path("server.pem"), "server.tls_key": pki.path("server.key")})
    yield port
    server.stop(0)


@pytest.fixture
def mtls_server(tmp_path, pki):
    server, port = start(tmp_path, probe_credentials=_probe(pki, client_cert=True), probe_host="localhost",
                            **{"server.tls_cert": pki.path("server.pem"), "server.tls_key": pki.path("server.key"),
                               "server.tls_client_ca": pki.path("ca.pem")})
    yield port
    server.stop(0)


def test_tls_client_trusting_the_ca_is_served(tls_server, pki):
    port = tls_server
    # the certificate names both localhost (DNS) and 127.0.0.1 (IP)
    for host in ("localhost", "127.0.0.1"):
        with CovisitClient(f"{host}:{port}", timeout=10, admin_token=TOKEN,
                           root_certificates=pki.read("ca.pem")) as client:
            _recommends(client)
            assert client.get_status().events > 0  # admin calls work over TLS too
    # a name the certificate does not carry, overridden to one it does
    with CovisitClient(f"127.0.0.1:{port}", timeout=10, root_certificates=pki.read("ca.pem"),
                       options=[("grpc.ssl_target_name_override", "localhost")]) as client:
        _recommends(client)


def test_tls_server_refuses_plaintext_and_untrusting_clients(tls_server, pki):
    port = tls_server
    with CovisitClient(f"localhost:{port}", timeout=5) as plaintext:
        assert _code(plaintext) == grpc.StatusCode.UNAVAILABLE
    # TLS, but trusting another CA: the client refuses the server's certificate
    with CovisitClient(f"localhost:{port}", timeout=5, root_certificates=pki.read("rogue-ca.pem")) as wrong_ca:
        assert _code(wrong_ca) == grpc.StatusCode.UNAVAILABLE


def test_tls_server_still_accepts_clients_without_a_certificate(tls_server, pki):
    # no client CA configured: client certificates are not required (one offered is harmless)
    with CovisitClient(f"localhost:{tls_server}", timeout=10, root_certificates=pki.read("ca.pem"),
                       private_key=pki.read("rogue-client.key"),
                       certificate_chain=pki.read("rogue-client.pem")) as client:
        _recommends(client)


def test_mutual_tls_serves_a_client_with_a_trusted_certificate(mtls_server, pki):
    with CovisitClient(f"localhost:{mtls_server}", timeout=10, admin_token=TOKEN,
                       root_certificates=pki.read("ca.pem"), private_key=pki.read("client.key"),
                       certificate_chain=pki.read("client.pem")) as client:
        _recommends(client)
        assert client.get_status().model_version == "1"


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mtls_server, pki):
    port = mtls_server
    with CovisitClient(f"localhost:{port}", timeout=5, root_certificates=pki.read("ca.pem")) as no_cert:
        assert _code(no_cert) == grpc.StatusCode.UNAVAILABLE
    with CovisitClient(f"localhost:{port}", timeout=5, root_certificates=pki.read("ca.pem"),
                       private_key=pki.read("rogue-client.key"),
                       certificate_chain=pki.read("rogue-client.pem")) as rogue:
        assert _code(rogue) == grpc.StatusCode.UNAVAILABLE
    with CovisitClient(f"localhost:{port}", timeout=5) as plaintext:
        assert _code(plaintext) == grpc.StatusCode.UNAVAILABLE
    # and the right certificate still works afterwards
    with CovisitClient(f"localhost:{port}", timeout=10, root_certificates=pki.read("ca.pem"),
                       private_key=pki.read("client.key"), certificate_chain=pki.read("client.pem")) as client:
        _recommends(client)


def test_tls_settings_must_come_together(pki):
    with pytest.raises(ConfigError, match="tls_cert and server.tls_key"):
        load_config(None, {}, {"server.tls_cert": pki.path("server.pem")})
    with pytest.raises(ConfigError, match="tls_client_ca"):
        load_config(None, {}, {"server.tls_client_ca": pki.path("ca.pem")})
