"""Two reference servers the benchmark compares against, run as their own processes.

    python -m grpc_messenger.bench.servers ceiling --ready-file F
    python -m grpc_messenger.bench.servers legacy --ready-file F

`ceiling`: a bare grpc.aio server whose SendBatch and SendBatchStream store
nothing and answer STORED at once: what the coalescing client costs on this machine, the limit
of the design. `legacy`: the original design, a synchronous grpc server over
an in-memory defaultdict(list), serving the original Send and ReceiveAll.
Both listen on 127.0.0.1 port 0 and write {"addresses": [...], "pid": ...}
to the ready file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc


def _all_stored(request: pb.SendBatchRequest) -> pb.SendBatchResponse:
    return pb.SendBatchResponse(
        results=[pb.SendResult(key=m.key, outcome=pb.SEND_OUTCOME_STORED) for m in request.messages]
    )


class CeilingServicer(pb_grpc.MessengerServiceServicer):
    """Answers every send as stored, without storing anything."""

    async def SendBatch(self, request: pb.SendBatchRequest, context: Any) -> pb.SendBatchResponse:
        return _all_stored(request)

    async def SendBatchStream(
        self, request_iterator: AsyncIterator[pb.SendBatchRequest], context: Any
    ) -> AsyncIterator[pb.SendBatchResponse]:
        async for request in request_iterator:
            yield _all_stored(request)

    async def Send(self, request: pb.SendRequest, context: Any) -> pb.SendResponse:
        return pb.SendResponse(success=True, outcome=pb.SEND_OUTCOME_STORED, key=request.key)


class LegacyServicer(pb_grpc.MessengerServiceServicer):
    """The original server: a dict of lists in memory, nothing durable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mailboxes: defaultdict[str, list[pb.SendRequest]] = defaultdict(list)

    def Send(self, request: pb.SendRequest, context: Any) -> pb.SendResponse:
        with self._lock:
            self._mailboxes[request.dest_email].append(request)
        return pb.SendResponse(success=True, debug_message="stored")

    def ReceiveAll(self, request: pb.ReceiveRequest, context: Any) -> pb.InboxResponse:
        with self._lock:
            messages = self._mailboxes.pop(request.self_email, [])
        return pb.InboxResponse(messages=messages)


def _write_ready(path: Path, port: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"addresses": [f"127.0.0.1:{port}"], "pid": os.getpid()}))
    tmp.replace(path)


async def _run_ceiling(ready_file: Path) -> None:
    server = grpc.aio.server()
    # the other RPCs keep the generated base's behaviour: UNIMPLEMENTED (the stubs call them abstract)
    pb_grpc.add_MessengerServiceServicer_to_server(CeilingServicer(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _write_ready(ready_file, port)
    await stop.wait()
    await server.stop(1.0)


def _run_legacy(ready_file: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    pb_grpc.add_MessengerServiceServicer_to_server(LegacyServicer(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _write_ready(ready_file, port)
    while not stop.wait(0.5):
        pass
    server.stop(1.0).wait(5.0)


def main() -> None:
    """Run one reference server until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["ceiling", "legacy"])
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    if args.kind == "ceiling":
        asyncio.run(_run_ceiling(args.ready_file))
    else:
        _run_legacy(args.ready_file)


if __name__ == "__main__":
    main()
