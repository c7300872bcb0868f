"""The Kubernetes platform verifies the API server against the configured CA file (and only that)."""

from __future__ import annotations

import ipaddress
import secrets
import ssl
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_httpserver import HTTPServer

from rollbacklib.config import Service
from rollbacklib.errors import StepError
from rollbacklib.platform_settings import KubernetesSettings
from rollbacklib.platforms import platform_for

TOKEN_ENV = "ROLLBACK_TEST_K8S_TOKEN"


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def cluster_ca(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k8s-ca")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test cluster CA", ca_key, None, ca_key, ca=True)
    leaf = _cert("kubernetes", leaf_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "server.crt").write_bytes(leaf.public_bytes(pem))
    (folder / "server.key").write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return folder


@pytest.fixture
def https_server(cluster_ca):
    """A server of its own (the plugin's session server is plain HTTP for the other modules)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cluster_ca / "server.crt", cluster_ca / "server.key")
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    yield server
    server.clear()
    server.stop()


class Env:
    def __init__(self, settings):
        self.name, self.platform, self.service_platform = "test", settings, "kubernetes"


def test_the_ca_file_is_what_the_client_trusts(https_server, cluster_ca, monkeypatch):
    httpserver = https_server
    monkeypatch.setenv(TOKEN_ENV, "tok-" + secrets.token_hex(8))
    httpserver.expect_request("/apis/apps/v1/namespaces/default/deployments/api-gateway").respond_with_json(
        {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {"observedGeneration": 1, "readyReplicas": 1}})
    server = httpserver.url_for("/")
    assert server.startswith("https://127.0.0.1:")
    trusting = platform_for(Env(KubernetesSettings(kind="kubernetes", server=server, token_env=TOKEN_ENV,
                                                   ca_file=cluster_ca / "ca.crt")))
    assert trusting.replicas(Service(name="api-gateway")) == 1
    system = platform_for(Env(KubernetesSettings(kind="kubernetes", server=server, token_env=TOKEN_ENV)))
    with pytest.raises(StepError, match="did not answer"):
        system.replicas(Service(name="api-gateway"))  # the system's trust store does not know the cluster's CA
