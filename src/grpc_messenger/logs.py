"""Log output: one event per line on stderr, as key=value (the default) or as one JSON object.

Every log call in the package writes `event=name key=value ...`; the JSON form
parses those pairs into fields, so a log pipeline gets `{"event": "replica.started",
"replica": "r-1", ...}` without a second set of log calls.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

FORMATS = ("kv", "json")
KV_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# key=value, where the value is a quoted repr ('..' or ".."), a call-like repr such as
# OperationalError('disk is full'), or runs to the next space
_QUOTED = r"'(?:[^'\\]|\\.)*'" + "|" + r'"(?:[^"\\]|\\.)*"'
_PAIR = re.compile(rf"([A-Za-z_][\w.]*)=({_QUOTED}|[\w.]*\((?:{_QUOTED}|[^)'\"])*\)\S*|\S*)")


def parse_pairs(message: str) -> dict[str, str]:
    """The key=value pairs of one log message (quotes of repr'd values removed)."""
    fields: dict[str, str] = {}
    for key, value in _PAIR.findall(message):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, the message's key=value pairs, and the message."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for key, value in parse_pairs(message).items():
            data.setdefault(key, value)
        data["message"] = message
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(*, level: str, log_format: str = "kv") -> None:
    """Send the package's logs to stderr at `level` in `log_format` ("kv" or "json")."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(KV_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("grpc").setLevel(logging.ERROR)
