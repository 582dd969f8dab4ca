"""TLS and mutual TLS on real replicas; the local secure cluster setup; refusing exposed listeners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from grpc_messenger import ClientConfig, Messenger, ServerConfig
from grpc_messenger.cli.cluster import security_args
from grpc_messenger.errors import InvalidInput
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.security import tls, tokens
from grpc_messenger.security.exposure import check_exposure, is_loopback
from tests.conftest import ReplicaFactory
from tests.security_support import call_code, stub_for


@pytest.fixture
def certs(tmp_path: Path) -> tls.DevCerts:
    return tls.make_dev_certs(tmp_path / "tls")


def test_tls_replica_serves_a_client_that_trusts_its_ca(
    replica_factory: ReplicaFactory, certs: tls.DevCerts, tmp_path: Path
) -> None:
    replica = replica_factory.replica(
        extra_args=("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    )
    config = ClientConfig(servers=(replica.address,), data_dir=tmp_path / "home", tls_ca=certs.ca_cert, timeout_s=3)
    with Messenger(config) as m:
        assert m.send(sender="a@x.org", recipient="b@x.org", body="over TLS").ok
        assert [msg.body for msg in m.receive("b@x.org").messages] == ["over TLS"]
    # plaintext to a TLS port fails; so does TLS trusting another CA
    with stub_for(replica.address) as plain:
        assert call_code(plain.Info, pb.InfoRequest())[0] == grpc.StatusCode.UNAVAILABLE
    stranger = tls.make_dev_certs(tmp_path / "other-ca")
    with stub_for(replica.address, credentials=tls.channel_credentials(ca=stranger.ca_cert)) as wrong_ca:
        assert call_code(wrong_ca.Info, pb.InfoRequest())[0] == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    replica_factory: ReplicaFactory, certs: tls.DevCerts, tmp_path: Path
) -> None:
    replica = replica_factory.replica(
        extra_args=(
            "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
            "--tls-client-ca", str(certs.ca_cert),
        )
    )  # fmt: skip
    without = tls.channel_credentials(ca=certs.ca_cert)
    with stub_for(replica.address, credentials=without) as stub:
        assert call_code(stub.Info, pb.InfoRequest())[0] == grpc.StatusCode.UNAVAILABLE
    stranger = tls.make_dev_certs(tmp_path / "other-ca")
    foreign = tls.channel_credentials(ca=certs.ca_cert, cert=stranger.client_cert, key=stranger.client_key)
    with stub_for(replica.address, credentials=foreign) as stub:
        assert call_code(stub.Info, pb.InfoRequest())[0] == grpc.StatusCode.UNAVAILABLE
    good = tls.channel_credentials(ca=certs.ca_cert, cert=certs.client_cert, key=certs.client_key)
    with stub_for(replica.address, credentials=good) as stub:
        assert call_code(stub.Info, pb.InfoRequest())[0] == grpc.StatusCode.OK


def test_secure_local_cluster_setup_gives_tls_and_auth(replica_factory: ReplicaFactory, tmp_path: Path) -> None:
    """What `messenger cluster --secure` does: key pair and dev CA under the data dir, reused on restart."""
    data_dir = tmp_path / "messenger-data"
    args, client_env = security_args(data_dir=data_dir, host="127.0.0.1", auth=False, secure=True)
    again, _ = security_args(data_dir=data_dir, host="127.0.0.1", auth=False, secure=True)
    assert args == again  # nothing regenerated: issued tokens and the CA stay valid
    assert any("MESSENGER_TLS_CA" in line for line in client_env)
    replica = replica_factory.replica(extra_args=tuple(args))
    token = tokens.issue(
        tokens.load_private_key(data_dir / "keys" / tokens.PRIVATE_KEY_FILE), subject="bob@x.org", ttl_s=600
    )
    ca = data_dir / "tls" / "ca.pem"
    base = ClientConfig(servers=(replica.address,), data_dir=tmp_path / "home", tls_ca=ca, timeout_s=3)
    with Messenger(base) as anonymous:
        assert "UNAUTHENTICATED" in anonymous.status()[0].error
    with Messenger(ClientConfig(servers=base.servers, data_dir=base.data_dir, tls_ca=ca, token=token)) as bob:
        assert bob.status()[0].reachable
        assert bob.send(sender="bob@x.org", recipient="bob@x.org", body="note to self").ok


def test_serve_refuses_a_non_loopback_listener_without_auth_and_tls(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_messenger", "serve", "--listen", "0.0.0.0:0", "--store", "memory",
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without authentication and TLS" in result.stderr


def test_exposure_rules(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("example.org")
    assert check_exposure(ServerConfig(listen=("127.0.0.1:0", "[::1]:0"))) is None
    with pytest.raises(InvalidInput, match="without authentication and TLS"):
        check_exposure(ServerConfig(listen=("[::]:0",)))
    key, cert = tmp_path / "k", tmp_path / "c"
    with pytest.raises(InvalidInput, match="without TLS"):
        check_exposure(ServerConfig(listen=("0.0.0.0:0",), auth_public_keys=(key,)))
    with pytest.raises(InvalidInput, match="without authentication"):
        check_exposure(ServerConfig(listen=("0.0.0.0:0",), tls_cert=cert, tls_key=key))
    assert (
        check_exposure(ServerConfig(listen=("0.0.0.0:0",), auth_public_keys=(key,), tls_cert=cert, tls_key=key)) is None
    )
    warning = check_exposure(ServerConfig(listen=("0.0.0.0:0",), insecure=True))
    assert warning is not None
    assert "INSECURE" in warning
