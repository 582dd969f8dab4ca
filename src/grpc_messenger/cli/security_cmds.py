"""`messenger keys`, `messenger token`, `messenger certs`: the security chores, one command each.

Defaults match `messenger cluster`: keys under messenger-data/keys, certificates
under messenger-data/tls, so commands run in the same directory fit together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from grpc_messenger.cli import render
from grpc_messenger.security import tls, tokens

DATA_DIR_DEFAULT = Path("messenger-data")
KEYS_DIR_DEFAULT = DATA_DIR_DEFAULT / "keys"
TLS_DIR_DEFAULT = DATA_DIR_DEFAULT / "tls"

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group()
def keys() -> None:
    """Manage the token signing key pair."""


@keys.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=KEYS_DIR_DEFAULT,
    show_default=True,
    help="Where signing.key (secret, 0600) and signing.pub go.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair (every issued token stops working).")
def keys_init(directory: Path, force: bool) -> None:
    """Create the Ed25519 key pair: the private key signs tokens, replicas get only the public key."""
    private_path, public_path = tokens.generate_key_pair(directory, overwrite=force)
    out.print(f"signing key (keep secret): {private_path}")
    out.print(f"public key (give to every replica): {public_path}")
    out.print(f"  messenger serve --auth-public-key {public_path} ...")


@click.group()
def token() -> None:
    """Issue access tokens."""


@token.command("issue")
@click.argument("subject")
@click.option("--ttl", default="30d", show_default=True, help="Lifetime: 30d, 12h, 15m, 3600s, 2w.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=KEYS_DIR_DEFAULT / tokens.PRIVATE_KEY_FILE,
    show_default=True,
    envvar="MESSENGER_SIGNING_KEY",
    help="The signing key [env MESSENGER_SIGNING_KEY].",
)
@click.option("--peer", is_flag=True, help="A peer token for replica-to-replica calls; SUBJECT is a replica name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with the token and its expiry.")
def token_issue(subject: str, ttl: str, key_path: Path, peer: bool, as_json: bool) -> None:
    """Print a token for SUBJECT (an email address): export MESSENGER_TOKEN=$(messenger token issue bob@example.org)."""
    role = tokens.Role.PEER if peer else tokens.Role.USER
    ttl_s = tokens.parse_ttl(ttl)
    signed = tokens.issue(tokens.load_private_key(key_path), subject=subject, role=role, ttl_s=ttl_s)
    if as_json:
        click.echo(render.to_json({"token": signed, "subject": subject, "role": role.value, "ttl_s": ttl_s}))
        return
    click.echo(signed)
    if sys.stdout.isatty():
        err.print(f"[dim]token for {subject} ({role.value}), valid {ttl}; sent as 'authorization: Bearer <token>'[/]")


@click.group()
def certs() -> None:
    """Create TLS certificates."""


@certs.command("dev")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=TLS_DIR_DEFAULT,
    show_default=True,
    help="Where ca.pem, server.pem/.key and client.pem/.key go.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Name or IP the server certificate is valid for; repeat [default: localhost, 127.0.0.1, ::1].",
)
@click.option("--force", is_flag=True, help="Replace existing certificates.")
def certs_dev(directory: Path, hosts: tuple[str, ...], force: bool) -> None:
    """A local CA with a server certificate (for the replicas) and a client certificate (for mutual TLS)."""
    paths = tls.make_dev_certs(directory, hosts=hosts or tls.DEV_HOSTS_DEFAULT, overwrite=force)
    out.print(f"CA: {paths.ca_cert} (clients trust this: --tls-ca / MESSENGER_TLS_CA)")
    out.print(f"server: {paths.server_cert} {paths.server_key} (messenger serve --tls-cert ... --tls-key ...)")
    out.print(f"client: {paths.client_cert} {paths.client_key} (mutual TLS: --client-cert ... --client-key ...)")
