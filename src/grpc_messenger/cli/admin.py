"""`messenger admin backup|check|compact`: operator chores on a replica's data directory.

backup and check read only and are safe on a running replica; compact needs it
stopped. Exit status: 0 done and healthy, 1 damage found (check) or the chore
failed, 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console

from grpc_messenger.config import DEFAULT_SERVERS, ServerConfig, servers_from_env
from grpc_messenger.display import escape_control
from grpc_messenger.errors import StoreError
from grpc_messenger.server import compaction, probe
from grpc_messenger.store import maintenance

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_DATA_DIR",
    required=True,
    help="The replica's data directory [env MESSENGER_DATA_DIR].",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")


@click.group()
def admin() -> None:
    """Operator chores on a replica's store: backup, check, compact."""


def _print_check(report: maintenance.CheckReport, *, as_json: bool) -> None:
    if as_json:
        record = asdict(report) | {"ok": report.ok, "path": str(report.path)}
        out.print_json(json.dumps(record))
        return
    integrity = "ok" if report.integrity == ("ok",) else "; ".join(report.integrity[:5])
    out.print(f"store: {report.path}")
    out.print(f"integrity: {escape_control(integrity)}")
    out.print(f"rows checked: {report.rows_checked}, damaged: {report.damaged_count}")
    for row in report.damaged:
        out.print(f"  damaged seq={row.seq} mailbox={escape_control(row.mailbox)} key={escape_control(row.key)}")
    out.print("[green]ok[/]" if report.ok else "[red]damaged[/]: repair restores damaged rows from peers")


def _report_and_exit(run: Callable[[], maintenance.CheckReport], *, as_json: bool) -> None:
    """Run a backup or a check, print its report, exit 0 when the store is sound and 1 otherwise."""
    try:
        report = run()
    except StoreError as exc:
        _fail(exc)
        return
    _print_check(report, as_json=as_json)
    sys.exit(0 if report.ok else 1)


def _fail(exc: StoreError) -> None:
    err.print(f"[red]error[/]: {escape_control(str(exc))}")
    sys.exit(1)


@admin.command("backup")
@_DATA_DIR
@click.argument("out_path", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
@_JSON
def backup_command(data_dir: Path, out_path: Path, as_json: bool) -> None:
    """Copy the store to OUT, consistently, while the replica serves (SQLite online backup).

    The copy is checked before this returns. To restore: stop the replica, put OUT
    in place as DATA_DIR/replica.sqlite3 (remove replica.sqlite3-wal and -shm), and
    start it with --peer: repair brings what was written since, and the peers'
    tombstones delete what was acked since.
    """
    _report_and_exit(lambda: maintenance.backup(maintenance.store_file(data_dir), out_path), as_json=as_json)


@admin.command("check")
@_DATA_DIR
@_JSON
def check_command(data_dir: Path, as_json: bool) -> None:
    """Integrity check and per-row checksums, read-only (a running replica is fine); exit 1 on damage."""
    _report_and_exit(lambda: maintenance.check(maintenance.store_file(data_dir)), as_json=as_json)


@admin.command("compact")
@_DATA_DIR
@click.option(
    "--tombstone-grace",
    "tombstone_grace_s",
    type=click.FloatRange(min=1),
    default=ServerConfig().tombstone_grace_s,
    show_default=True,
    help="Purge tombstones older than this many seconds (as the replica's own --tombstone-grace).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="The replica's peers (repeat; default MESSENGER_PEERS): a tombstone goes only when each confirms.",
)
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_PEER_TOKEN_FILE",
    help="A peer token, when the peers require auth [env MESSENGER_PEER_TOKEN_FILE].",
)
@click.option(
    "--peer-tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_PEER_TLS_CA",
    help="Call the peers over TLS trusting this CA [env MESSENGER_PEER_TLS_CA].",
)
@_JSON
def compact_command(
    data_dir: Path,
    tombstone_grace_s: float,
    peers: tuple[str, ...],
    peer_token_file: Path | None,
    peer_tls_ca: Path | None,
    as_json: bool,
) -> None:
    """Purge expired tombstones and give the space back to the file system; the replica must be stopped.

    Give it the replica's peers: as on a running replica, a tombstone past the grace
    goes only when every peer confirms it holds no queued copy. Without peers every
    tombstone past the grace goes (right for a replica that has none).
    """
    peers = peers or servers_from_env("MESSENGER_PEERS")
    token = peer_token_file.read_text().strip() if peer_token_file is not None else ""

    async def purge(path: Path) -> int:
        stats = await compaction.purge_expired(
            path, tombstone_grace_s=tombstone_grace_s, peers=peers, peer_token=token, peer_tls_ca=peer_tls_ca
        )
        return stats.purged

    try:
        report = maintenance.compact(data_dir, purge=purge)
    except StoreError as exc:
        _fail(exc)
        return
    if as_json:
        out.print_json(json.dumps(asdict(report) | {"path": str(report.path)}))
        return
    out.print(
        f"compacted {report.path}: {report.tombstones_purged} tombstones purged, "
        f"{report.bytes_before} -> {report.bytes_after} bytes"
    )


@admin.command("health")
@click.option("--address", default=DEFAULT_SERVERS[0], show_default=True, help="The replica to ask (host:port).")
@click.option(
    "--service",
    default="",
    help='Health-service name: "" the replica; messenger.MessengerService/writes: NOT_SERVING on a full disk.',
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_TLS_CA",
    help="Use TLS, trusting this CA [env MESSENGER_TLS_CA].",
)
@click.option("--server-name", help="The name the replica's certificate carries, when --address is not it.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the health answer.",
)
def health_command(address: str, service: str, tls_ca: Path | None, server_name: str | None, timeout_s: float) -> None:
    """Ask a replica's grpc.health.v1 service; exit 0 when SERVING, 1 otherwise (container and probe checks)."""
    status = probe.check_health(address, service=service, tls_ca=tls_ca, server_name=server_name, timeout_s=timeout_s)
    out.print(status)
    sys.exit(0 if status == "SERVING" else 1)
