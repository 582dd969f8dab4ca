"""Repro: a byte flipped inside a stored message key is served under the wrong key."""

import asyncio
import shutil
import tempfile
from pathlib import Path

import grpc

from grpc_messenger.chaos.cluster import ChaosReplica
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="keyflip-"))
    r = ChaosReplica(name="r1", data_dir=root / "r1", log_path=root / "r1.log", ready_path=root / "r1.ready")
    try:
        await r.start(peers=(), repair_interval_s=None)
        async with grpc.aio.insecure_channel(r.address) as ch:
            stub = pb_grpc.MessengerServiceStub(ch)
            msgs = [
                pb.SendRequest(
                    self_email="s@x.org",
                    dest_email="mb@x.org",
                    msg=f"body {i}",
                    key=f"key-{i:04d}AAAA",
                    created_unix_ms=1,
                )
                for i in range(50)
            ]
            await stub.SendBatch(pb.SendBatchRequest(messages=msgs), timeout=5)
        await r.stop()  # clean: checkpointed into the main file
        data = bytearray(r.store_file.read_bytes())
        needle = b"key-0007AAAAs@x.org"  # the table row: msg_key followed by sender
        at = data.find(needle)
        assert at > 0, "row not found"
        data[at + 8] = ord("B")  # key-0007AAAA -> key-0007BAAA (still a valid key)
        r.store_file.write_bytes(bytes(data))
        await r.start(peers=(), repair_interval_s=None)
        async with grpc.aio.insecure_channel(r.address) as ch:
            stub = pb_grpc.MessengerServiceStub(ch)
            page = await stub.Fetch(pb.FetchRequest(self_email="mb@x.org", limit=100), timeout=5)
            keys = sorted(m.key for m in page.messages)
            print(
                "served",
                len(keys),
                "keys; key-0007AAAA present:",
                "key-0007AAAA" in keys,
                "; key-0007BAAA present:",
                "key-0007BAAA" in keys,
            )
            info = await stub.Info(pb.InfoRequest(), timeout=5)
            print("replica started despite damage; messages:", info.messages)
    finally:
        await r.kill()
        shutil.rmtree(root, ignore_errors=True)


asyncio.run(main())
