"""A directory of Chaos Mesh manifests through ``chaos.apply_manifest`` in a dry run: none crashes, and each either
parses or is refused with a message naming the document and the field.

By default the directory is ours (tests/manifests/), written in the shapes
Chaos Mesh's own examples use; ``PYTEST_CHAOS_CHAOS_MESH_EXAMPLES`` names
another, such as the ``examples/`` of a Chaos Mesh checkout, and the test
then prints how many parse and why the others are refused, by kind.

The dry run goes through the plugin as a test would: the fixture reads the
manifest, builds each experiment (the refusals), then selects its targets,
which needs a cluster. There is none here (the kubeconfig does not exist):
a document that got that far parsed, and the selection's error says so.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib

import pytest

from pytest_chaos.backends.kubernetes import KubernetesBackend
from pytest_chaos.errors import ChaosSpecError
from pytest_chaos.manifests import load, manifest_specs

OURS = pathlib.Path(__file__).parent / "manifests"
CORPUS = pathlib.Path(os.environ.get("PYTEST_CHAOS_CHAOS_MESH_EXAMPLES") or OURS)

INNER = """
import json
import os

import pytest

from pytest_chaos.errors import ChaosError, ChaosSpecError

PATHS = json.loads(os.environ["CORPUS_PATHS"])


@pytest.mark.parametrize("path", PATHS)
def test_manifest(chaos, path):
    try:
        with chaos.apply_manifest(path):
            outcome = ("parsed", "")
    except ChaosSpecError as err:
        outcome = ("refused", err.field + ": " + err.message)
    except ChaosError as err:  # selecting the targets: it parsed
        outcome = ("parsed", str(err))
    except pytest.skip.Exception:  # the dry run's skip, after selecting
        outcome = ("parsed", "")
    except BaseException as err:  # noqa: BLE001 - a crash, reported by the outer test
        outcome = ("crashed", repr(err))
    with open(os.environ["CORPUS_RESULTS"], "a") as f:
        f.write(json.dumps([path, *outcome]) + "\\n")
"""


def manifests(directory: pathlib.Path) -> list[str]:
    return sorted(str(p) for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def through_the_fixture(pytester: pytest.Pytester, paths: list[str]) -> dict[str, tuple[str, str]]:
    """Each manifest's outcome in a dry run of the plugin: (parsed|refused|crashed, detail)."""
    results = pytester.path / "results.jsonl"
    pytester.makepyfile(test_corpus=INNER)
    os.environ["CORPUS_PATHS"], os.environ["CORPUS_RESULTS"] = json.dumps(paths), str(results)
    try:
        run = pytester.runpytest_subprocess("-p", "chaos", "--chaos-dry-run", "--chaos-backend=kubernetes",
                                            "--chaos-kubeconfig=/nonexistent", "-q", "-p", "no:cacheprovider")
    finally:
        del os.environ["CORPUS_PATHS"], os.environ["CORPUS_RESULTS"]
    run.assert_outcomes(passed=len(paths))
    return {path: (outcome, detail) for path, outcome, detail in map(json.loads, results.read_text().splitlines())}


def kind_of(path: str) -> str:
    """The document kinds of a manifest, as written, for the report."""
    try:
        return "+".join(sorted({str(d.body.get("kind")) for d in load(path)}))
    except ChaosSpecError:
        return "(unreadable)"


