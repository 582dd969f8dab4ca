"""Shared hypothesis strategies: addresses, bodies, keys, messages."""

from __future__ import annotations

from hypothesis import strategies as st

from grpc_messenger.model import Message, new_key

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
