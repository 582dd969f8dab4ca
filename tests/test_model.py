"""Values and validation: keys never repeat, legacy keys are stable, bad input is refused."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_messenger import InvalidInput, merge_unique
from grpc_messenger.config import ClientConfig, ServerConfig, parse_listen
from grpc_messenger.model import (
    UNIX_MS_MAX,
    Message,
    build_message,
    legacy_key,
    new_key,
    validate_address,
)
from tests import strategies


@given(strategies.addresses)
def test_plausible_addresses_are_accepted(address: str) -> None:
    assert validate_address(address) == address


@pytest.mark.parametrize(
    "address",
    ["", "bob", "@example.org", "bob@", "bob@@example.org", "bob @example.org", "bob@exa mple.org",
     "bob@-example.org", "bob@example..org", "b\x00b@example.org", "bob@example.org\n", "x" * 65 + "@example.org",
     "a@" + ("x" * 63 + ".") * 4 + "org"],
)  # fmt: skip
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidInput):
        validate_address(address)


def test_new_keys_are_uuid7_and_never_repeat() -> None:
    keys = [new_key() for _ in range(20_000)]
    assert len(set(keys)) == len(keys)
    assert all(uuid.UUID(k).version == 7 for k in keys[:100])
    # time-ordered: a later millisecond sorts later
    assert new_key(now_ms=1_000) < new_key(now_ms=2_000)


@given(strategies.addresses, st.integers(min_value=0, max_value=2**31 - 1), strategies.bodies, strategies.bodies)
def test_legacy_keys_are_stable_and_depend_on_the_body(sender: str, legacy_id: int, body: str, other: str) -> None:
    key = legacy_key(sender=sender, legacy_id=legacy_id, body=body)
    assert key == legacy_key(sender=sender, legacy_id=legacy_id, body=body)
    if other != body:
        # a legacy client whose counter restarted at 1 is not swallowed as a duplicate
        assert key != legacy_key(sender=sender, legacy_id=legacy_id, body=other)


def test_build_message_refuses_bad_fields() -> None:
    ok = {"sender": "a@example.org", "recipient": "b@example.org", "body": "hi"}
    build_message(**ok)
    for bad in (
        {"body": ""},
        {"body": "x" * 65_537},
        {"sender": "nobody"},
        {"recipient": ""},
        {"legacy_id": -1},
        {"created_unix_ms": -5},
        {"created_unix_ms": UNIX_MS_MAX + 1},
        {"key": "has spaces"},
        {"key": "k" * 65},
    ):
        with pytest.raises(InvalidInput):
            build_message(**{**ok, **bad})  # type: ignore[arg-type]


def test_legacy_message_without_time_is_stamped() -> None:
    message = build_message(sender="a@example.org", recipient="b@example.org", body="hi", legacy_id=3, now_ms=42)
    assert message.created_unix_ms == 42
    assert message.key == legacy_key(sender="a@example.org", legacy_id=3, body="hi")


@given(st.lists(strategies.messages(recipient="bob@example.org"), max_size=60), st.randoms(use_true_random=False))
def test_merge_keeps_one_copy_per_key_in_display_order(originals: list[Message], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    replicas = [[m for m in originals if rnd.random() < 0.7] for _ in range(3)]
    for copy in replicas:
        rnd.shuffle(copy)
    merged = merge_unique(replicas)
    present = {m.key for copy in replicas for m in copy}
    assert [m.key for m in merged] == [m.key for m in sorted(originals, key=Message.sort_key) if m.key in present]


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", "[::1:50051", ":50051", "host:port"])
def test_bad_listen_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidInput):
        parse_listen(address)


def test_configs_refuse_contradictions() -> None:
    assert parse_listen("[::1]:50051") == ("::1", 50051)
    with pytest.raises(InvalidInput):
        ClientConfig(servers=("127.0.0.1:1", "127.0.0.1:2"), write_quorum=3)
    with pytest.raises(InvalidInput):
        ClientConfig(servers=("127.0.0.1:1", "127.0.0.1:1"))
    with pytest.raises(InvalidInput):
        ClientConfig(servers=())
    with pytest.raises(InvalidInput):
        ServerConfig(store="postgres")


@pytest.mark.parametrize("body", ["", " ", "\n", "\t \r\n", "\u2003"])
def test_empty_or_whitespace_only_bodies_are_refused(body: str) -> None:
    with pytest.raises(InvalidInput, match=r"empty|whitespace"):
        build_message(sender="a@example.org", recipient="b@example.org", body=body)


@given(strategies.addresses)
def test_an_address_names_one_mailbox_however_it_is_capitalised(address: str) -> None:
    from grpc_messenger.model import normalize_address

    assert normalize_address(address.upper()) == normalize_address(address) == normalize_address(address.swapcase())


@given(st.text())
def test_shown_text_has_no_control_characters_left(text: str) -> None:
    import unicodedata

    from grpc_messenger.display import escape_control

    shown = escape_control(text)
    assert all(ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in shown)
    assert "\x1b" not in shown
