"""Where a replica may listen: beyond loopback only with authentication and TLS, or when forced."""

from __future__ import annotations

import ipaddress

from grpc_messenger.config import ServerConfig, parse_listen
from grpc_messenger.errors import InvalidInput


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; false for wildcards and everything else."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def exposed_addresses(config: ServerConfig) -> list[str]:
    """The listen addresses reachable from beyond this host."""
    return [address for address in config.listen if not is_loopback(parse_listen(address)[0])]


def check_exposure(config: ServerConfig) -> str | None:
    """Refuse a non-loopback listener without auth and TLS; return a warning if `insecure` forces it."""
    exposed = exposed_addresses(config)
    if not exposed or (config.auth and config.tls):
        return None
    missing = " and ".join(name for name, on in (("authentication", config.auth), ("TLS", config.tls)) if not on)
    if not config.insecure:
        raise InvalidInput(
            f"refusing to listen on {', '.join(exposed)} without {missing}: anyone who can reach it could read "
            "and send as anyone. Give --auth-public-key and --tls-cert/--tls-key, listen on 127.0.0.1, "
            "or pass --insecure to accept the risk"
        )
    return f"INSECURE: listening on {', '.join(exposed)} without {missing} (--insecure)"