def test_every_manifest_parses_or_is_refused_naming_the_field_and_none_crashes(pytester):
    paths = manifests(CORPUS)
    assert paths, f"no manifest in {CORPUS}"
    outcomes = through_the_fixture(pytester, paths)
    assert set(outcomes) == set(paths)
    crashed = {path: detail for path, (outcome, detail) in outcomes.items() if outcome == "crashed"}
    assert not crashed
    for path, (outcome, detail) in outcomes.items():
        if outcome == "refused":
            # "manifest PATH document N (Kind name): FIELD: message", the field a path in the document.
            where, _, rest = detail.partition("): ")
            assert where.startswith(f"manifest {path} document ") or where.startswith(f"manifest {path}"), detail
            assert rest and rest.split(":", 1)[0].strip(), detail
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reasons: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path, (outcome, detail) in outcomes.items():
        kind = kind_of(path)
        by_kind[kind][outcome] += 1
        if outcome == "refused":
            reasons[kind][detail.partition("): ")[2][:160]] += 1
    parsed = sum(1 for outcome, _ in outcomes.values() if outcome == "parsed")
    print(f"\n{CORPUS}: {len(paths)} manifests, {parsed} parse, {len(paths) - parsed} refused, 0 crashed")
    for kind in sorted(by_kind):
        print(f"  {kind}: {dict(by_kind[kind])}")
        for reason, count in reasons[kind].most_common():
            print(f"      {count} x {reason}")
    if CORPUS == OURS:
        expected_refused = {"schedule.yaml", "workflow.yaml", "stress-shielded.yaml"}
        assert {pathlib.Path(p).name for p, (o, _) in outcomes.items() if o == "refused"} == expected_refused


# -- our corpus, field by field ---------------------------------------------------------------------

KUBERNETES = KubernetesBackend(kubeconfig="/nonexistent")


def test_pod_failure_maps_with_its_required_duration():
    [spec] = manifest_specs(KUBERNETES, "pod-failure.yaml", OURS)
    assert (spec.kind, spec.duration, spec.mode) == ("pod-failure", 30.0, "one")
    assert spec.selector == {"namespaces": ["shop"], "labelSelectors": {"app.kubernetes.io/component": "cart"}}
    without = "apiVersion: chaos-mesh.org/v1alpha1\nkind: PodChaos\nspec: {action: pod-failure, selector: {}}\n"
    with pytest.raises(ChaosSpecError) as raised:
        manifest_specs(KUBERNETES, without)
    assert raised.value.field.endswith("spec.duration") and "required" in raised.value.message


def test_stress_options_and_oom_score_adj_map():
    [spec] = manifest_specs(KUBERNETES, "stress-options.yaml", OURS)
    assert spec.params["stressors"] == {
        "cpu": {"workers": 1, "load": 80, "options": ["--cpu 2", "--cpu-method sqrt", "--timeout 600"]},
        "memory": {"workers": 1, "size": "256MB", "options": ["--vm-method flip", "--oomable"], "oom_score_adj": 500},
    }


@pytest.mark.parametrize("name, field, says", [
    ("stress-shielded.yaml", "spec.stressors.cpu.options[1]", "'--hdd' is not an allowed stress-ng option"),
    ("schedule.yaml", "kind", "@pytest.mark.parametrize"),
    ("workflow.yaml", "kind", "one marker per step"),
])
def test_what_cannot_be_mapped_is_refused_naming_the_field(name, field, says):
    with pytest.raises(ChaosSpecError) as raised:
        manifest_specs(KUBERNETES, name, OURS)
    assert raised.value.field.endswith(f": {field}") and says in raised.value.message, raised.value


def test_an_oom_score_adj_out_of_range_is_refused_under_its_manifest_name():
    text = (OURS / "stress-options.yaml").read_text().replace("oomScoreAdj: 500", "oomScoreAdj: -1001")
    with pytest.raises(ChaosSpecError) as raised:
        manifest_specs(KUBERNETES, text)
    assert raised.value.field.endswith("spec.stressors.memory.oomScoreAdj"), raised.value


def test_a_netem_action_maps_to_network_netem_with_its_sections():
    [spec] = manifest_specs(KUBERNETES, "network-netem.yaml", OURS)
    assert spec.kind == "network-netem" and spec.duration == 10.0
    assert spec.params["delay"] == {"latency_ns": 90_000_000, "jitter_ns": 10_000_000, "correlation": 25.0}
    assert spec.params["loss"] == {"loss": 25.0, "correlation": 25.0}
    assert spec.params["target"]["mode"] == "one"
