"""time: the clocks the target's processes read are shifted by ``time_offset``, as Chaos Mesh's TimeChaos.

``time_offset``: a signed duration as Chaos Mesh (Go) writes it: "-2h",
"+30m", "10s", "1h30m", "-1.5h", "300ms" (units ns, us, µs, ms, s, m, h), or a
``datetime.timedelta``. ``clock_ids``: Chaos Mesh's clock names, by default
["CLOCK_REALTIME"]. The processes running when the fault is applied see it
through their vDSO (see ``pytest_chaos_daemon/faults/time_offset.py``); those
started later do not.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from google.protobuf.duration_pb2 import Duration

from ..api.contract import CLOCK_IDS, DEFAULT_CLOCK_IDS, check_time_offset
from ..api.v1 import chaos_daemon_pb2 as pb
from ..errors import ChaosSpecError
from .applied import AppliedKind

_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
OFFSET_FORMS = "a signed duration such as '-2h', '+30m', '10s', '1h30m' or '-1.5h' (units ns, us, ms, s, m, h)"


class Time(AppliedKind):
    name = "time"
    field = "time"
    parameters = ("time_offset", "clock_ids")

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        params = super().check_params(params)
        if "time_offset" not in params:
            raise ChaosSpecError("time_offset", f"is required: {OFFSET_FORMS}")
        offset_ns = offset_nanoseconds(params["time_offset"])
        return {"offset_ns": offset_ns, "clock_ids": check_clock_ids(params.get("clock_ids", DEFAULT_CLOCK_IDS))}

    def message(self, params: Mapping[str, Any]) -> pb.Time:
        seconds, nanos = divmod(abs(params["offset_ns"]), 10**9)
        sign = -1 if params["offset_ns"] < 0 else 1
        return pb.Time(time_offset=Duration(seconds=sign * seconds, nanos=sign * nanos),
                       clock_ids=params["clock_ids"])


def offset_nanoseconds(value: object) -> int:
    """``value`` (a Go-style duration string or a timedelta) in nanoseconds; ChaosSpecError naming time_offset."""
    if isinstance(value, datetime.timedelta):
        total = (value.days * 86400 + value.seconds) * 10**9 + value.microseconds * 1000
    elif isinstance(value, str):
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        body = text[1:] if text[:1] in "+-" else text
        parts = list(_PART.finditer(body))
        if not body or "".join(p.group(0) for p in parts) != body:
            raise ChaosSpecError("time_offset", f"must be {OFFSET_FORMS}; got {value!r}")
        total = sign * int(sum(Fraction(p.group(1)) * _UNIT_NS[p.group(2)] for p in parts))
    else:
        raise ChaosSpecError("time_offset", f"must be {OFFSET_FORMS}; got {value!r}")
    try:
        return check_time_offset(total)
    except ValueError as err:
        raise ChaosSpecError("time_offset", f"{err}") from None


def check_clock_ids(value: object) -> list[str]:
    """The clock names, checked against Chaos Mesh's; ChaosSpecError naming clock_ids and the accepted names."""
    accepted = f"a list of Chaos Mesh's clock names: {', '.join(CLOCK_IDS)}"
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ChaosSpecError("clock_ids", f"must be {accepted}; got {value!r}")
    for name in value:
        if name not in CLOCK_IDS:
            raise ChaosSpecError("clock_ids", f"{name!r} is not accepted; accepted: {', '.join(CLOCK_IDS)}")
    return list(dict.fromkeys(value))
