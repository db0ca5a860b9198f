"""What the plugin and the daemon agree on, beside the messages themselves.

The API package (the generated stubs in ``v1/`` and this module) ships with the
plugin; the daemon's distribution carries the same files as
``pytest_chaos_daemon.api``. This module holds the TLS server name, address
forms, the runtimes' default sockets, and the rules of request fields that the
plugin checks at collection (so a bad marker fails before anything runs) and
the daemon checks again (it trusts no client). Standard library only: both
sides import it.
"""

from __future__ import annotations

import re
import string
from typing import Any

TLS_SERVER_NAME = "chaos-daemon.pytest-chaos.local"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DOCKER_SOCKET = "/var/run/docker.sock"


def grpc_target(listen: str) -> str:
    """``unix:///path`` stays; ``tcp://host:port`` and ``host:port`` become ``host:port``."""
    if listen.startswith("unix://"):
        return listen
    return listen.removeprefix("tcp://")


# --- how long, how fast: bounds the daemon enforces ------------------------------------------------

MAX_LEASE_S = 24 * 3600  # the longest lease and duration (an injection's own) a daemon accepts
MAX_LATENCY_MS = 60_000.0  # the longest netem latency or jitter
MAX_RATE = 1 << 40  # the fastest bandwidth rate, in bytes per second (1 TiB/s)


# --- stress: workers and memory sizes ------------------------------------------------------------

MAX_WORKERS = 8192

# stress-ng 0.15 reads "256M" but takes "256MB" for 256 bytes: sizes go to it in bytes.
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)", re.IGNORECASE)
_PERCENT = re.compile(r"(\d+)%")
MIN_BYTES, MAX_BYTES = 4096, 256 << 40  # stress-ng's own bounds
SIZE_FORMS = ("a size like '256MB', '1GB', '512KB' (B, KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: "
              "powers of 1024) from 4KiB to 256TiB, or a percentage of the node's available memory like '25%' "
              "(1% to 100%)")


def vm_bytes(size: str) -> str:
    """stress-ng's ``--vm-bytes`` for ``size`` (in all, shared by the memory workers); raises ValueError."""
    text = size.strip()
    if match := _PERCENT.fullmatch(text):
        if 1 <= int(match.group(1)) <= 100:
            return f"{int(match.group(1))}%"
    elif match := _SIZE.fullmatch(text):
        # Compared as a float, converted after: a number too long for a float is inf here, not an OverflowError.
        count = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if MIN_BYTES <= count <= MAX_BYTES:
            return str(int(count))
    raise ValueError(f"must be {SIZE_FORMS}; got {size[:100]!r}")



# --- stress: stress-ng options beyond workers, load and size (Chaos Mesh's ``options``) ----------------
#
# An allow-list: each option a stressor may add, and what its value may be. Left out on purpose: whatever
# writes files (--hdd, --temp-path: the stressors run with the daemon's filesystem, and a killed stressor
# would leave its files there), starts other stressors (--io, --fork, ...: one kind of load per stressor),
# or changes where and as whom they run (--sched, --user, --aggressive, --log-file). The daemon builds the
# argv itself from what this returns, after its own arguments, so an option here overrides them as
# stress-ng's last word wins: ``--cpu 2`` sets the workers, ``--timeout 600`` ends the load after 600s.

MAX_OPTIONS, MAX_OPTION_LENGTH = 32, 256
_METHOD = re.compile(r"[a-z0-9][a-z0-9_+-]{0,31}")  # stress-ng refuses a method it lacks, and the apply fails
_TIMEOUT = re.compile(r"[1-9]\d{0,5}[smhd]?")
_SLICE = re.compile(r"-?\d{1,4}")
_MADVISE = ("dontneed", "hugepage", "mergeable", "nohugepage", "normal", "random", "sequential", "unmergeable",
            "willneed")
_WORKERS = re.compile(r"[1-9]\d{0,3}")
_SECONDS = re.compile(r"\d{1,5}")


# option -> (value pattern, what the value may be); None: the option takes no value.
_COMMON: dict[str, tuple[re.Pattern[str], str] | None] = {
    "--timeout": (_TIMEOUT, "a time like 600, 30s, 10m, 2h or 1d (stress-ng stops the load then)"),
    "--oomable": None,
}
STRESS_OPTIONS: dict[str, dict[str, tuple[re.Pattern[str], str] | None]] = {
    "cpu": {
        "--cpu": (_WORKERS, f"a number of workers from 1 to {MAX_WORKERS}"),
        "--cpu-method": (_METHOD, "a stress-ng cpu method, like sqrt, matrixprod or all"),
        "--cpu-load-slice": (_SLICE, "milliseconds from -9999 to 9999 (stress-ng's meaning)"),
        **_COMMON,
    },
    "memory": {
        "--vm": (_WORKERS, f"a number of workers from 1 to {MAX_WORKERS}"),
        "--vm-method": (_METHOD, "a stress-ng vm method, like flip, zero-one or all"),
        "--vm-hang": (_SECONDS, "seconds from 0 to 99999 to sleep before freeing the memory"),
        "--vm-madvise": (re.compile("|".join(_MADVISE)), f"one of {', '.join(_MADVISE)}"),
        "--vm-populate": None,
        "--page-in": None,
        **_COMMON,
    },
}
OOM_SCORE_ADJ_MIN, OOM_SCORE_ADJ_MAX = -1000, 1000


