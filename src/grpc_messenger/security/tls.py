"""TLS for replicas and clients, and a local development CA (`messenger certs dev`).

Server side: a certificate and key on every listener, and optionally a CA whose
client certificates are required (mutual TLS). Client side: the CA to trust and,
for mutual TLS, a client certificate. Files are read once at start-up.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grpc_messenger.errors import InvalidInput
from grpc_messenger.security.tokens import write_private

DEV_CERT_DAYS = 365
DEV_HOSTS_DEFAULT = ("localhost", "127.0.0.1", "::1")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc}") from exc


def server_credentials(*, cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials for a listener; with `client_ca`, clients must present a certificate it signed."""
    root = _read(client_ca, "client CA") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def channel_credentials(
    *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials for a client: trust `ca` (else the system roots); present cert/key for mutual TLS."""
    if (cert is None) != (key is None):
        raise InvalidInput("a client certificate needs both --client-cert and --client-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "TLS CA") if ca is not None else None,
        private_key=_read(key, "client key") if key is not None else None,
        certificate_chain=_read(cert, "client certificate") if cert is not None else None,
    )


# --- development CA ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Where `messenger certs dev` put its files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def dev_cert_paths(directory: Path) -> DevCerts:
    """The file names used in a dev certificate directory."""
    return DevCerts(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _certificate(
    *,
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    is_ca: bool,
    hosts: Sequence[str] = (),
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DEV_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_dev_certs(directory: Path, *, hosts: Sequence[str] = DEV_HOSTS_DEFAULT, overwrite: bool = False) -> DevCerts:
    """A local CA, a server certificate for `hosts`, and a client certificate (for mutual TLS).

    For a local cluster and tests only: the CA key sits next to the certificates.
    """
    paths = dev_cert_paths(directory)
    if not overwrite and paths.ca_cert.exists():
        raise InvalidInput(f"certificates already exist in {directory}; refusing to replace them")
    if not hosts:
        raise InvalidInput("at least one host name or IP address is needed")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        subject="grpc-messenger dev CA", public_key=ca_key.public_key(), issuer=None, signer=ca_key, now=now, is_ca=True
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        subject="grpc-messenger replica",
        public_key=server_key.public_key(),
        issuer=ca.subject,
        signer=ca_key,
        now=now,
        is_ca=False,
        hosts=hosts,
        # client too: in a mutual-TLS cluster replicas present this certificate to their peers
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        subject="grpc-messenger client",
        public_key=client_key.public_key(),
        issuer=ca.subject,
        signer=ca_key,
        now=now,
        is_ca=False,
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    write_private(paths.ca_key, _key_pem(ca_key))
    write_private(paths.server_key, _key_pem(server_key))
    write_private(paths.client_key, _key_pem(client_key))
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    # the CA certificate last: its presence means "this directory is complete"
    paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
