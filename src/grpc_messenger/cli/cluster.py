"""`messenger cluster`: run N local replicas as child processes, stop them all cleanly.

Each replica is a real `messenger serve` process started through
grpc_messenger.launch, so killing one (to see reads go on without it) is
exactly what happens on a real host.
"""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grpc_messenger.errors import MessengerError
from grpc_messenger.launch import ServeProcess, stop_all

PEER_TOKEN_FILE = "peer.token"


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Where one local replica listens, keeps its data, and is reached by its peers."""

    name: str
    listen: str  # host:port, port 0 for any free port
    data_dir: Path
    connect_host: str  # the host its peers dial (loopback when it listens on every interface)

    @property
    def port(self) -> int:
        """The port asked for (0: any)."""
        return int(self.listen.rpartition(":")[2])


def plan(*, replicas: int, host: str, base_port: int, data_dir: Path) -> list[ReplicaSpec]:
    """The specs of a local cluster: consecutive ports (or any free ones), one data directory each."""
    if not 1 <= replicas <= 9:
        raise MessengerError("a local cluster has 1 to 9 replicas")
    if not 0 <= base_port <= 65535 - replicas:
        raise MessengerError(f"base port {base_port} leaves no room for {replicas} replicas")
    listen_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else listen_host
    return [
        ReplicaSpec(
            name=f"replica-{i + 1}",
            listen=f"{listen_host}:{base_port + i if base_port else 0}",
            data_dir=data_dir / f"replica-{i + 1}",
            connect_host=connect_host,
        )
        for i in range(replicas)
    ]


def start(specs: list[ReplicaSpec], *, store: str, log_level: str, extra: Sequence[str] = ()) -> list[ServeProcess]:
    """Start every replica, each repairing with all the others, and wait until all are ready.

    With fixed ports the peers are known up front. With port 0 they are not: the
    replicas start alone, report their ports, and are restarted on those ports
    with their peers (they are empty and unused at that point, so nothing is lost).
    """
    replicas = [
        ServeProcess(data_dir=spec.data_dir, name=spec.name, listen=spec.listen, log_level=log_level) for spec in specs
    ]
    ports_known = all(spec.port for spec in specs)
    try:
        for spec, replica in zip(specs, replicas, strict=True):
            peers = _peers(specs, [s.port for s in specs], spec) if ports_known else ()
            replica.args = _serve_args(store=store, peers=peers, extra=extra)
            replica.spawn()
        for replica in replicas:
            replica.wait_ready()
        if not ports_known and len(replicas) > 1:
            ports = [replica.port for replica in replicas]
            for spec, replica in zip(specs, replicas, strict=True):
                replica.args = _serve_args(store=store, peers=_peers(specs, ports, spec), extra=extra)
                replica.stop()
                replica.start()
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def _peers(specs: list[ReplicaSpec], ports: list[int], me: ReplicaSpec) -> tuple[str, ...]:
    return tuple(f"{spec.connect_host}:{port}" for spec, port in zip(specs, ports, strict=True) if spec is not me)


def _serve_args(*, store: str, peers: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    return ("--store", store, *(arg for peer in peers for arg in ("--peer", peer)), *extra)


def restart_hint(replica: ServeProcess) -> str:
    """The `messenger serve` command line that restarts this replica by hand, on its port."""
    argv = ["messenger", "serve", "--listen", replica.listen, "--data-dir", str(replica.data_dir), *replica.args]
    return shlex.join(argv)


def security_args(*, data_dir: Path, host: str, auth: bool, secure: bool) -> tuple[list[str], list[str]]:
    """`messenger serve` flags for a local cluster with auth (and TLS if `secure`), and what clients need.

    The key pair (data_dir/keys) and the dev certificates (data_dir/tls) are made
    on first start and reused after, so tokens and the CA stay valid across restarts.
    """
    from grpc_messenger.security import tls, tokens

    args: list[str] = []
    client_env: list[str] = []
    if auth or secure:
        keys_dir = data_dir / "keys"
        if not (keys_dir / tokens.PUBLIC_KEY_FILE).exists():
            tokens.generate_key_pair(keys_dir)
        args += ["--auth-public-key", str(keys_dir / tokens.PUBLIC_KEY_FILE)]
        # the replicas repair each other with a peer token, renewed on every start
        peer_token = tokens.issue(
            tokens.load_private_key(keys_dir / tokens.PRIVATE_KEY_FILE),
            subject="local-cluster",
            role=tokens.Role.PEER,
            ttl_s=366 * 86400,
        )
        tokens.write_private(keys_dir / PEER_TOKEN_FILE, peer_token.encode("ascii"))
        args += ["--peer-token-file", str(keys_dir / PEER_TOKEN_FILE)]
    if secure:
        paths = tls.dev_cert_paths(data_dir / "tls")
        if not paths.ca_cert.exists():
            hosts = dict.fromkeys([*tls.DEV_HOSTS_DEFAULT, host.strip("[]")])
            tls.make_dev_certs(data_dir / "tls", hosts=tuple(hosts), overwrite=True)
        args += ["--tls-cert", str(paths.server_cert), "--tls-key", str(paths.server_key)]
        args += ["--peer-tls-ca", str(paths.ca_cert)]
        client_env.append(f"export MESSENGER_TLS_CA={paths.ca_cert}")
    return args, client_env


def stop(running: list[ServeProcess]) -> dict[str, int | None]:
    """SIGTERM every live replica (they drain), wait, SIGKILL stragglers; exit codes by name."""
    return stop_all(running)


def supervise(running: list[ServeProcess], *, on_exit: Callable[[ServeProcess, int], None]) -> None:
    """Block until SIGINT/SIGTERM; report replicas that die meanwhile (the rest go on)."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    reported: set[str] = set()
    try:
        while not stopping:
            for replica in running:
                code = replica.process.poll() if replica.process is not None else None
                if code is not None and replica.name not in reported:
                    reported.add(replica.name)
                    on_exit(replica, code)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
