"""Shared hypothesis strategies: valid addresses, bodies, keys, messages; and hostile input (hostile_*, rpc_calls)."""

from __future__ import annotations

from hypothesis import strategies as st

from grpc_messenger.model import Message, new_key
from grpc_messenger.proto import messenger_pb2 as pb

_local_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-")
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)

addresses = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    st.text(_local_chars, min_size=1, max_size=20),
    st.lists(_label, min_size=1, max_size=3),
)

# any unicode a person might type, including combining marks, emoji and control characters
bodies = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300)

keys = st.builds(lambda: new_key())


@st.composite
def messages(draw: st.DrawFn, *, recipient: str | None = None) -> Message:
    return Message(
        key=draw(keys),
        sender=draw(addresses),
        recipient=recipient or draw(addresses),
        body=draw(bodies),
        created_unix_ms=draw(st.integers(min_value=1, max_value=4_000_000_000_000)),
        legacy_id=0,
    )


# --- hostile input: what a careless or malicious client could send ---------------

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# Text a protobuf string can carry (valid UTF-8: no lone surrogates), biased towards trouble.
EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "bob@x.org\x00",
    "\x00bob@x.org",
    "bob@x.org ",
    " bob@x.org",
    "bob@x.org\n",
    "bob@x.org\r\nX-Injected: 1",
    "Bob@x.org",
    "b\u043eb@x.org",  # Cyrillic o
    "bob@x.org\u200b",  # zero-width space
    "\u202ebob@x.org",  # right-to-left override
    "\uff42\uff4f\uff42@x.org",  # fullwidth
    "bob@xn--80ak6aa92e.com",
    "bob@localhost",
    "bob@@x.org",
    "@x.org",
    "bob@",
    "a" * 64 + "@x.org",
    "a" * 65 + "@x.org",
    "a@" + ("b" * 63 + ".") * 3 + "c" * 61,
    "a@" + ("b" * 63 + ".") * 4 + "org",
    "e\u0301@x.org",  # combining accent
    "\U0001f600@x.org",
    "../../etc/passwd",
    "'; DROP TABLE messages; --",
    "%s%s%s%n",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
]
VALID_ADDRESSES = ["bob@x.org", "alice@x.org", "carol@example.org", "o'neil+tag@sub.x.org"]


def hostile_text(max_size: int = 300) -> st.SearchStrategy[str]:
    """Unicode of every category (control characters included), plus the edge cases above."""
    return st.one_of(
        st.sampled_from(EDGE_STRINGS),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=max_size),
        st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=40),
    )


def hostile_addresses() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(VALID_ADDRESSES), hostile_text(max_size=300))


def hostile_keys() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
        st.sampled_from(["k-dup-1", "k-dup-2", "legacy-0"]),  # collide on purpose
        hostile_text(max_size=100),
        st.just("k" * 65),
    )


def hostile_bodies(*, body_bytes_max: int) -> st.SearchStrategy[str]:
    return st.one_of(
        hostile_text(max_size=200),
        st.just("x" * body_bytes_max),
        st.just("x" * (body_bytes_max + 1)),
        st.just("\U0001f600" * (body_bytes_max // 4 + 1)),  # few characters, too many bytes
    )


def send_requests(*, body_bytes_max: int) -> st.SearchStrategy[pb.SendRequest]:
    return st.builds(
        pb.SendRequest,
        id=st.integers(*INT32),
        msg=hostile_bodies(body_bytes_max=body_bytes_max),
        self_email=hostile_addresses(),
        dest_email=hostile_addresses(),
        key=hostile_keys(),
        created_unix_ms=st.one_of(st.just(0), st.integers(*INT64)),
    )


def rpc_calls(*, body_bytes_max: int) -> st.SearchStrategy[tuple[str, object]]:
    """(method name, request) for every unary RPC of the service."""
    send = send_requests(body_bytes_max=body_bytes_max)
    return st.one_of(
        st.tuples(st.just("Send"), send),
        st.tuples(st.just("SendBatch"), st.builds(pb.SendBatchRequest, messages=st.lists(send, max_size=12))),
        st.tuples(
            st.just("Fetch"),
            st.builds(
                pb.FetchRequest,
                self_email=hostile_addresses(),
                after_seq=st.integers(*INT64),
                limit=st.integers(*INT32),
            ),
        ),
        st.tuples(
            st.just("Ack"),
            st.builds(pb.AckRequest, self_email=hostile_addresses(), keys=st.lists(hostile_keys(), max_size=20)),
        ),
        st.tuples(st.just("ReceiveAll"), st.builds(pb.ReceiveRequest, self_email=hostile_addresses())),
        st.tuples(st.just("Info"), st.just(pb.InfoRequest())),
    )


def wire_garbage() -> st.SearchStrategy[bytes]:
    """Bytes for a request body: random, and valid protobuf with fields of the wrong wire type."""
    varint = st.integers(0, 2**64 - 1).map(_varint)
    wrong_types = st.lists(
        st.tuples(st.integers(1, 8), st.integers(0, 5), st.binary(max_size=40)).map(
            lambda t: _varint((t[0] << 3) | t[1]) + t[2]
        ),
        max_size=8,
    ).map(b"".join)
    return st.one_of(st.binary(max_size=512), wrong_types, varint, st.just(b"\x0a\xff\xff\xff\xff\x0f"))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
