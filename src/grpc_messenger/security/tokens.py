"""Ed25519-signed bearer tokens that name one identity.

Format (ASCII, fits a gRPC metadata value):

    mt1.<kid>.<payload>.<signature>

- `kid`: key id, base64url (no padding) of the first 8 bytes of sha256(raw public key),
  so a replica trusting several keys (rotation) knows which one to try.
- `payload`: base64url of compact JSON with exactly the keys
  `sub` (an email address, or a peer name), `role` ("user" or "peer"),
  `iat` and `exp` (unix seconds).
- `signature`: base64url of the Ed25519 signature over the ASCII bytes `mt1.<kid>.<payload>`.

Why not JWT: this format has one algorithm and no header to negotiate it, so the
classic JWT mistakes (`alg: none`, HMAC/public-key confusion) cannot happen; the
signature is checked before any JSON is parsed; and it needs only `cryptography`,
which we need for certificates anyway. Any language with Ed25519 and base64url can
verify it in a few lines.

A replica verifies tokens on its own with the public key: no shared secret, no
session store. Signing needs the private key, which lives only where tokens are issued.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from grpc_messenger.errors import InvalidInput, Unauthenticated
from grpc_messenger.model import validate_address

PREFIX = "mt1"
TOKEN_CHARS_MAX = 2048
# Tokens issued a little in the future (clock skew between issuer and replica) still count.
CLOCK_SKEW_S = 60
TTL_S_MAX = 10 * 366 * 86400
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"

_B64_RE = re.compile(r"[A-Za-z0-9_-]+")
_PEER_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TTL_RE = re.compile(r"(\d{1,9})([smhdw])")
_TTL_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Role(enum.Enum):
    """What a token may do: act for one mailbox, or act as a replica peer (repair)."""

    USER = "user"
    PEER = "peer"


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token: who, in which role, until when."""

    subject: str
    role: Role
    expires_unix_s: int
    key_id: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, *, what: str) -> bytes:
    """Strict base64url without padding: one encoding per value, so tokens are not malleable."""
    if not _B64_RE.fullmatch(text):
        raise Unauthenticated(f"malformed token: {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Unauthenticated(f"malformed token: {what} is not base64url") from None
    if _b64encode(data) != text:
        raise Unauthenticated(f"malformed token: {what} is not canonical base64url")
    return data


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short, stable id of a public key (names it inside tokens)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64encode(hashlib.sha256(raw).digest()[:8])


def validate_subject(subject: str, role: Role) -> str:
    """A user token names an email address; a peer token names a replica (lowercase, no @)."""
    if role is Role.USER:
        return validate_address(subject, what="token subject")
    if not _PEER_RE.fullmatch(subject):
        raise InvalidInput("peer name must be 1-63 characters of a-z 0-9 . _ - (e.g. replica-1)")
    return subject


def parse_ttl(text: str) -> int:
    """'30d', '12h', '15m', '3600s', '2w' -> seconds."""
    match = _TTL_RE.fullmatch(text.strip())
    if not match:
        raise InvalidInput(f"TTL {text!r} is not like 30d, 12h, 15m, 3600s or 2w")
    ttl_s = int(match.group(1)) * _TTL_UNIT_S[match.group(2)]
    if not 1 <= ttl_s <= TTL_S_MAX:
        raise InvalidInput(f"TTL must be between 1 second and {TTL_S_MAX // 86400} days")
    return ttl_s


def issue(
    private_key: Ed25519PrivateKey,
    *,
    subject: str,
    role: Role = Role.USER,
    ttl_s: int,
    now_s: int | None = None,
) -> str:
    """A signed token for `subject` valid for `ttl_s` seconds from now."""
    validate_subject(subject, role)
    if not 1 <= ttl_s <= TTL_S_MAX:
        raise InvalidInput(f"TTL must be between 1 second and {TTL_S_MAX // 86400} days")
    iat = int(time.time()) if now_s is None else now_s
    claims = {"sub": subject, "role": role.value, "iat": iat, "exp": iat + ttl_s}
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed = f"{PREFIX}.{key_id(private_key.public_key())}.{payload}"
    token = f"{signed}.{_b64encode(private_key.sign(signed.encode('ascii')))}"
    assert len(token) <= TOKEN_CHARS_MAX
    return token


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Unauthenticated("malformed token: duplicate claim")
    return dict(pairs)


def _claims(payload: bytes) -> tuple[str, Role, int, int]:
    try:
        data = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Unauthenticated("malformed token: payload is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"sub", "role", "iat", "exp"}:
        raise Unauthenticated("malformed token: claims must be exactly sub, role, iat, exp")
    sub, role_text, iat, exp = data["sub"], data["role"], data["iat"], data["exp"]
    if not isinstance(sub, str) or role_text not in ("user", "peer"):
        raise Unauthenticated("malformed token: bad sub or role")
    if type(iat) is not int or type(exp) is not int or exp <= iat:
        raise Unauthenticated("malformed token: bad iat or exp")
    role = Role(role_text)
    try:
        validate_subject(sub, role)
    except InvalidInput as exc:
        raise Unauthenticated(f"malformed token: {exc}") from None
    return sub, role, iat, exp


class TokenVerifier:
    """Checks tokens against trusted public keys; remembers recent good ones (bounded).

    The cache only skips the signature check for a token string already verified;
    expiry is checked on every call.
    """

    CACHE_MAX = 4096

    def __init__(self, public_keys: Iterable[Ed25519PublicKey], *, clock_s: Callable[[], float] = time.time) -> None:
        self._keys = {key_id(k): k for k in public_keys}
        if not self._keys:
            raise InvalidInput("at least one public key is needed to verify tokens")
        self._clock_s = clock_s
        self._cache: OrderedDict[str, Identity] = OrderedDict()

    @classmethod
    def from_files(cls, paths: Iterable[Path], *, clock_s: Callable[[], float] = time.time) -> TokenVerifier:
        """Verifier trusting the public keys in these PEM files."""
        return cls([load_public_key(p) for p in paths], clock_s=clock_s)

    def verify(self, token: str) -> Identity:
        """The identity `token` proves; raise Unauthenticated saying what is wrong."""
        identity = self._cache.get(token)
        if identity is None:
            identity = self._verify_signature_and_claims(token)
            self._cache[token] = identity
            if len(self._cache) > self.CACHE_MAX:
                self._cache.popitem(last=False)
        if self._clock_s() >= identity.expires_unix_s:
            when = datetime.fromtimestamp(identity.expires_unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise Unauthenticated(
                f"expired token: it expired at {when} (unix time {identity.expires_unix_s}); issue a new one"
            )
        return identity

    def _verify_signature_and_claims(self, token: str) -> Identity:
        if not token:
            raise Unauthenticated("missing token")
        if len(token) > TOKEN_CHARS_MAX:
            raise Unauthenticated(f"malformed token: longer than {TOKEN_CHARS_MAX} characters")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise Unauthenticated(f"malformed token: expected {PREFIX}.<kid>.<payload>.<signature>")
        _, kid, payload_text, signature_text = parts
        signature = _b64decode(signature_text, what="signature")
        payload = _b64decode(payload_text, what="payload")
        public_key = self._keys.get(kid)
        if public_key is None:
            raise Unauthenticated("bad signature: token was signed by a key this replica does not trust")
        try:
            public_key.verify(signature, f"{PREFIX}.{kid}.{payload_text}".encode("ascii"))
        except InvalidSignature:
            raise Unauthenticated("bad signature: token signature does not verify") from None
        # only signed bytes get parsed
        sub, role, iat, exp = _claims(payload)
        if iat > self._clock_s() + CLOCK_SKEW_S:
            raise Unauthenticated("token not yet valid: issued in the future (check clocks)")
        return Identity(subject=sub, role=role, expires_unix_s=exp, key_id=kid)


# --- key files ---------------------------------------------------------------------


def generate_key_pair(directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new signing key (mode 0600) and its public key; return both paths."""
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise InvalidInput(f"a key pair already exists in {directory}; refusing to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(private_path, private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file that only its owner can read (created 0600, never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 signing key in a PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path} is not an Ed25519 public key")
    return key


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of an `authorization: Bearer TOKEN` entry; raise Unauthenticated if absent or odd."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated("missing token: send call metadata 'authorization: Bearer <token>'")
    if len(values) > 1:
        raise Unauthenticated("malformed token: more than one authorization entry")
    value = values[0]
    if isinstance(value, bytes):
        raise Unauthenticated("malformed token: authorization value must be text")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed token: authorization must be 'Bearer <token>'")
    return token.strip()
