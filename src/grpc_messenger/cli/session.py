"""One client command's use of the library: home checked first, failures explained in one line."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from grpc_messenger.cli.diagnose import tls_hint
from grpc_messenger.cli.local_files import check_home, describe
from grpc_messenger.cli.settings import home_of
from grpc_messenger.client.sync import Messenger
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import MessengerError, Unavailable
from grpc_messenger.model import QuorumNotReached


@contextmanager
def client_session(config: ClientConfig) -> Iterator[Messenger]:
    """A Messenger over `config`, its home checked; local file errors and TLS mismatches said plainly."""
    home = home_of(config)
    check_home(home)
    try:
        with Messenger(config) as messenger:
            yield messenger
    except QuorumNotReached:
        raise  # the command reports it with its per-replica outcomes
    except Unavailable as exc:
        hint = tls_hint(config)
        if hint is None:
            raise
        raise Unavailable(f"no replica answered: {hint}") from exc
    except MessengerError:
        raise
    except (OSError, sqlite3.Error) as exc:
        raise describe(exc, home) from exc
