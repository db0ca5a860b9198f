"""Network kinds' parameters: Chaos Mesh's NetworkChaos and DNSChaos fields, refused at collection when wrong."""

from __future__ import annotations

import pytest
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb

from pytest_chaos.kinds import KINDS
from tests.support.suites import collect_suite


@pytest.mark.parametrize("kind, params, field, accepted", [
    ("network-partition", 'direction="sideways"', "direction", "one of to, from, both"),
    ("network-partition", 'direction="from"', "direction", "needs `target` or `external_targets`"),
    ("network-loss", "", "loss", "is required"),
    ("network-loss", 'loss="150"', "loss", "a percentage from 0 to 100"),
    ("network-loss", 'loss="25", correlation="150"', "correlation", "a percentage from 0 to 100"),
    ("network-loss", 'loss="25", direction="both"', "direction", "'both' needs `target`"),
    ("network-loss", 'loss="25", direction="from", external_targets=["10.0.0.1"], '
                     'target={"selector": {"pids": [1]}}', "external_targets", "works only with direction 'to'"),
    ("network-delay", "", "latency", "is required: a duration like '100ms'"),
    ("network-delay", 'latency="100 parsecs"', "latency", "a duration like '100ms'"),
    ("network-delay", 'latency="100ms", reorder={"reorder": "25", "gap": -5}', "reorder.gap", "a whole number of packets"),
    ("network-delay", 'latency="100ms", reorder={"reorder": "25", "correlation": "x"}', "reorder.correlation",
     "a percentage"),
    ("network-delay", 'latency="100ms", reorder={"reorder": "25", "shuffle": 1}', "reorder.shuffle", "accepted:"),
    ("network-duplicate", 'duplicate="x"', "duplicate", "a percentage"),
    ("network-corrupt", 'corrupt=-1', "corrupt", "a percentage"),
    ("network-bandwidth", "", "rate", "is required: a rate like '1mbps'"),
    ("network-bandwidth", 'rate="fast"', "rate", "'8mbit' (bits per second"),
    ("network-bandwidth", 'rate="1mbps", peakrate="2mbps"', "peakrate", "and minburst go together"),
    ("network-bandwidth", 'rate="1mbps", limit=-5', "limit", "a number of bytes"),
    ("network-loss", 'loss=5, external_targets=["fe80::1"]', "external_targets", "only IPv4"),
    ("network-loss", 'loss=5, external_targets=["not a host!"]', "external_targets", "neither an IPv4"),
    ("network-loss", 'loss=5, device="a very long device name"', "device", "an interface name"),
    ("network-loss", 'loss=5, target={"selector": {"pids": [1]}, "mode": "most"}', "target.mode", "accepted modes"),
    ("network-loss", 'loss=5, target={"selector": {"colour": "red"}}', "target.selector", "colour"),
    ("network-loss", 'loss=5, target="db"', "target", "must be a dict with a selector"),
    ("network-loss", 'loss=5, jitter="1ms"', "jitter", "takes parameters: direction, target"),
    ("dns", "", "action", "is required: one of error, random"),
    ("dns", 'action="error", patterns="example.com"', "patterns", "must be a list"),
    ("dns", 'action="error", patterns=["exa*mple.com"]', "patterns", "only as the last character"),
])
def test_bad_network_parameters_are_a_usage_error_at_collection(pytester, kind, params, field, accepted):
    extra = f", {params}" if params else ""
    result = collect_suite(pytester, f"""
        import pytest

        @pytest.mark.chaos("{kind}", selector={{"pids": [1]}}{extra})
        def test_bad():
            raise AssertionError("must not run")
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    text = result.stderr.str() + result.stdout.str()
    assert f"@pytest.mark.chaos {field}" in text or f"@pytest.mark.chaos {field.split('.')[0]}" in text, text
    assert accepted in text, text
    assert "must not run" not in result.stdout.str()


@pytest.mark.parametrize("rate, expected", [
    ("1mbps", 1 << 20),  # Chaos Mesh's: bytes per second, 1024-based
    ("10kbps", 10 << 10),
    ("100bps", 100),
    ("8mbit", 1_000_000),  # tc's: bits per second, 1000-based
    ("1 MBPS", 1 << 20),
])
def test_rates_read_as_chaos_mesh_and_tc_write_them(rate, expected):
    params = KINDS["network-bandwidth"].check_params({"rate": rate})
    assert params["rate"] == expected


def test_delay_reads_go_durations_and_reorder():
    params = KINDS["network-delay"].check_params({"latency": "1.5s", "jitter": "10ms",
                                                  "reorder": {"reorder": "25", "correlation": "0", "gap": 0}})
    assert params["latency_ns"] == 1_500_000_000
    assert params["jitter_ns"] == 10_000_000
    assert params["reorder"] == {"reorder": 25.0, "correlation": 0.0, "gap": 0}


def test_external_targets_keep_host_names_for_when_the_fault_is_applied():
    params = KINDS["network-partition"].check_params({"external_targets": ["10.1.2.3", "10.1.0.0/16", "db.internal"]})
    assert params["external_targets"] == ["10.1.2.3/32", "10.1.0.0/16", "db.internal"]


def test_netem_parameters_pass_to_the_daemon_which_decides_where_netem_is():
    """Only the node knows whether its kernel has netem: the plugin checks ranges and sends them on."""
    assert KINDS["network-loss"].check_params({"loss": "25", "correlation": "0"})["correlation"] == 0.0
    params = KINDS["network-duplicate"].check_params({"duplicate": 5, "correlation": "25"})
    assert params["correlation"] == 25.0
    delay = KINDS["network-delay"].check_params({"latency": "10ms", "correlation": 30,
                                                 "reorder": {"reorder": 20, "correlation": 40, "gap": 5}})
    message = KINDS["network-delay"].network_message(delay, pb.NetworkScope())
    assert (message.correlation, message.reorder.reorder, message.reorder.correlation, message.reorder.gap) == \
        (30, 20, 40, 5)
