"""Replica-to-replica repair with auth (and TLS, and mutual TLS): peers only, never a user token."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from grpc_messenger.cli.cluster import security_args
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.security import tls, tokens
from grpc_messenger.security.tokens import Role
from tests.conftest import ReplicaFactory, ReplicaProcess, wait_until
from tests.security_support import bearer, call_code

SETTLE_S = 30.0


def _secure_pair(
    factory: ReplicaFactory, data_dir: Path, *, mtls: bool
) -> tuple[list[ReplicaProcess], grpc.ChannelCredentials, tokens.Ed25519PrivateKey]:
    """Two replicas with auth + TLS (+ mTLS) that repair each other, as `messenger cluster --secure` sets them up."""
    args, _ = security_args(data_dir=data_dir, host="127.0.0.1", auth=False, secure=True)
    certs = tls.dev_cert_paths(data_dir / "tls")
    if mtls:
        args += ["--tls-client-ca", str(certs.ca_cert)]
    replicas = [factory.replica(extra_args=tuple(args)) for _ in range(2)]
    for replica in replicas:
        (other,) = [r for r in replicas if r is not replica]
        replica.extra_args = (*args, "--peer", other.address, "--repair-interval", "0.2")
        replica.restart()
    credentials = tls.channel_credentials(
        ca=certs.ca_cert, cert=certs.client_cert if mtls else None, key=certs.client_key if mtls else None
    )
    return replicas, credentials, tokens.load_private_key(data_dir / "keys" / tokens.PRIVATE_KEY_FILE)


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_repair_runs_with_a_peer_token_and_refuses_user_tokens(
    replica_factory: ReplicaFactory, tmp_path: Path, mtls: bool
) -> None:
    (a, b), credentials, key = _secure_pair(replica_factory, tmp_path / "messenger-data", mtls=mtls)
    alice = tokens.issue(key, subject="alice@x.org", ttl_s=600)
    bob = tokens.issue(key, subject="bob@x.org", ttl_s=600)
    peer = tokens.issue(key, subject="replica-9", role=Role.PEER, ttl_s=600)

    def channel(replica: ReplicaProcess) -> grpc.Channel:
        return grpc.secure_channel(replica.address, credentials)

    with channel(a) as to_a, channel(b) as to_b:
        sent = pb_grpc.MessengerServiceStub(to_a).Send(
            pb.SendRequest(id=1, msg="only sent to a", self_email="alice@x.org", dest_email="bob@x.org"),
            metadata=bearer(alice),
            timeout=5,
        )

        def on_b() -> bool:
            page = pb_grpc.MessengerServiceStub(to_b).Fetch(
                pb.FetchRequest(self_email="bob@x.org"), metadata=bearer(bob), timeout=5
            )
            return [m.key for m in page.messages] == [sent.key]

        wait_until(on_b, timeout_s=SETTLE_S)  # repair carried it, authenticated as a peer

        repair = pb_grpc.ReplicaServiceStub(to_b)
        digests = pb.DigestsRequest()
        pull = pb.PullRequest(mailbox="bob@x.org", keys=[sent.key])
        assert call_code(repair.Digests, digests)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert call_code(repair.Digests, digests, token=bob)[0] == grpc.StatusCode.PERMISSION_DENIED
        code, details = call_code(repair.Pull, pull, token=bob)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "peer credential" in details
        assert call_code(repair.Digests, digests, token=peer)[0] == grpc.StatusCode.OK
        # and a peer token cannot act for a mailbox
        code, _ = call_code(
            pb_grpc.MessengerServiceStub(to_b).Fetch, pb.FetchRequest(self_email="bob@x.org"), token=peer
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
