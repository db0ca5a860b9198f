"""Chaos Mesh manifests: documentation examples mapped field by field, refusals naming the document and field,
and manifests applied through the marker and ``chaos.apply_manifest`` on real targets."""

from __future__ import annotations

import base64
import copy
import functools
import pathlib

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.backends.local import LocalBackend
from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.manifests import load, manifest_specs
from tests.support.network_bed import snapshot, tcp_connects, tcp_listener, udp_echo_server, udp_probe

MANIFESTS = pathlib.Path(__file__).parent / "manifests"
KUBERNETES = KubernetesBackend(kubeconfig="/nonexistent")  # selectors are checked without the API


def specs(name: str):
    return manifest_specs(KUBERNETES, name, MANIFESTS)


def test_the_tutorials_hello_world_chaos_as_its_documentation_writes_it():
    [spec] = specs("hello-world.yaml")
    assert (spec.kind, spec.selector, spec.mode, spec.duration) == ("helloworld", {"namespaces": ["busybox"]},
                                                                    "all", 3600.0)


def test_pod_chaos_actions():
    [kill] = specs("pod-kill.yaml")
    assert kill.kind == "pod-kill" and kill.mode == "one"
    # metadata.namespace scopes a selector that names none, as in Chaos Mesh.
    assert kill.selector == {"namespaces": ["chaos-mesh"], "labelSelectors": {"app.kubernetes.io/component": "tikv"}}
    [container] = specs("container-kill.yaml")
    assert container.kind == "container-kill" and container.container_names == ("prometheus",)


def test_stress_chaos():
    [spec] = specs("memory-stress.yaml")
    assert spec.kind == "stress"
    assert spec.params == {"stressors": {"memory": {"workers": 4, "size": "256MB"}}}


def test_network_chaos_partition_with_a_target_selection():
    [spec] = specs("network-partition.yaml")
    assert spec.kind == "network-partition" and spec.params["direction"] == "to"
    assert spec.params["target"] == {"selector": {"namespaces": ["default"], "labelSelectors": {"app": "app2"}},
                                     "mode": "all", "value": None}


def test_network_chaos_bandwidth_reads_chaos_meshs_units():
    [spec] = specs("network-bandwidth.yaml")
    assert spec.kind == "network-bandwidth"
    assert (spec.params["rate"], spec.params["limit"], spec.params["buffer"]) == (1 << 20, 20971520, 10000)


def test_a_multi_document_manifest_gives_one_experiment_per_document_in_order():
    assert [(s.kind, s.params[s.kind.split("-")[1]]) for s in specs("netem-kinds.yaml")] == [
        ("network-loss", 25.0), ("network-duplicate", 40.0), ("network-corrupt", 10.0)]


def test_dns_chaos():
    [spec] = specs("dns-random.yaml")
    assert spec.kind == "dns" and spec.params == {"action": "random",
                                                  "patterns": ["google.com", "chaos-mesh.*", "github.?om"]}
    assert spec.selector == {"namespaces": ["busybox"]}  # its own namespaces win over metadata.namespace


def test_time_chaos():
    [spec] = specs("time-skew.yaml")
    assert spec.kind == "time" and spec.mode == "one" and spec.duration == 30.0
    assert spec.params == {"offset_ns": -(600 * 10**9 + 100), "clock_ids": ["CLOCK_REALTIME", "CLOCK_MONOTONIC"]}
    assert spec.container_names == ("worker",)
    assert spec.selector == {"namespaces": ["payments"], "labelSelectors": {"app": "billing"}}


def test_http_chaos_maps_onto_the_kind_of_its_first_action_with_the_others_in_one_rule():
    delayed, failing, aborting = specs("http-chaos.yaml")
    assert delayed.kind == "http-delay" and delayed.selector["namespaces"] == ["shop"]
    rule = delayed.params
    assert (rule["target"], rule["port"], rule["method"], rule["path"], rule["delay_s"]) == (
        "Request", 8080, "GET", "/orders/*", 2.0)
    assert rule["replace"]["path"] == "/orders/v2/" and rule["replace"]["method"] == "DELETE"
    assert base64.b64decode(rule["replace"]["body"]) == b'{"id": 7}'  # Chaos Mesh's YAML body is base64
    assert rule["patch"] == {"headers": [["X-Trace", "first"], ["X-Trace", "second"]], "queries": [["page", "2"]],
                             "body": {"type": "JSON", "value": '{"flag": true}'}}
    assert failing.kind == "http-replace" and failing.params["code"] == 200
    assert failing.params["response_headers"] == [["Content-Type", "application/json"]]
    assert failing.params["replace"]["code"] == 503 and failing.params["replace"]["headers"] == [["Retry-After", "5"]]
    assert aborting.kind == "http-abort" and aborting.params["abort"] is True
    assert aborting.params["request_headers"] == [["Host", "orders.shop.svc"]] and aborting.duration == 30.0