class StressOptionError(ValueError):
    """An option that is not allowed; ``index`` is its place in the list."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def stress_options(stressor: str, options: list[str] | tuple[str, ...]) -> list[str]:
    """stress-ng's arguments for a stressor's ``options``, as Chaos Mesh writes them ("--cpu-method sqrt",
    "--timeout=600", "--oomable", or several in one string); raises StressOptionError naming the first
    that is not allowed, with the allowed ones."""
    allowed = STRESS_OPTIONS[stressor]
    accepted = ", ".join(allowed)
    if len(options) > MAX_OPTIONS:
        raise StressOptionError(MAX_OPTIONS, f"at most {MAX_OPTIONS} options; got {len(options)}")
    # (token, the option's index): Chaos Mesh joins the list with spaces, so a value may be the next item's.
    tokens: list[tuple[str, int]] = []
    for index, option in enumerate(options):
        if not isinstance(option, str) or len(option) > MAX_OPTION_LENGTH:
            raise StressOptionError(index, f"must be a string of at most {MAX_OPTION_LENGTH} characters, like "
                                           f"'--cpu-method sqrt'; got {str(option)[:100]!r}")
        tokens += [(token, index) for token in option.split()]
    argv: list[str] = []
    position = 0
    while position < len(tokens):
        token, index = tokens[position]
        position += 1
        name, equals, value = token.partition("=")
        if name not in allowed:
            raise StressOptionError(index, f"{name[:100]!r} is not an allowed stress-ng option for the {stressor} "
                                           f"stressor; allowed: {accepted}")
        expected = allowed[name]
        if expected is None:
            if equals:
                raise StressOptionError(index, f"{name} takes no value; got {token[:100]!r}")
            argv.append(name)
            continue
        if not equals:
            if position == len(tokens):
                raise StressOptionError(index, f"{name} needs a value: {expected[1]}")
            value, _ = tokens[position]
            position += 1
        pattern, described = expected
        if not pattern.fullmatch(value):
            raise StressOptionError(index, f"{name}'s value must be {described}; got {value[:100]!r}")
        if name in ("--cpu", "--vm") and int(value) > MAX_WORKERS:
            raise StressOptionError(index, f"{name}'s value must be {described}; got {value}")
        argv += [name, value]
    return argv

# --- DNS patterns ---------------------------------------------------------------------------------

MAX_PATTERN_LENGTH = 253  # the longest name in text form, without the trailing dot
_PATTERN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._?*")
_PATTERN_FORM = (
    "a pattern is a domain name such as 'example.com' (letters, digits, '-', '.' and '_'), "
    "non-empty and at most 253 characters, where '?' stands for exactly one character and "
    "'*', allowed only as the last character, for any rest ('example.*', 'api-?.example.com', '*')"
)
# DNS compares names case-insensitively in ASCII only (RFC 4343).
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def check_pattern(pattern: str) -> str:
    """The pattern in normal form (lower case, no trailing dot); ValueError saying what is wrong."""
    if not isinstance(pattern, str):
        raise ValueError(f"DNS pattern {pattern!r} is not a string; {_PATTERN_FORM}")
    # Checked before lowercasing: str.lower() maps some non-ASCII letters (the Kelvin sign) to ASCII.
    bad = sorted({c for c in pattern if c not in _PATTERN_CHARACTERS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ValueError(f"DNS pattern {pattern!r} contains {shown}, which is not allowed; {_PATTERN_FORM}")
    normalised = pattern.translate(ASCII_LOWER)
    if normalised.endswith("."):
        normalised = normalised[:-1]
    if not normalised:
        raise ValueError(f"DNS pattern {pattern!r} is empty; {_PATTERN_FORM}")
    if len(normalised) > MAX_PATTERN_LENGTH:
        raise ValueError(
            f"DNS pattern {pattern[:40]!r}... is {len(normalised)} characters long, more than "
            f"{MAX_PATTERN_LENGTH}; {_PATTERN_FORM}"
        )
    if "*" in normalised[:-1]:
        raise ValueError(
            f"DNS pattern {pattern!r} has '*' before its end: '*' is allowed only as the last character "
            f"(for a prefix match), use '?' for one character; {_PATTERN_FORM}"
        )
    # An empty label can never be part of a name: a leading or doubled dot is a typo, not a match rule.
    if ".." in normalised or normalised.startswith("."):
        raise ValueError(f"DNS pattern {pattern!r} has an empty label (a leading or doubled '.'); {_PATTERN_FORM}")
    return normalised


# --- process-kill: patterns ----------------------------------------------------------------------

MAX_PROCESS_LEN = 256
RE2_REFUSES = "a regular expression without backreferences or lookarounds (RE2 syntax)"


def process_pattern(process: str) -> Any:
    """process-kill's ``process`` compiled by RE2 (google-re2), which matches in time linear in the command
    line whatever the pattern; ValueError with RE2's reason when it is not a pattern RE2 takes. RE2 is
    imported here, not with this module: a plugin without it (the daemon elsewhere) catches ImportError."""
    import re2  # noqa: I001

    options = re2.Options()
    options.log_errors = False  # the reason goes to the caller, not to stderr
    try:
        return re2.compile(process, options=options)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise ValueError(reason) from None


# --- time: clocks and offsets ---------------------------------------------------------------------

# Chaos Mesh's clock names (TimeChaos clockIds), each with its clock id (linux/time.h).
CLOCK_IDS = {
    "CLOCK_REALTIME": 0, "CLOCK_MONOTONIC": 1, "CLOCK_PROCESS_CPUTIME_ID": 2, "CLOCK_THREAD_CPUTIME_ID": 3,
    "CLOCK_MONOTONIC_RAW": 4, "CLOCK_REALTIME_COARSE": 5, "CLOCK_MONOTONIC_COARSE": 6, "CLOCK_BOOTTIME": 7,
    "CLOCK_REALTIME_ALARM": 8, "CLOCK_BOOTTIME_ALARM": 9,
}
DEFAULT_CLOCK_IDS = ("CLOCK_REALTIME",)
MAX_TIME_OFFSET_NS = 100 * 366 * 86400 * 10**9  # a century either way; zero is refused (it changes nothing)


def clock_mask(clock_ids: list[str] | tuple[str, ...]) -> int:
    """The clocks as a bit mask (bit n: clock id n); ValueError naming an unknown name and the accepted ones."""
    mask = 0
    for name in clock_ids:
        if name not in CLOCK_IDS:
            raise ValueError(f"{name!r} is not a clock Chaos Mesh names; accepted: {', '.join(CLOCK_IDS)}")
        mask |= 1 << CLOCK_IDS[name]
    return mask


def check_time_offset(offset_ns: int) -> int:
    """``offset_ns`` if it is a usable offset; ValueError saying the bounds."""
    if offset_ns == 0 or abs(offset_ns) > MAX_TIME_OFFSET_NS:
        raise ValueError(f"must be a signed duration other than zero, at most 100 years either way (e.g. '-2h', "
                         f"'+30m', '10s'); got {offset_ns} ns")
    return offset_ns


# --- the version handshake: the request fields each side knows ---------------------------------------
# The daemon lists the fields of its own messages (GetInfo); the plugin lists those it set in a request and
# refuses one the daemon would not read. Both name a nested message's fields as dotted paths, so a field added
# deep inside (NetworkScope, NetworkDelay.Reorder) is caught too. Duck-typed protobuf: no import needed here.


def _opaque(field: Any) -> bool:
    """A field counted whole: a scalar, a map, or a well-known type (google.protobuf.Duration)."""
    message = field.message_type
    return message is None or message.GetOptions().map_entry or message.full_name.startswith("google.protobuf.")


def field_paths(descriptor: Any, prefix: str = "", skip: frozenset[str] = frozenset()) -> list[str]:
    """Every field of the message type ``descriptor`` (but ``skip``'s), a nested message's as dotted paths."""
    paths: list[str] = []
    for field in descriptor.fields:
        if field.name in skip:
            continue
        path = f"{prefix}{field.name}"
        paths.append(path)
        if not _opaque(field) and field.message_type is not descriptor:  # a message holding itself: once
            paths += field_paths(field.message_type, f"{path}.")
    return paths


def set_field_paths(message: Any, prefix: str = "", skip: frozenset[str] = frozenset()) -> list[str]:
    """The fields set in ``message`` (but ``skip``'s), as ``field_paths`` names them."""
    paths: list[str] = []
    for field, value in message.ListFields():
        if field.name in skip:
            continue
        path = f"{prefix}{field.name}"
        paths.append(path)
        if not _opaque(field):
            for item in (value if _is_repeated(field) else [value]):
                paths += [p for p in set_field_paths(item, f"{path}.") if p not in paths]
    return paths


def _is_repeated(field: Any) -> bool:
    """Across the supported protobuf range: 6.x and later say ``is_repeated``; before 6 only ``label`` tells,
    and 7 has no ``label`` any more."""
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(field.label == field.LABEL_REPEATED)
