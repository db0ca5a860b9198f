"""Structured logging: one JSON object per line on stderr.

gRPC's C core writes its own lines to file descriptor 2 (handshake failures
among them). ``configure`` points fd 2 at a pipe and turns each such line
into a JSON entry, so the log stays one JSON object per line.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
MAX_FIELD_CHARS = 256  # a longer string in a logged request is cut, saying so
logger = logging.getLogger("pytest_chaos_daemon")
# "E1126 02:51:24.123456   1234 ssl_transport_security.cc:1800] message"
_NATIVE_LINE = re.compile(r"([DIWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] ?(.*)")
_NATIVE_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, capture_native: bool = True) -> None:
    stream: TextIO = sys.stderr
    if capture_native:
        stream = _capture_native_stderr()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonLines())
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log(level: int, msg: str, exc_info: BaseException | None = None, **fields: Any) -> None:
    """Log ``msg`` with ``fields`` as extra JSON keys."""
    logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})


def truncate_fields(value: Any) -> Any:
    """``value`` with every string longer than MAX_FIELD_CHARS cut, saying how long it was."""
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return f"{value[:MAX_FIELD_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: truncate_fields(v) for k, v in value.items()}
    if isinstance(value, list):
        return [truncate_fields(v) for v in value]
    return value


def _capture_native_stderr() -> TextIO:
    """Keep the real stderr for JSON lines; route whatever else writes to fd 2 through a pipe."""
    real = os.fdopen(os.dup(2), "w", buffering=1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    relay = threading.Thread(target=_relay_native_lines, args=(read_end,), name="native-log", daemon=True)
    relay.start()

    def drain() -> None:
        # At exit (a SystemExit message printed last included): close our end, let the relay finish.
        sys.stderr.flush()
        os.close(2)
        relay.join(timeout=2)

    atexit.register(drain)
    return real


def _relay_native_lines(read_end: int) -> None:
    with os.fdopen(read_end, "r", errors="replace") as pipe:
        for line in pipe:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            match = _NATIVE_LINE.match(line)
            if match:
                log(_NATIVE_LEVELS[match.group(1)], match.group(3), source="grpc", location=match.group(2))
            else:
                log(logging.WARNING, line, source="stderr")
