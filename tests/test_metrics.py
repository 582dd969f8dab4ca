"""Prometheus metrics from a real replica: RPCs by method and code, messages by outcome, store gauges."""

from __future__ import annotations

import contextlib
import urllib.request

import grpc

from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory, wait_until


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


A, B = "a@example.org", "b@example.org"


def test_metrics_count_rpcs_outcomes_and_store_sizes(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica(extra_args=("--metrics-listen", "127.0.0.1:0"))
    metrics = replica.ready.metrics_address
    assert metrics is not None
    assert metrics.startswith("127.0.0.1:")
    with grpc.insecure_channel(replica.address) as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        good = pb.SendRequest(key=new_key(), msg="hi", self_email="a@example.org", dest_email="b@example.org")
        stub.SendBatch(pb.SendBatchRequest(messages=[good, good, pb.SendRequest(msg="", key=new_key())]), timeout=10)
        with contextlib.suppress(grpc.RpcError):  # refused: counted as INVALID_ARGUMENT
            stub.Send(pb.SendRequest(msg="", self_email="a@example.org", dest_email="b@example.org"), timeout=10)
        # the send stream: counted once per call, by how it ended; its messages like any others
        streamed = [
            pb.SendBatchRequest(messages=[pb.SendRequest(key=new_key(), msg=f"s{i}", self_email=A, dest_email=B)])
            for i in range(2)
        ]
        assert len(list(stub.SendBatchStream(iter(streamed), timeout=10))) == 2
        garbage = channel.stream_stream("/messenger.MessengerService/SendBatchStream")
        with contextlib.suppress(grpc.RpcError):  # undecodable: INVALID_ARGUMENT
            list(garbage(iter([b"\xff\xff\xff"]), timeout=10))
    wait_until(lambda: scrape(metrics).get("messenger_store_messages") == 3.0, timeout_s=60)
    samples = scrape(metrics)
    assert samples['messenger_messages_total{outcome="stored"}'] == 3
    assert samples['messenger_messages_total{outcome="already_stored"}'] == 1
    assert samples['messenger_messages_total{outcome="rejected"}'] == 1
    assert samples['messenger_rpcs_total{code="OK",method="SendBatch"}'] == 1
    assert samples['messenger_rpcs_total{code="INVALID_ARGUMENT",method="Send"}'] == 1
    assert samples['messenger_rpc_seconds_count{method="SendBatch"}'] == 1
    assert samples['messenger_rpcs_total{code="OK",method="SendBatchStream"}'] == 1
    assert samples['messenger_rpcs_total{code="INVALID_ARGUMENT",method="SendBatchStream"}'] == 1