def test_http_chaos_in_the_shape_of_chaos_meshs_example_patches_every_path():
    [spec] = specs("http-response-patch.yaml")
    assert spec.kind == "http-patch" and spec.duration is None
    assert (spec.params["target"], spec.params["port"], spec.params["path"]) == ("Response", 80, "*")
    assert spec.params["patch"]["body"] == {"type": "JSON",
                                            "value": '{"state":"degraded","note":"patched by a chaos test"}'}


HTTP = "apiVersion: chaos-mesh.org/v1alpha1\nkind: HTTPChaos\nspec: {selector: {namespaces: [a]}, port: 80, "


@pytest.mark.parametrize("text, field, accepted", [
    (HTTP + "target: Request, abort: true, tls: {secretName: s}}\n", "spec.tls", "HTTPS is not supported"),
    (HTTP + "target: Request}\n", "spec.abort", "needs an action: abort: true, delay, replace or patch"),
    (HTTP + "target: Request, replace: {code: 500}}\n", "spec.replace.code", "applies to target Response only"),
    (HTTP + "target: Response, patch: {queries: [[a, b]]}}\n", "spec.patch.queries", "target Request only"),
    (HTTP + "target: Request, replace: {body: '%%%'}}\n", "spec.replace.body", "must be base64 text"),
    (HTTP + "target: Request, patch: {body: {type: XML, value: x}}}\n", "spec.patch.body.type", "must be JSON"),
    (HTTP + "target: Request, patch: {body: {type: JSON, value: '{'}}}\n", "spec.patch.body.value", "is not JSON"),
    (HTTP + "target: Request, delay: 2 days}\n", "spec.delay", "a duration like '10s'"),
    (HTTP + "target: Sideways, abort: true}\n", "spec.target", "one of Request, Response"),
    (HTTP + "target: Request, abort: true, replace: {headers: {Content-Length: '1'}}}\n", "spec.replace.headers[0]",
     "frames the body itself"),
    (HTTP + "target: Request, abort: true, remoteCluster: x}\n", "spec.remoteCluster", "supported: selector"),
])
def test_http_chaos_that_cannot_be_mapped_is_refused_naming_the_field(text, field, accepted):
    assert_refused(text, field, accepted)


def test_the_documentations_correlated_delay_keeps_its_correlation_for_the_node_to_honour():
    """Chaos Mesh's own delay example: netem's correlation goes to the daemon, which uses netem where the node's
    kernel has it and refuses the correlation where its packet queue makes the fault."""
    [spec] = specs("network-delay-correlated.yaml")
    assert spec.kind == "network-delay"
    assert (spec.params["latency_ns"], spec.params["correlation"]) == (10_000_000, 100.0)


