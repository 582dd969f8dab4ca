"""Signed tokens: what verifies, and that every bad token is refused with the reason named."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_messenger.errors import InvalidInput, Unauthenticated
from grpc_messenger.security import tokens
from grpc_messenger.security.tokens import Role, TokenVerifier
from tests.security_support import Keys, make_keys

NOW = 1_800_000_000


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture(scope="module")
def module_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def verifier(keys: Keys, now: float = NOW) -> TokenVerifier:
    return TokenVerifier.from_files([keys.public_path], clock_s=lambda: now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_issued_token_verifies_to_its_subject_and_role(keys: Keys) -> None:
    token = keys.token("bob@x.org", now_s=NOW, ttl_s=30 * 86400)
    identity = verifier(keys).verify(token)
    assert identity.subject == "bob@x.org"
    assert identity.role is Role.USER
    assert identity.expires_unix_s == NOW + 30 * 86400
    peer = verifier(keys).verify(keys.token("replica-2", role=Role.PEER, now_s=NOW))
    assert peer.role is Role.PEER


def test_expired_token_is_refused_as_expired(keys: Keys) -> None:
    token = keys.token("bob@x.org", now_s=NOW, ttl_s=60)
    v = verifier(keys, now=NOW + 60)
    with pytest.raises(Unauthenticated, match="expired"):
        v.verify(token)


def test_cached_token_still_expires(keys: Keys) -> None:
    clock = [float(NOW)]
    v = TokenVerifier.from_files([keys.public_path], clock_s=lambda: clock[0])
    token = keys.token("bob@x.org", now_s=NOW, ttl_s=60)
    v.verify(token)
    clock[0] += 61
    with pytest.raises(Unauthenticated, match="expired"):
        v.verify(token)


def test_token_from_another_key_is_a_bad_signature(keys: Keys, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other")
    with pytest.raises(Unauthenticated, match="bad signature"):
        verifier(keys).verify(other.token("bob@x.org", now_s=NOW))


def test_tampered_payload_is_a_bad_signature(keys: Keys) -> None:
    prefix, kid, _, signature = keys.token("mallory@x.org", now_s=NOW).split(".")
    forged = _b64(json.dumps({"sub": "bob@x.org", "role": "user", "iat": NOW, "exp": NOW + 60}).encode())
    with pytest.raises(Unauthenticated, match="bad signature"):
        verifier(keys).verify(f"{prefix}.{kid}.{forged}.{signature}")


def test_user_token_cannot_be_relabelled_as_peer(keys: Keys) -> None:
    prefix, kid, payload, signature = keys.token("bob@x.org", now_s=NOW).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "peer"
    with pytest.raises(Unauthenticated, match="bad signature"):
        verifier(keys).verify(f"{prefix}.{kid}.{_b64(json.dumps(claims).encode())}.{signature}")


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "mt1.a.b", "mt2.a.b.c", "mt1.a.b.c.d", "mt1.!!.b.c", "mt1.a.b.c" + "A" * 3000],
)
def test_malformed_tokens_are_refused_as_malformed_or_missing(keys: Keys, token: str) -> None:
    with pytest.raises(Unauthenticated, match=r"malformed|missing|bad signature"):
        verifier(keys).verify(token)


def test_signed_but_invalid_claims_are_malformed(keys: Keys) -> None:
    """Claims are checked after the signature: a signed token with bad claims is still refused."""
    kid = tokens.key_id(keys.private.public_key())
    for claims in (
        b'{"sub":"bob@x.org","role":"admin","iat":1,"exp":2}',
        b'{"sub":"bob@x.org","role":"user","iat":1,"exp":2,"extra":1}',
        b'{"sub":"bob@x.org","sub":"eve@x.org","role":"user","iat":1,"exp":2}',
        b'{"sub":"not an address","role":"user","iat":1,"exp":2}',
        b'{"sub":"bob@x.org","role":"user","iat":true,"exp":2}',
        b"[1,2]",
        b"\xff\xfe",
    ):
        signed = f"mt1.{kid}.{_b64(claims)}"
        token = f"{signed}.{_b64(keys.private.sign(signed.encode()))}"
        with pytest.raises(Unauthenticated, match="malformed"):
            verifier(keys).verify(token)


def test_token_issued_in_the_future_is_not_yet_valid(keys: Keys) -> None:
    with pytest.raises(Unauthenticated, match="not yet valid"):
        verifier(keys).verify(keys.token("bob@x.org", now_s=NOW + 3600))


def test_bearer_header_parsing() -> None:
    assert tokens.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert tokens.bearer_token([("Authorization", "bearer  abc ")]) == "abc"
    with pytest.raises(Unauthenticated, match="missing"):
        tokens.bearer_token([("x-other", "1")])
    with pytest.raises(Unauthenticated, match="malformed"):
        tokens.bearer_token([("authorization", "Basic abc")])
    with pytest.raises(Unauthenticated, match="malformed"):
        tokens.bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")])


def test_ttl_parsing() -> None:
    assert tokens.parse_ttl("30d") == 30 * 86400
    assert tokens.parse_ttl("15m") == 900
    for bad in ("", "30", "-1d", "1y", "0s", "99999w"):
        with pytest.raises(InvalidInput):
            tokens.parse_ttl(bad)


def test_key_pair_is_not_overwritten_and_private_key_is_owner_only(tmp_path: Path) -> None:
    private_path, _ = tokens.generate_key_pair(tmp_path / "k")
    assert private_path.stat().st_mode & 0o077 == 0
    with pytest.raises(InvalidInput, match="already exists"):
        tokens.generate_key_pair(tmp_path / "k")


@settings(max_examples=300, deadline=None)
@given(garbage=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_garbage_token_is_unauthenticated_never_a_crash(module_keys: Keys, garbage: str) -> None:
    keys = module_keys
    with pytest.raises(Unauthenticated):
        verifier(keys).verify(garbage)
    # the same with a real prefix and key id, so parsing goes deeper
    kid = tokens.key_id(keys.private.public_key())
    with pytest.raises(Unauthenticated):
        verifier(keys).verify(f"mt1.{kid}.{garbage}")
