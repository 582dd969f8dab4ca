"""Typed configuration: built once at start-up, frozen, passed down explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc_messenger.errors import InvalidInput
from grpc_messenger.model import BODY_BYTES_MAX_DEFAULT

DEFAULT_PORTS = (50051, 50052, 50053)
DEFAULT_SERVERS = tuple(f"127.0.0.1:{port}" for port in DEFAULT_PORTS)
# One gRPC frame may carry a whole batch or page; both are bounded well below this.
GRPC_MESSAGE_BYTES_MAX = 16 * 1024 * 1024
PAGE_BYTES_MAX = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Setting:
    """How a person sets one ServerConfig field: its `serve` flag, environment variable and help.

    The field's default is the only default; `messenger serve` derives its options
    from these (grpc_messenger.cli.serve_settings) and reads the same names from
    the replica config file.
    """

    help: str
    flag: str | None = None  # default: --field-name
    env: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    must_exist: bool = False  # a path to a file that must exist
    address: bool = False  # host:port values; a list of them may be comma-separated
    hidden: bool = False  # for launchers, not people: no help, no config-file key
    # the flag, env and file key name a file holding the value (secrets stay out of `ps`);
    # value_env may hold the value itself
    from_file: bool = False
    value_env: str | None = None
    secret: bool = False  # never printed


def setting(default: Any, *, help: str, **how: Any) -> Any:
    """A ServerConfig field with its default and how a person sets it (see `Setting`)."""
    return field(default=default, metadata={"setting": Setting(help=help, **how)})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything one replica needs to run."""

    listen: tuple[str, ...] = setting(
        (f"127.0.0.1:{DEFAULT_PORTS[0]}",),
        help="Address to listen on; repeat for several.",
        env="MESSENGER_LISTEN",
        metavar="HOST:PORT",
        address=True,
    )
    data_dir: Path = setting(
        Path("messenger-data/replica-1"), help="Where the SQLite store lives.", env="MESSENGER_DATA_DIR"
    )
    store: str = setting(
        "sqlite",
        help="sqlite: durable (fsync before every acknowledgement); memory: for tests, lost on exit.",
        choices=("sqlite", "memory"),
    )
    body_bytes_max: int = setting(
        BODY_BYTES_MAX_DEFAULT, help="Largest message body accepted, in bytes.", flag="--max-body-bytes"
    )
    batch_messages_max: int = setting(1000, help="Most messages one SendBatch may carry.")
    fetch_limit_default: int = setting(500, help="Page size of a Fetch that asks for none.")
    ack_keys_max: int = setting(10_000, help="Most keys one Ack may carry.")
    receive_all_max: int = setting(10_000, help="Most messages one ReceiveAll (the original protocol) returns.")
    grace_s: float = setting(10.0, help="Seconds in-flight calls get to finish on SIGTERM.", flag="--grace")
    ready_file: Path | None = setting(None, help="Write the ready record here once serving.", hidden=True)
    # security (docs/security.md): auth is on when public keys are given, TLS when cert+key are
    auth_public_keys: tuple[Path, ...] = setting(
        (),
        help="Require tokens signed by this key (messenger keys init); repeat to rotate keys.",
        flag="--auth-public-key",
        env="MESSENGER_AUTH_PUBLIC_KEY",
        must_exist=True,
    )
    tls_cert: Path | None = setting(
        None,
        help="TLS certificate (PEM) for every listener, with --tls-key.",
        env="MESSENGER_TLS_CERT",
        must_exist=True,
    )
    tls_key: Path | None = setting(
        None, help="TLS private key (PEM) for --tls-cert.", env="MESSENGER_TLS_KEY", must_exist=True
    )
    tls_client_ca: Path | None = setting(
        None,
        help="Mutual TLS: require client certificates signed by this CA.",
        env="MESSENGER_TLS_CLIENT_CA",
        must_exist=True,
    )
    insecure: bool = setting(False, help="Allow listening beyond loopback without auth and TLS (warns on every start).")
    peer_token: str = setting(
        "",
        help="File holding a peer token (messenger token issue NAME --peer) for repair calls to peers "
        "[or the token itself in env MESSENGER_PEER_TOKEN].",
        flag="--peer-token-file",
        env="MESSENGER_PEER_TOKEN_FILE",
        from_file=True,
        value_env="MESSENGER_PEER_TOKEN",
        secret=True,
    )
    peer_tls_ca: Path | None = setting(
        None, help="Call peers over TLS, trusting this CA.", env="MESSENGER_PEER_TLS_CA", must_exist=True
    )
    # limits; 0 = unlimited
    quota_messages_max: int = setting(
        1_000_000, help="Most messages queued per mailbox (0 = unlimited).", flag="--quota-messages"
    )
    quota_bytes_max: int = setting(
        1024 * 1024 * 1024, help="Most body bytes queued per mailbox (0 = unlimited).", flag="--quota-bytes"
    )
    send_rate_per_s: float = setting(
        0.0,
        help="Messages per second each identity (client host without auth) may send (0 = unlimited).",
        flag="--send-rate",
    )
    send_burst: int = setting(0, help="Token-bucket size for --send-rate (0 = one second of --send-rate).")
    peers: tuple[str, ...] = setting(
        (),
        help="Another replica to repair with (anti-entropy); repeat for each.",
        flag="--peer",
        env="MESSENGER_PEERS",
        metavar="HOST:PORT",
        address=True,
    )
    repair_interval_s: float = setting(5.0, help="Seconds between repair rounds (jittered).", flag="--repair-interval")
    repair_rate_per_s: float = setting(5000.0, help="Most messages per second repair pulls.", flag="--repair-rate")
    repair_timeout_s: float = setting(
        10.0, help="Seconds each call to a peer during repair may take.", flag="--repair-timeout"
    )
    # longer than any retry window (the client outbox expires after 7 days), so a
    # replica that was away cannot bring deleted mail back
    tombstone_grace_s: float = setting(
        30 * 24 * 3600.0,
        help="Seconds a tombstone of an acked message is kept (must exceed the senders' outbox expiry).",
        flag="--tombstone-grace",
    )
    # every stored row checked against its checksum: a pass at start, then one per interval
    scrub_rows_per_s: float = setting(5000.0, help="Most stored rows per second the scrub checks.", flag="--scrub-rate")
    scrub_interval_s: float = setting(
        3600.0, help="Seconds between scrub passes over every stored row.", flag="--scrub-interval"
    )
    metrics_listen: str | None = setting(
        None,
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (off by default).",
        env="MESSENGER_METRICS_LISTEN",
        metavar="HOST:PORT",
        address=True,
    )

    def __post_init__(self) -> None:
        if not self.listen:
            raise InvalidInput("at least one --listen address is needed")
        for address in (*self.listen, *self.peers, *([self.metrics_listen] if self.metrics_listen else [])):
            parse_listen(address)
        if len(set(self.peers)) != len(self.peers):
            raise InvalidInput("peer addresses must be distinct")
        if not 0.05 <= self.repair_interval_s <= 3600:
            raise InvalidInput("repair interval must be between 0.05 and 3600 seconds")
        if self.repair_rate_per_s <= 0:
            raise InvalidInput("repair rate must be positive")
        if not 0 < self.repair_timeout_s <= 3600:
            raise InvalidInput("repair timeout must be between 0 and 3600 seconds")
        if self.scrub_rows_per_s <= 0 or self.scrub_interval_s <= 0:
            raise InvalidInput("scrub rate and interval must be positive")
        if self.tombstone_grace_s < 1:
            raise InvalidInput("tombstone grace period must be at least 1 second")
        if self.store not in ("sqlite", "memory"):
            raise InvalidInput(f"unknown store {self.store!r}; choose sqlite or memory")
        if not 1 <= self.body_bytes_max <= 1024 * 1024:
            raise InvalidInput("max body size must be between 1 byte and 1 MiB")
        if self.grace_s < 0:
            raise InvalidInput("grace period must not be negative")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInput("--tls-client-ca needs --tls-cert and --tls-key")
        if self.quota_messages_max < 0 or self.quota_bytes_max < 0:
            raise InvalidInput("quotas must not be negative (0 = unlimited)")
        if self.send_rate_per_s < 0 or self.send_burst < 0:
            raise InvalidInput("send rate and burst must not be negative (0 = unlimited / default)")

    @property
    def auth(self) -> bool:
        """True when calls must carry a token."""
        return bool(self.auth_public_keys)

    @property
    def tls(self) -> bool:
        """True when listeners use TLS."""
        return self.tls_cert is not None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the client library needs: replicas, quorum, deadlines, batching."""

    servers: tuple[str, ...] = DEFAULT_SERVERS
    write_quorum: int = 1
    timeout_s: float = 5.0
    linger_s: float = 0.001
    batch_messages_max: int = 500
    page_size: int = 500
    data_dir: Path | None = None
    metadata: tuple[tuple[str, str], ...] = field(default=())
    # security: a bearer token sent on every call; TLS when `tls` or `tls_ca` is set
    token: str = ""
    tls: bool = False
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    # hinted hand-off: retry deliveries a replica missed; report them when expired
    outbox: bool = True
    outbox_expiry_s: float = 7 * 24 * 3600.0
    outbox_interval_s: float = 1.0
    # how long a delivery may stay unanswered after its send returned before the
    # outbox records it (most are answered sooner and never cost a disk write)
    outbox_pending_grace_s: float = 0.05

    def __post_init__(self) -> None:
        if not self.servers:
            raise InvalidInput("no replica addresses given")
        if len(set(self.servers)) != len(self.servers):
            raise InvalidInput("replica addresses must be distinct")
        for address in self.servers:
            parse_listen(address)
        if not 1 <= self.write_quorum <= len(self.servers):
            raise InvalidInput(f"write quorum must be between 1 and {len(self.servers)} (the number of replicas)")
        if self.timeout_s <= 0:
            raise InvalidInput("timeout must be positive")
        if not 0 <= self.linger_s <= 1:
            raise InvalidInput("linger must be between 0 and 1 second")
        if not 1 <= self.batch_messages_max <= 1000:
            raise InvalidInput("batch size must be between 1 and 1000")
        if not 1 <= self.page_size <= 1000:
            raise InvalidInput("page size must be between 1 and 1000")
        if self.outbox_expiry_s <= 0:
            raise InvalidInput("outbox expiry must be positive")
        if not 0 <= self.outbox_pending_grace_s <= 10:
            raise InvalidInput("outbox pending grace must be between 0 and 10 seconds")
        if not 0.01 <= self.outbox_interval_s <= 3600:
            raise InvalidInput("outbox interval must be between 0.01 and 3600 seconds")
        if not self.token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in self.token):
            raise InvalidInput("token must be printable ASCII without spaces (paste it without 'Bearer')")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise InvalidInput("a client certificate needs both a certificate and a key file")

    @property
    def uses_tls(self) -> bool:
        """True when channels to the replicas use TLS."""
        return self.tls or self.tls_ca is not None or self.tls_client_cert is not None

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent on every call: `metadata` plus `authorization: Bearer TOKEN` if a token is set."""
        if not self.token:
            return self.metadata
        return (*self.metadata, ("authorization", f"Bearer {self.token}"))


def parse_listen(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into (host, port); raise InvalidInput if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InvalidInput(f"address {address!r} is not host:port (e.g. 127.0.0.1:50051 or [::1]:50051)")
    port = int(port_text)
    if port > 65535:
        raise InvalidInput(f"port {port} in {address!r} is out of range")
    if host.startswith("[") != host.endswith("]"):
        raise InvalidInput(f"address {address!r} has unbalanced brackets")
    return host.strip("[]"), port


def servers_from_text(text: str) -> tuple[str, ...]:
    """Parse a comma- or space-separated replica list (as in MESSENGER_SERVERS)."""
    servers = tuple(part for part in text.replace(",", " ").split() if part)
    if not servers:
        raise InvalidInput("replica list is empty")
    return servers


def servers_from_env(name: str) -> tuple[str, ...]:
    """A replica list from an environment variable; empty if unset or blank."""
    text = os.environ.get(name, "")
    return servers_from_text(text) if text.strip() else ()
