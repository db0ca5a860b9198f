"""tcp-*: Toxiproxy's toxics, applied transparently to the TCP traffic a target serves on a port.

``tcp-latency`` (``latency``, ``jitter`` ms), ``tcp-bandwidth`` (``rate``
KB/s), ``tcp-slow-close`` (``delay`` ms), ``tcp-timeout`` (``timeout`` ms, 0:
hold until recovered), ``tcp-reset-peer`` (``timeout`` ms), ``tcp-slicer``
(``average_size``, ``size_variation`` bytes, ``delay`` microseconds),
``tcp-limit-data`` (``bytes``) and ``tcp-down``. Each takes ``port``
(required), ``stream`` ("downstream", the default, or "upstream") and
``toxicity`` (0 to 1, per connection). The daemon redirects the port to a
proxy of its own in the target's network namespace; the clients change
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind
from .base import InjectContext

STREAMS = {"downstream": pb.TcpToxic.STREAM_DOWNSTREAM, "upstream": pb.TcpToxic.STREAM_UPSTREAM}
COMMON = ("port", "stream", "toxicity")
# Each toxic's own fields, with their units, as Toxiproxy names them.
TOXICS: dict[str, dict[str, str]] = {
    "latency": {"latency": "ms", "jitter": "ms"},
    "bandwidth": {"rate": "KB/s"},
    "slow_close": {"delay": "ms"},
    "timeout": {"timeout": "ms"},
    "reset_peer": {"timeout": "ms"},
    "slicer": {"average_size": "bytes", "size_variation": "bytes", "delay": "microseconds"},
    "limit_data": {"bytes": "bytes"},
    "down": {},
}
REQUIRED = {"latency": ("latency",), "bandwidth": ("rate",), "slicer": ("average_size",), "limit_data": ("bytes",)}
MAX_VALUE = 1 << 40


class TcpToxic(AppliedKind):
    field = "tcp_toxic"

    def __init__(self, toxic: str) -> None:
        self.toxic = toxic
        self.name = "tcp-" + toxic.replace("_", "-")
        # tcp-down faults every connection, either way: it takes the port alone.
        self.parameters = ("port",) if toxic == "down" else (*COMMON, *TOXICS[toxic])

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        port = params.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ChaosSpecError("port", f"is required: the TCP port the target serves, 1 to 65535; got {port!r}")
        stream = params.get("stream", "downstream")
        if stream not in STREAMS:
            raise ChaosSpecError("stream", f"must be one of {', '.join(STREAMS)}; got {stream!r}")
        toxicity = params.get("toxicity", 1.0)
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or math.isnan(toxicity) \
                or not 0 <= toxicity <= 1:
            raise ChaosSpecError("toxicity", f"must be a number from 0 to 1 (the share of connections); "
                                             f"got {toxicity!r}")
        checked: dict[str, Any] = {"port": port, "stream": stream, "toxicity": float(toxicity)}
        for name, unit in TOXICS[self.toxic].items():
            value = params.get(name)
            if value is None:
                if name in REQUIRED.get(self.toxic, ()):
                    raise ChaosSpecError(name, f"is required: an integer ({unit})")
                value = 0
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
                raise ChaosSpecError(name, f"must be a whole number of {unit}, 0 or more; got {value!r}")
            checked[name] = value
        if self.toxic == "bandwidth" and checked["rate"] < 1:
            raise ChaosSpecError("rate", "must be 1 KB/s or more; got 0")
        if self.toxic == "slicer":
            if checked["average_size"] < 1:
                raise ChaosSpecError("average_size", "must be 1 byte or more; got 0")
            if checked["size_variation"] >= checked["average_size"]:
                raise ChaosSpecError("size_variation", f"must be smaller than average_size "
                                                       f"({checked['average_size']}); got {checked['size_variation']}")
        return checked

    def message(self, params: Mapping[str, Any], seed: int = 0) -> pb.TcpToxic:
        own = getattr(pb.TcpToxic, "".join(part.capitalize() for part in self.toxic.split("_")))(
            **{name: params[name] for name in TOXICS[self.toxic]})
        if self.toxic == "down":
            return pb.TcpToxic(port=params["port"], down=own)
        return pb.TcpToxic(port=params["port"], stream=STREAMS[params["stream"]], toxicity=params["toxicity"],
                           seed=seed, **{self.toxic: own})

    def build(self, ctx: InjectContext, params: Mapping[str, Any]) -> pb.TcpToxic:
        return self.message(params, ctx.seed)


TCP_TOXICS = tuple(TcpToxic(toxic) for toxic in TOXICS)