@pytest.mark.parametrize("text, field, accepted", [
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: IOChaos\nspec: {}\n", "kind", "supported: HelloWorldChaos, PodChaos"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nspec: {action: pod-restart}\n", "spec.action",
     "supported: pod-kill, pod-failure, container-kill"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nspec: {action: pod-kill, scheduler: {cron: x}}\n",
     "spec.scheduler", "supported: selector, mode, value, duration"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: StressChaos\nspec: {stressors: {cpu: {workers: 1, size: 1MB}}}\n",
     "spec.stressors.cpu.size", "supported: workers, load, options"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nspec: {action: delay, delay: {latency: 1ms, "
     "rate: x}}\n", "spec.delay.rate", "supported: latency, jitter, correlation, reorder"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nspec: {action: rate}\n", "spec.action",
     "supported: partition, loss, delay"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nspec: {action: netem, selector: {}, rate: "
     "{rate: 1mbps}}\n", "spec.rate", "supported: selector, mode"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nspec: {action: netem, selector: {}, loss: "
     "{loss: '10', los: 1}}\n", "spec.loss.los", "supported: loss, correlation"),
    ("apiVersion: v1\nkind: Pod\nspec: {}\n", "apiVersion", "must be 'chaos-mesh.org/v1alpha1'"),
    ("apiVersion: chaos-mesh.org/v1alpha1\nkind: DNSChaos\nspec: {action: error, selector: {colour: red}}\n",
     "spec.selector.colour", "unknown selector key"),
])
def test_what_is_not_supported_is_an_error_naming_the_document_and_field(text, field, accepted):
    assert_refused(text, field, accepted)


def assert_refused(text: str, field: str, accepted: str, document: str = "document 1 (") -> ChaosSpecError:
    """``text`` is refused with an error naming its document and the manifest's ``field``, saying ``accepted``."""
    with pytest.raises(ChaosSpecError) as info:
        manifest_specs(KUBERNETES, text + "\n")
    assert info.value.field.startswith(f"manifest (text) {document}")
    assert info.value.field.endswith(f": {field}")
    assert accepted in info.value.message
    return info.value


def chaos(kind: str, spec: str, metadata: str = "{name: x}") -> str:
    return f"apiVersion: chaos-mesh.org/v1alpha1\nkind: {kind}\nmetadata: {metadata}\nspec: {spec}\n"


SELECTED = "selector: {labelSelectors: {app: web}}"


@pytest.mark.parametrize("spec, field, accepted", [
    (f"{{timeOffset: -1h, remoteCluster: east, {SELECTED}}}", "spec.remoteCluster", "supported: selector, mode, "
                                                                                      "value, duration, timeOffset"),
    (f"{{timeOffset: 1 hour, {SELECTED}}}", "spec.timeOffset", "a signed duration such as '-2h'"),
    (f"{{timeOffset: 1h, clockIds: [CLOCK_TAI], {SELECTED}}}", "spec.clockIds",
     "'CLOCK_TAI' is not accepted; accepted: CLOCK_REALTIME"),
    (f"{{clockIds: [CLOCK_REALTIME], {SELECTED}}}", "spec.timeOffset", "is required"),
])
def test_time_chaos_refusals_name_the_field(spec, field, accepted):
    assert_refused(chaos("TimeChaos", spec), field, accepted)


# Each was a TypeError traceback, or an error naming the marker argument rather than the manifest's field.
WRONG_TYPES = [
    (chaos("[PodChaos]", "{}"), "kind", "supported: HelloWorldChaos, PodChaos"),
    (chaos("DNSChaos", f"{{action: {{error: 1}}, {SELECTED}}}"), "spec.action", "one of error, random"),
    (chaos("PodChaos", f"{{action: [pod-kill], {SELECTED}}}"), "spec.action", "supported: pod-kill, pod-failure, container-kill"),
    (chaos("NetworkChaos", f"{{action: partition, direction: {{to: 1}}, {SELECTED}}}"), "spec.direction",
     "must be one of to, from, both"),
    (chaos("PodChaos", "{action: pod-kill, selector: {1: a, labelSelectors: {app: web}}}"), "spec.selector.1",
     "unknown selector key for the kubernetes backend; accepted keys: namespaces"),
    (chaos("PodChaos", f"{{action: pod-kill, gracePeriod: [30], {SELECTED}}}"), "spec.gracePeriod",
     "must be an integer number of seconds"),
    (chaos("PodChaos", f"{{action: container-kill, containerNames: {{app: 1}}, {SELECTED}}}"),
     "spec.containerNames", "must be a list of container names"),
    (chaos("NetworkChaos", f"{{action: delay, delay: {{latency: [10ms]}}, {SELECTED}}}"), "spec.delay.latency",
     "a duration like '100ms'"),
    (chaos("NetworkChaos", f"{{action: delay, delay: {{latency: 1ms, reorder: {{reorder: '5', gap: [1]}}}}, "
                           f"{SELECTED}}}"), "spec.delay.reorder.gap", "a whole number of packets"),
    (chaos("NetworkChaos", f"{{action: loss, loss: {{loss: {{a: 1}}}}, {SELECTED}}}"), "spec.loss.loss",
     "a percentage from 0 to 100"),
    (chaos("NetworkChaos", f"{{action: bandwidth, bandwidth: {{rate: [1mbps]}}, {SELECTED}}}"), "spec.bandwidth.rate",
     "a rate like '1mbps'"),
    (chaos("NetworkChaos", f"{{action: partition, externalTargets: {{a: b}}, {SELECTED}}}"), "spec.externalTargets",
     "a list of IPv4 addresses, CIDRs or host names"),
    (chaos("NetworkChaos", f"{{action: partition, target: {{mode: [all], {SELECTED}}}, {SELECTED}}}"),
     "spec.target.mode", "accepted modes: one, all"),
    (chaos("StressChaos", f"{{stressors: {{cpu: {{workers: 1, load: [50]}}}}, {SELECTED}}}"),
     "spec.stressors.cpu.load", "must be an integer from 0 to 100"),
    (chaos("StressChaos", f"{{stressors: {{memory: {{workers: 1, size: {{a: 1}}}}}}, {SELECTED}}}"),
     "spec.stressors.memory.size", "must be a string, a size like '256MB'"),
    (chaos("DNSChaos", f"{{action: error, patterns: [[example.com]], {SELECTED}}}"), "spec.patterns",
     "each pattern must be a string"),
    (chaos("DNSChaos", "{action: error, selector: {pods: {1: [a]}}}"), "spec.selector.pods",
     "each namespace a string"),
    (chaos("DNSChaos", "{action: error, selector: {expressionSelectors: [{key: [a], operator: Exists}]}}"),
     "spec.selector.expressionSelectors", "'key' must be a label name (a string)"),
]


@pytest.mark.parametrize("text, field, accepted", WRONG_TYPES, ids=[field for _, field, _ in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_an_error_naming_the_document_and_field(text, field, accepted):
    assert_refused(text, field, accepted)


POD_KILL = f"{{action: pod-kill, {SELECTED}}}"


@pytest.mark.parametrize("metadata, field, accepted", [
    # YAML reads these unquoted as a number, a boolean, a boolean: they were dropped, and the pod-kill took
    # every namespace.
    ("{name: x, namespace: 123}", "metadata.namespace", "got 123, which YAML reads as a number: quote it"),
    ("{name: x, namespace: on}", "metadata.namespace", "got True, which YAML reads as a boolean: quote it"),
    ("{name: x, namespace: no}", "metadata.namespace", "got False, which YAML reads as a boolean: quote it"),
    ("{name: x, namespace: }", "metadata.namespace", "got None, which YAML reads as null: quote it"),
    ("{name: x, namespace: [prod]}", "metadata.namespace", "must be a namespace name (lowercase letters"),
    ("{name: x, namespace: ''}", "metadata.namespace", "must be a namespace name (lowercase letters"),
    ("{name: x, namespace: Prod_1}", "metadata.namespace", "got 'Prod_1'"),
    ("[prod]", "metadata", "must be a mapping (name, namespace, ...)"),
    ("", "metadata", "must be a mapping (name, namespace, ...); got None"),
    ("{name: 5}", "metadata.name", "must be a string; got 5, which YAML reads as a number"),
])
def test_a_namespace_that_is_not_a_name_is_an_error_never_every_namespace(metadata, field, accepted):
    assert_refused(chaos("PodChaos", POD_KILL, metadata=metadata), field, accepted)


def test_a_quoted_namespace_scopes_the_selector_and_the_targets():
    text = chaos("NetworkChaos", f"{{action: partition, target: {{{SELECTED}}}, {SELECTED}}}",
                 metadata="{name: x, namespace: '123'}")
    [spec] = manifest_specs(KUBERNETES, text)
    assert spec.selector == {"namespaces": ["123"], "labelSelectors": {"app": "web"}}
    assert spec.params["target"]["selector"] == spec.selector


HELLO = "HelloWorldChaos"
PARTITION = f"action: partition, {SELECTED}"


@pytest.mark.parametrize("kind, spec, field, accepted", [
    # Each passed collection and failed only when applied, if at all (nan, 1e300 s: a fault that never ends).
    *[(HELLO, f"{{duration: {duration}, {SELECTED}}}", "spec.duration", "must be from 1ms to 24h")
      for duration in (".inf", "-.inf", ".nan", "-1", "0", "1.0e+300", "86401", "25h", "100000h", "0.0001",
                       "1" + "0" * 400, "'" + "9" * 400 + "s'")],
    ("NetworkChaos", f"{{action: delay, delay: {{latency: 61s}}, {SELECTED}}}", "spec.delay.latency", "up to 60s"),
    ("NetworkChaos", f"{{action: delay, delay: {{latency: 1ms, jitter: '{'9' * 400}ms'}}, {SELECTED}}}",
     "spec.delay.jitter", "up to 60s"),
    ("NetworkChaos", f"{{action: bandwidth, bandwidth: {{rate: 2tbps}}, {SELECTED}}}", "spec.bandwidth.rate",
     "up to 1tbps"),
    ("NetworkChaos", f"{{action: bandwidth, bandwidth: {{rate: '{'9' * 400}bit'}}, {SELECTED}}}",
     "spec.bandwidth.rate", "up to 1tbps"),
    ("NetworkChaos", f"{{action: bandwidth, bandwidth: {{rate: 1mbps, peakrate: {2 ** 64}, minburst: 1}}, "
                     f"{SELECTED}}}", "spec.bandwidth.peakrate", "up to 1tbps"),
    ("NetworkChaos", f"{{action: loss, loss: {{loss: {10 ** 400}}}, {SELECTED}}}", "spec.loss.loss",
     "a percentage from 0 to 100"),
    ("PodChaos", f"{{action: container-kill, mode: fixed-percent, value: {10 ** 400}, {SELECTED}}}", "spec.value",
     "a number in (0, 100]"),
])
def test_durations_and_rates_beyond_what_the_daemon_takes_are_refused_at_load(kind, spec, field, accepted):
    assert_refused(chaos(kind, spec), field, accepted)


@pytest.mark.parametrize("duration, seconds", [("1ms", 0.001), ("24h", 86400.0), (86400, 86400.0), ("1.5m", 90.0)])
def test_durations_from_a_millisecond_to_a_day_are_taken(duration, seconds):
    [spec] = manifest_specs(KUBERNETES, chaos(HELLO, f"{{duration: {duration}, {SELECTED}}}"))
    assert spec.duration == seconds


def test_a_documents_label_shows_its_kind_and_name_only_when_they_are_strings():
    error = assert_refused(chaos("[PodChaos]", "{}", metadata="{name: [x]}"), "kind", "is not supported",
                           document="document 1 (? #1)")
    long_name = chaos("PodChaos", "{action: pod-restart}", metadata="{name: " + "n" * 300 + "}")
    assert "n" * 254 not in assert_refused(long_name, "spec.action", "supported").field
    assert "[x]" not in error.field


def nested(levels: int, inner: str = "x") -> str:
    return "[" * levels + inner + "]" * levels


@pytest.mark.parametrize("text, document, accepted", [
    # 5,000 levels were a RecursionError from PyYAML's composer.
    (chaos(HELLO, f"{{selector: {nested(5000)}}}"), "document 1", "is nested more than 32 levels deep (line 4"),
    (chaos(HELLO, "{selector: {pids: [1]}}") + "---\n" + chaos(HELLO, nested(5000)), "document 2",
     "is nested more than 32 levels deep"),
    # A scalar PyYAML cannot convert raised a ValueError.
    (chaos(HELLO, f"{{value: {'1' * 5000}}}"), "document 1", "holds a value that cannot be read: Exceeds the limit"),
    (chaos(HELLO, "{duration: 2026-13-01}"), "document 1", "holds a value that cannot be read: month must be"),
])
def test_a_manifest_beyond_what_yaml_can_read_is_an_error_naming_the_document(text, document, accepted):
    with pytest.raises(ChaosSpecError) as info:
        load(text)
    assert info.value.field == f"manifest (text) {document}"
    assert accepted in info.value.message


# Each document's levels: the document itself, metadata, then the lists around the scalar, which is one more.
AT_THE_LIMIT, BEYOND = 29, 30


@pytest.mark.parametrize("source", [
    lambda levels: chaos(HELLO, "{selector: {pids: [1]}}", metadata=f"{{name: x, deep: {nested(levels)}}}"),
    lambda levels: yaml.safe_load(chaos(HELLO, "{selector: {pids: [1]}}",
                                        metadata=f"{{name: x, deep: {nested(levels)}}}")),
], ids=["text", "mapping"])
def test_a_document_may_be_32_levels_deep_and_no_more(source):
    assert len(load(source(AT_THE_LIMIT))) == 1
    with pytest.raises(ChaosSpecError, match="is nested more than 32 levels deep"):
        load(source(BEYOND))


def test_a_mapping_nested_5000_levels_deep_is_refused_naming_where():
    deep: dict[str, object] = {}
    selector = deep
    for _ in range(5000):
        deep["x"] = deep = {}
    with pytest.raises(ChaosSpecError) as info:
        load({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": HELLO, "spec": {"selector": selector}})
    assert info.value.field.startswith("manifest (HelloWorldChaos #1): spec.selector.x.x.")
    assert info.value.message == "is nested more than 32 levels deep"


LAUGHS = "apiVersion: chaos-mesh.org/v1alpha1\nkind: HelloWorldChaos\nmetadata:\n  a0: &a0 ['lol', 'lol', 'lol', " \
         "'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']\n" + "".join(
             f"  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 10)) + \
         "spec: {selector: {pids: [1]}, mode: *a9}\n"


@pytest.mark.parametrize("text, field, accepted", [
    # A billion laughs: 10^9 strings in 1 KB, put whole in the error about the mode.
    (LAUGHS, "metadata.a5", "is larger than 1048576 bytes (1 MiB) with its YAML aliases expanded"),
    # The same with an int of 4,000 digits, which an error quoting the mode would write out 10**5 times.
    (LAUGHS.replace("['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']", "9" * 4000),
     "metadata.a3", "is larger than 1048576 bytes (1 MiB) with its YAML aliases expanded"),
    # A mapping inside itself, and one that aliases make deeper than it is written.
    (chaos(HELLO, "&s {selector: *s}"), "spec.selector", "holds itself (through a YAML alias to a value around it)"),
    (chaos(HELLO, "{selector: {pids: [1]}}", metadata="{name: x, a0: &a0 " + nested(20) + ", a1: &a1 " +
           nested(10, "*a0") + "}"), "metadata.a1[0][0][0][0][0][0][0][0][0][0]", "is nested more than 32 levels"),
])
def test_yaml_aliases_cannot_make_a_document_endless_or_huge(text, field, accepted):
    assert_refused(text, field, accepted)


def test_a_manifest_file_of_more_than_a_mebibyte_or_a_hundred_documents_is_refused(tmp_path):
    (tmp_path / "big.yaml").write_text(chaos(HELLO, "{selector: {pids: [1]}}") + "#" * (1 << 20))
    with pytest.raises(ChaosSpecError, match=r"manifest big.yaml: is larger than 1048576 bytes \(1 MiB\)"):
        load("big.yaml", tmp_path)
    many = "---\n".join([chaos(HELLO, "{selector: {pids: [1]}}")] * 101)
    with pytest.raises(ChaosSpecError, match="manifest \\(text\\): holds more than 100 documents"):
        load(many)
    assert len(load("---\n".join([chaos(HELLO, "{selector: {pids: [1]}}")] * 100))) == 100


def test_a_manifest_that_is_not_text_or_a_mapping_is_refused(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(chaos(HELLO, "{selector: {pids: [1]}}").encode() + b"# caf\xe9\n")
    with pytest.raises(ChaosSpecError, match="manifest latin1.yaml: is not valid YAML: .*invalid continuation byte"):
        load("latin1.yaml", tmp_path)
    with pytest.raises(ChaosSpecError, match="manifest: must be a file's path, YAML text or a mapping; got int"):
        load(123)  # type: ignore[arg-type]
    with pytest.raises(ChaosSpecError, match="manifest: cannot read '.*': embedded null byte"):
        load("a\x00b")


def test_an_error_quoting_a_huge_value_is_cut_keeping_what_is_accepted():
    with pytest.raises(ChaosSpecError) as info:
        manifest_specs(KUBERNETES, chaos(HELLO, f"{{mode: {'x' * 100_000}, {SELECTED}}}"))
    assert len(str(info.value)) < 2100
    assert info.value.message.startswith("unknown mode 'xxx")
    assert info.value.message.endswith("accepted modes: one, all, fixed, fixed-percent, random-max-percent")
    assert "characters cut" in info.value.message


def test_a_mapping_and_bad_yaml():
    [document] = load({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "HelloWorldChaos", "spec": {}})
    assert document.label == "(HelloWorldChaos #1)"
    with pytest.raises(ChaosSpecError, match="not valid YAML"):
        load("spec: [unclosed\nkind: x\n")
    with pytest.raises(ChaosSpecError, match="cannot read"):
        load("no-such-file.yaml", MANIFESTS)


# -- any value in any field: a spec or a ChaosSpecError, never another exception ------------------------------

LOCAL = LocalBackend(lambda: "unix:///nonexistent")  # checks selectors without a daemon
API = "chaos-mesh.org/v1alpha1"
WEB = {"labelSelectors": {"app": "web"}}
# One valid document per kind and action, every field filled, so that each field is a position to put a value in.
VALID_DOCUMENTS = [
    {"apiVersion": API, "kind": "PodChaos", "metadata": {"name": "kill", "namespace": "shop"},
     "spec": {"action": "pod-kill", "mode": "one", "selector": WEB, "gracePeriod": 0}},
    {"apiVersion": API, "kind": "PodChaos", "metadata": {"name": "container"},
     "spec": {"action": "container-kill", "mode": "fixed", "value": "1", "selector": WEB, "containerNames": ["app"]}},
    {"apiVersion": API, "kind": "StressChaos", "metadata": {"name": "stress"},
     "spec": {"mode": "all", "selector": {"pids": [1]}, "duration": "1m",
              "stressors": {"cpu": {"workers": 1, "load": 50}, "memory": {"workers": 1, "size": "256MB"}}}},
    {"apiVersion": API, "kind": "DNSChaos", "metadata": {"name": "dns"},
     "spec": {"action": "error", "mode": "all", "selector": WEB, "patterns": ["example.com", "db-?.*"]}},
    {"apiVersion": API, "kind": "NetworkChaos", "metadata": {"name": "delay", "namespace": "shop"},
     "spec": {"action": "delay", "mode": "fixed-percent", "value": "50", "selector": WEB, "direction": "both",
              "device": "eth0", "target": {"mode": "all", "selector": {"namespaces": ["db"]}},
              "delay": {"latency": "10ms", "jitter": "1ms", "correlation": "25",
                        "reorder": {"reorder": "10", "correlation": "0", "gap": 1}}}},
    {"apiVersion": API, "kind": "NetworkChaos", "metadata": {"name": "bandwidth"},
     "spec": {"action": "bandwidth", "mode": "all", "selector": {"pods": {"shop": ["web-0"]}},
              "externalTargets": ["10.0.0.0/8", "example.com"],
              "bandwidth": {"rate": "1mbps", "limit": 100, "buffer": 1000, "peakrate": 2000000, "minburst": 100}}},
    {"apiVersion": API, "kind": "NetworkChaos", "metadata": {"name": "loss"},
     "spec": {"action": "loss", "mode": "random-max-percent", "value": 50, "duration": 30,
              "selector": {"expressionSelectors": [{"key": "app", "operator": "In", "values": ["web"]}],
                           "podPhaseSelectors": ["Running"], "nodes": ["node-1"]},
              "loss": {"loss": "25", "correlation": "0"}}},
    {"apiVersion": API, "kind": "HTTPChaos", "metadata": {"name": "http"},
     "spec": {"mode": "all", "selector": WEB, "target": "Response", "port": 8080, "path": "/api/*", "method": "GET",
              "code": 200, "request_headers": {"Host": "web"}, "response_headers": {"Content-Type": "text/plain"},
              "delay": "1s", "replace": {"code": 503, "body": "aGk=", "headers": {"X-A": "b"}},
              "patch": {"headers": [["X-B", "c"]], "body": {"type": "JSON", "value": "{}"}}}},
    {"apiVersion": API, "kind": "NetworkChaos", "metadata": {"name": "partition"},
     "spec": {"action": "partition", "mode": "all", "selector": {"containers": ["web"]}, "direction": "to",
              "externalTargets": ["192.168.0.1"]}},
]
# Words that are fields, values or YAML's special scalars somewhere, so that values come close to valid ones.
WORDS = ["selector", "mode", "value", "duration", "namespaces", "pods", "labelSelectors", "cpu", "memory", "size",
         "workers", "load", "loss", "delay", "latency", "rate", "target", "action", "pod-kill", "partition", "to",
         "both", "error", "all", "one", "fixed", "1s", "500ms", "100%", "25", "256MB", "1mbps", "eth0", "10.0.0.1/32",
         "*", "", "on", "no", ".inf", ".nan", "1e400", "0x1F", "2026-13-01", "9" * 400 + "ms"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(2**63), 2**64]),
                    st.floats(), st.text(max_size=12), st.sampled_from(WORDS), st.binary(max_size=4), st.dates())
KEYS = st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.integers(), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=10)


def field_paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every position in ``value``: each key of each mapping, each item of each list, at any depth."""
    paths = [path] if path else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        paths += field_paths(child, (*path, key))
    return paths


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """A valid document with one to three fields (at any depth) given an arbitrary value, deleted, or given an
    arbitrary sibling."""
    document = copy.deepcopy(draw(st.sampled_from(VALID_DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = field_paths(document)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        container = functools.reduce(lambda node, key: node[key], parents, document)
        change = draw(st.sampled_from(["replace", "delete", "add"]))
        if change == "delete":
            del container[last]
        elif change == "add" and isinstance(container, dict):
            container[draw(KEYS)] = draw(VALUES)
        else:
            container[last] = draw(VALUES)
    return document


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents(), backend=st.sampled_from([KUBERNETES, LOCAL]), as_text=st.booleans())
def test_any_value_in_any_field_gives_a_spec_or_an_error_naming_the_manifest(document, backend, as_text):
    source = yaml.safe_dump(document) + "\n" if as_text else document  # "\n": text, not a file's name
    try:
        built = manifest_specs(backend, source)
    except ChaosSpecError as err:
        assert err.field.startswith("manifest ")
        return
    assert [spec.kind for spec in built]  # an experiment that could be applied and reported
    assert all(spec.describe() for spec in built)


# -- applied through the plugin on real targets (the local backend's selectors) --------------------------

LOCAL_MANIFEST = """\
apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {{name: cut-off}}
spec:
  action: partition
  mode: all
  selector: {{pids: [{target}]}}
  externalTargets: ['{other}/32']
---
apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {{name: slow-peer}}
spec:
  action: delay
  mode: all
  selector: {{pids: [{target}]}}
  target:
    mode: all
    selector: {{pids: [{peer}]}}
  delay: {{latency: 80ms}}
"""


def test_a_marker_manifest_applies_each_document_in_order_and_recovers_them_in_reverse(pytester, network_bed):
    target, peer, other = network_bed.process(), network_bed.process(), network_bed.process()
    udp_echo_server(peer, 7400)
    tcp_listener(other, 7401)
    before = snapshot(target)
    (pytester.path / "chaos").mkdir()
    (pytester.path / "chaos" / "faults.yaml").write_text(LOCAL_MANIFEST.format(target=target.pid, peer=peer.pid,
                                                                                 other=other.ip))
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.chaos(manifest="chaos/faults.yaml")
        def test_app(chaos):
            assert [e.kind for e in chaos.experiments] == ["network-partition", "network-delay"]
            print("IN FORCE", flush=True)
    """)
    result = pytester.runpytest_subprocess("-p", "chaos", "-rA", "-s")
    result.assert_outcomes(passed=1)
    lines = result.stdout.str().splitlines()
    recovered = [line for line in lines if "recovered" in line and "Captured" not in line and "::" not in line]
    assert [line.split()[1] for line in recovered[:2]] == ["network-delay", "network-partition"]
    assert snapshot(target) == before
    assert tcp_connects(target, other.ip, 7401)
    assert udp_probe(target, peer.ip, 7400, count=5).median_rtt_ms < 20


def test_apply_manifest_in_a_test(pytester, network_bed):
    target, peer = network_bed.process(), network_bed.process()
    udp_echo_server(peer, 7402)
    document = LOCAL_MANIFEST.format(target=target.pid, peer=peer.pid, other=peer.ip).split("---\n")[1]
    pytester.makepyfile(test_user=f"""
        MANIFEST = {document!r}

        def test_in_test(chaos):
            with chaos.apply_manifest(MANIFEST) as experiments:
                assert [e.kind for e in experiments] == ["network-delay"]
                assert experiments[0].outcome == "applied"
            assert experiments[0].outcome == "recovered"
    """)
    result = pytester.runpytest_subprocess("-p", "chaos")
    result.assert_outcomes(passed=1)


def test_a_marker_manifest_that_cannot_be_read_is_a_usage_error_at_collection(pytester):
    pytester.makepyfile(test_user="""
        import pytest

        @pytest.mark.chaos(manifest="missing.yaml")
        def test_bad():
            raise AssertionError("must not run")

        @pytest.mark.chaos("helloworld", manifest="missing.yaml", selector={"pids": [1]})
        def test_mixed():
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest_subprocess("-p", "chaos")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_user.py::test_bad: @pytest.mark.chaos manifest: cannot read*missing.yaml*",
                                 "*test_user.py::test_mixed: @pytest.mark.chaos manifest: comes alone*"])


# One manifest per finding of "Harden, round two": each was accepted, dropped a field or raised another exception.
BAD_MANIFESTS = {
    "namespace": (chaos("NetworkChaos", "{action: partition, selector: {pids: [1]}}", metadata="{name: x, namespace: on}"),
                  "metadata.namespace: must be a namespace name*got True, which YAML reads as a boolean: quote it"),
    "wrong_type": (chaos("NetworkChaos", "{action: partition, direction: [to], selector: {pids: [1]}}"),
                   "spec.direction: must be one of to, from, both; got ?'to'?"),  # ?: fnmatch's [ and ]
    "deep": (chaos(HELLO, f"{{selector: {nested(5000)}}}"), "is nested more than 32 levels deep (line 4*"),
    "infinite": (chaos(HELLO, "{duration: .inf, selector: {pids: [1]}}"), "spec.duration: must be from 1ms to 24h*"),
    "huge_memory": (chaos("StressChaos", "{selector: {pids: [1]}, stressors: {memory: {workers: 1, size: '"
                                         + "9" * 400 + "MB'}}}"), "spec.stressors.memory.size: *from 4KiB to 256TiB*"),
}


def test_each_bad_manifest_is_a_usage_error_at_collection_naming_the_test_document_and_field(pytester):
    for name, (text, _) in BAD_MANIFESTS.items():
        (pytester.path / f"{name}.yaml").write_text(text)
    pytester.makepyfile(test_user="import pytest\n" + "".join(f"""
@pytest.mark.chaos(manifest="{name}.yaml")
def test_{name}():
    raise AssertionError("must not run")
""" for name in BAD_MANIFESTS))
    result = pytester.runpytest_subprocess("-p", "chaos")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"*test_user.py::test_{name}: @pytest.mark.chaos manifest {name}.yaml document 1*{expected}"
        for name, (_, expected) in BAD_MANIFESTS.items()])
    assert "must not run" not in result.stdout.str()
