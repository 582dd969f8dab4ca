"""A fault-injecting TCP proxy (stdlib asyncio), switchable at run time.

One proxy sits in front of one replica for one kind of caller (senders,
readers, or one peer replica). Modes:

- PASS: forward both ways.
- DELAY: forward both ways, each chunk held back `delay_ms` first.
- DROP: black hole: keep the connections, forward nothing (the caller's deadline fires).
- CUT: reset every connection now, and reset new ones as soon as they are accepted
  (to the caller that is a refused connection: ECONNRESET).
- LOSE_RESPONSE: the request is delivered, the response is lost: client->server
  bytes are forwarded, the server's answer is discarded and the connection is
  reset shortly after, so the caller sees UNAVAILABLE for a call that did happen.

LOSE_RESPONSE needs to tell "the server's answer to a call" from "the server's
half of the HTTP/2 handshake" (else no call would ever be delivered on a new
connection), so the server->client direction is split into HTTP/2 frames:
connection-level frames (stream 0: SETTINGS, PING, WINDOW_UPDATE, GOAWAY) pass,
and the first frame of any stream (HEADERS/DATA of a response) is where the
loss begins. gRPC on loopback is cleartext HTTP/2, so the frames are visible.

A connection that lost any bytes is reset when the mode goes back to PASS or
DELAY: its HTTP/2 state is broken, and a reset is what a real network gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK_BYTES_MAX = 64 * 1024
# HTTP/2 allows frames up to 2^24-1 bytes; a buffer beyond one such frame is a bug.
FRAME_BUFFER_BYTES_MAX = (1 << 24) + 9
LOSE_RESET_DELAY_S = 0.1
CONNECT_TIMEOUT_S = 2.0


class ProxyMode(enum.Enum):
    """What a proxy does with the bytes of its connections."""

    PASS = "pass"
    DELAY = "delay"
    DROP = "drop"
    CUT = "cut"
    LOSE_RESPONSE = "lose_response"


@dataclass(slots=True)
class ProxyStats:
    """Counters of one proxy (monotonic over its life)."""

    accepted: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_dropped: int = 0
    responses_lost: int = 0


class FrameSplitter:
    """Splits a byte stream into whole HTTP/2 frames: (stream id, frame bytes)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return every frame now complete, in order."""
        self._buf += data
        assert len(self._buf) <= FRAME_BUFFER_BYTES_MAX + CHUNK_BYTES_MAX, "HTTP/2 frame buffer overflow"
        frames: list[tuple[int, bytes]] = []
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[0:3], "big")
            end = 9 + length
            if len(self._buf) < end:
                break
            stream = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            frames.append((stream, bytes(self._buf[:end])))
            del self._buf[:end]
        return frames


def _reset_writer(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees ECONNRESET at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One proxied connection: the caller's side and the upstream side."""

    def __init__(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.up_reader = up_reader
        self.up_writer = up_writer
        self.tainted = False  # some bytes were dropped: the HTTP/2 state is broken
        self.closed = False
        self.reset_timer: asyncio.TimerHandle | None = None

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reset_timer is not None:
            self.reset_timer.cancel()
        _reset_writer(self.client_writer)
        _reset_writer(self.up_writer)


class FaultProxy:
    """Listens on 127.0.0.1 (port 0 unless given) and forwards to `upstream` under the current mode."""

    def __init__(self, *, name: str, upstream: str | None = None, listen_host: str = "127.0.0.1") -> None:
        self.name = name
        self.upstream = upstream  # "host:port"; None: connections are reset (the target is not up yet)
        self._listen_host = listen_host
        self._server: asyncio.Server | None = None
        self._port = 0
        self._mode = ProxyMode.PASS
        self._delay_s = 0.0
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.stats = ProxyStats()

    @property
    def address(self) -> str:
        """Where callers connect."""
        assert self._port, "proxy not started"
        return f"{self._listen_host}:{self._port}"

    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        return self._mode

    async def start(self, *, port: int = 0) -> str:
        """Start listening; return the address."""
        self._server = await asyncio.start_server(self._handle, self._listen_host, port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        return self.address

    def set_mode(self, mode: ProxyMode, *, delay_ms: int = 0) -> None:
        """Switch mode; applies to open connections at once."""
        assert delay_ms >= 0
        self._mode = mode
        self._delay_s = delay_ms / 1000 if mode is ProxyMode.DELAY else 0.0
        for conn in list(self._connections):
            if mode is ProxyMode.CUT or (conn.tainted and mode in (ProxyMode.PASS, ProxyMode.DELAY)):
                self._reset(conn)

    def heal(self) -> None:
        """Back to PASS."""
        self.set_mode(ProxyMode.PASS)

    def reset_all(self) -> None:
        """Reset every open connection, keep the mode."""
        for conn in list(self._connections):
            self._reset(conn)

    async def close(self) -> None:
        """Stop listening, reset every connection, and wait for the handlers."""
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)

    def _reset(self, conn: _Connection) -> None:
        if not conn.closed:
            self.stats.resets += 1
        conn.reset()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        upstream = self.upstream
        if self._mode is ProxyMode.CUT or upstream is None:
            self.stats.resets += 1
            _reset_writer(writer)
            return
        host, _, port = upstream.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), timeout=CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.stats.resets += 1
            _reset_writer(writer)  # the replica is down: the caller sees a failed connection
            return
        conn = _Connection(reader, writer, up_reader, up_writer)
        self._connections.add(conn)
        try:
            up = asyncio.create_task(self._pump_up(conn))
            down = asyncio.create_task(self._pump_down(conn))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._connections.discard(conn)
            self._reset(conn)

    async def _pump_up(self, conn: _Connection) -> None:
        """Caller -> replica: forwarded in every mode but DROP (LOSE_RESPONSE delivers requests)."""
        while not conn.closed:
            data = await conn.client_reader.read(CHUNK_BYTES_MAX)
            if not data:
                return
            if self._mode is ProxyMode.DROP:
                conn.tainted = True
                self.stats.bytes_dropped += len(data)
                continue
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            conn.up_writer.write(data)
            await conn.up_writer.drain()
            self.stats.bytes_up += len(data)

    async def _pump_down(self, conn: _Connection) -> None:
        """Replica -> caller, frame by frame, so LOSE_RESPONSE can spare the handshake."""
        splitter = FrameSplitter()
        while not conn.closed:
            data = await conn.up_reader.read(CHUNK_BYTES_MAX)
            if not data:
                return
            out = bytearray()
            for stream, frame in splitter.feed(data):
                if self._forwards_down(conn, stream):
                    out += frame
                else:
                    self.stats.bytes_dropped += len(frame)
            if not out:
                continue
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            conn.client_writer.write(out)
            await conn.client_writer.drain()
            self.stats.bytes_down += len(out)

    def _forwards_down(self, conn: _Connection, stream: int) -> bool:
        mode = self._mode
        if mode is ProxyMode.DROP:
            conn.tainted = True
            return False
        if mode is ProxyMode.LOSE_RESPONSE and (conn.tainted or stream != 0):
            if not conn.tainted:
                conn.tainted = True
                self.stats.responses_lost += 1
                # the rest of this response (and anything after it) is lost too; then reset
                conn.reset_timer = asyncio.get_running_loop().call_later(LOSE_RESET_DELAY_S, lambda: self._reset(conn))
            return False
        return not conn.tainted
