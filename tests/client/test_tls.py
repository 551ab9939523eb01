"""TLS and mutual TLS against the fake server, with throwaway certificates made by openssl."""

import shutil
import subprocess

import grpc
import pytest

from covisit.client import CovisitClient

from .fakes import start_fake_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA, as PEM bytes."""
    d = tmp_path_factory.mktemp("pki")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return {p.name: p.read_bytes() for p in d.iterdir() if p.suffix in (".pem", ".key")}


def _server(pki, require_client_auth):
    credentials = grpc.ssl_server_credentials([(pki["server.key"], pki["server.pem"])],
                                              root_certificates=pki["ca.pem"],
                                              require_client_auth=require_client_auth)
    return start_fake_server(credentials)


def test_tls_with_root_certificates(pki):
    server, fake = _server(pki, require_client_auth=False)
    try:
        with CovisitClient(fake.target, timeout=5.0, root_certificates=pki["ca.pem"]) as client:
            assert client.get_similar_items("i1").model_version == "v1"
        with CovisitClient(fake.target, timeout=2.0) as plaintext:
            with pytest.raises(grpc.RpcError) as info:
                plaintext.get_similar_items("i1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_mutual_tls_presents_the_client_certificate(pki):
    server, fake = _server(pki, require_client_auth=True)
    try:
        with CovisitClient(fake.target, timeout=5.0, root_certificates=pki["ca.pem"],
                           private_key=pki["client.key"], certificate_chain=pki["client.pem"]) as client:
            assert client.get_similar_items("i1").model_version == "v1"
        with CovisitClient(fake.target, timeout=2.0, root_certificates=pki["ca.pem"]) as no_client_cert:
            with pytest.raises(grpc.RpcError) as info:
                no_client_cert.get_similar_items("i1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
