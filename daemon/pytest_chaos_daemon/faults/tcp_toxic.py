"""tcp-*: Toxiproxy's toxics, applied transparently to a target's TCP traffic on one port.

Eight kinds share one request field (``tcp_toxic``) and one mechanism
(``redirect_proxy.py``): the target's traffic to ``port`` is redirected to
``programs/tcp_proxy.py`` in its network namespace, which applies the toxic
on one stream of a ``toxicity`` share of the connections. ``tcp-down`` runs
no proxy: the reset rule alone refuses the port's connections.
"""

from __future__ import annotations

import math
from typing import Any

from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import InvalidArgument
from ..programs.tcp_proxy import Toxic, toxic_argv
from .redirect_proxy import RedirectProxyFault

FIELD = "tcp_toxic"
STREAMS = {pb.TcpToxic.STREAM_DOWNSTREAM: "downstream", pb.TcpToxic.STREAM_UPSTREAM: "upstream"}
MAX_MS = 24 * 3600 * 1000  # a day
MAX_SLICER_DELAY_US = 10_000_000
MAX_RATE = 10_000_000  # KB/s: 10 GB/s, more than any link here
MAX_BYTES = 1 << 40
# Each toxic's fields and the bound of each.
TOXIC_FIELDS: dict[str, dict[str, int]] = {
    "latency": {"latency": MAX_MS, "jitter": MAX_MS},
    "bandwidth": {"rate": MAX_RATE},
    "slow_close": {"delay": MAX_MS},
    "timeout": {"timeout": MAX_MS},
    "reset_peer": {"timeout": MAX_MS},
    "slicer": {"average_size": 1 << 20, "size_variation": 1 << 20, "delay": MAX_SLICER_DELAY_US},
    "limit_data": {"bytes": MAX_BYTES},
    "down": {},
}
PROXY = "a proxy (the daemon's tcp_proxy, in the target's network namespace) that the port is redirected to " \
        "(iptables REDIRECT); connections open before are reset"
DOWN = "the port's connections refused and reset (iptables REJECT tcp-reset) in the target's network namespace"


def kind_name(toxic: str) -> str:
    return "tcp-" + toxic.replace("_", "-")


class TcpToxic(RedirectProxyFault):
    field = FIELD

    def __init__(self, toxic: str) -> None:
        self.toxic = toxic
        self.kind = kind_name(toxic)
        self.program = None if toxic == "down" else "pytest_chaos_daemon.programs.tcp_proxy"
        self.mechanism_name = DOWN if toxic == "down" else PROXY

    def kind_of(self, request: pb.ApplyRequest) -> str:
        toxic = request.tcp_toxic.WhichOneof("toxic")
        if toxic is None:
            raise InvalidArgument(f"tcp_toxic: no toxic given; one of {', '.join(TOXIC_FIELDS)}")
        return kind_name(toxic)

    def check(self, request: pb.ApplyRequest) -> dict[str, Any]:
        message = request.tcp_toxic
        if message.WhichOneof("toxic") != self.toxic:
            raise InvalidArgument(f"{self.kind}: tcp_toxic.{self.toxic} is required")
        if not 1 <= message.port <= 65535:
            raise InvalidArgument(f"{self.kind}: port is required: the port the target serves, 1 to 65535; "
                                  f"got {message.port}")
        if message.stream not in STREAMS:
            raise InvalidArgument(f"{self.kind}: stream must be one of {', '.join(STREAMS.values())}; "
                                  f"got {message.stream}")
        if self.toxic == "down" and (message.stream or message.HasField("toxicity") or message.seed):
            raise InvalidArgument(f"{self.kind}: takes port alone (every connection to it, either way); "
                                  f"stream, toxicity and seed do not apply")
        toxicity = message.toxicity if message.HasField("toxicity") else 1.0
        if math.isnan(toxicity) or not 0.0 <= toxicity <= 1.0:
            raise InvalidArgument(f"{self.kind}: toxicity must be 0 to 1 (the share of connections); got {toxicity}")
        params: dict[str, Any] = {"port": message.port, "stream": STREAMS[message.stream], "toxicity": toxicity,
                                  "seed": message.seed, "toxic": self.toxic}
        fields = getattr(message, self.toxic)
        for name, bound in TOXIC_FIELDS[self.toxic].items():
            value = getattr(fields, name)
            if value > bound:
                raise InvalidArgument(f"{self.kind}: {name} must be at most {bound}; got {value}")
            params[name] = value
        if self.toxic == "bandwidth" and params["rate"] < 1:
            raise InvalidArgument(f"{self.kind}: rate must be 1 KB/s or more; got 0")
        if self.toxic == "slicer":
            if params["average_size"] < 1:
                raise InvalidArgument(f"{self.kind}: average_size must be 1 byte or more; got 0")
            if params["size_variation"] >= params["average_size"]:
                raise InvalidArgument(f"{self.kind}: size_variation must be smaller than average_size "
                                      f"({params['average_size']}); got {params['size_variation']}")
        return params

    def program_args(self, params: dict[str, Any]) -> list[str]:
        own = {name: params[name] for name in TOXIC_FIELDS[self.toxic]}
        return toxic_argv(Toxic(self.toxic, params["stream"], params["toxicity"], **own))


TCP_TOXICS = tuple(TcpToxic(toxic) for toxic in TOXIC_FIELDS)
