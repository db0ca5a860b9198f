"""An environment with the plugin installed: runs without chaos tests pay nothing for it.

Each run is a pytest subprocess that auto-loads the plugin through its entry point (no ``-p chaos``), as
every pytest run of that environment does.
"""

from __future__ import annotations

import json
import os

import pytest

HEAVY = ("grpc", "google.protobuf", "yaml", "kubernetes")
# Records, as the run ends, whether the plugin was loaded and which heavy modules were imported.
RECORDER = f"""
import json, sys

def pytest_sessionfinish(session):
    heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r}))
    with open("modules.json", "w") as f:
        json.dump({{"chaos_loaded": session.config.pluginmanager.has_plugin("chaos"), "heavy": heavy}}, f)
"""
PLAIN = """
import pytest

def test_one():
    pass

def test_two(tmp_path):
    assert tmp_path.exists()

@pytest.mark.parametrize("n", [1, 2])
def test_three(n):
    pass
"""
MARKED = """
import pytest

@pytest.mark.chaos("helloworld", selector={"pids": [1]})
def test_marked():
    pass
"""
# Refuses pytest_chaos_daemon as an interpreter without the ``local`` extra would: every process of the run
# (pytest and any daemon it starts) imports sitecustomize from the run's directory, first on PYTHONPATH.
NO_DAEMON = """
import sys

class RefuseDaemon:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pytest_chaos_daemon":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, RefuseDaemon())
"""


def recorded(pytester: pytest.Pytester) -> dict[str, object]:
    with open(pytester.path / "modules.json") as f:
        return dict(json.load(f))


def chaos_lines(result: pytest.RunResult) -> list[str]:
    """Output lines naming chaos, but for pytest's list of installed plugins and the run's directory (named
    after the test)."""
    return [line for line in result.outlines + result.errlines
            if "chaos" in line.replace(os.path.basename(os.getcwd()), "") and not line.startswith("plugins:")]


@pytest.fixture
def plain(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(test_plain=PLAIN)
    return pytester


def test_a_plain_suite_imports_no_grpc_and_prints_no_header(plain):
    result = plain.runpytest_subprocess()
    result.assert_outcomes(passed=4)
    assert recorded(plain) == {"chaos_loaded": True, "heavy": []}
    assert chaos_lines(result) == []


@pytest.mark.parametrize("option", ["--setup-plan", "--fixtures-per-test"])
def test_a_plain_suite_has_no_chaos_fixture(plain, option):
    result = plain.runpytest_subprocess(option)
    assert result.ret == pytest.ExitCode.OK
    assert "tmp_path --" in result.stdout.str() or "F tmp_path" in result.stdout.str()  # it did list fixtures
    assert chaos_lines(result) == []
    assert recorded(plain)["heavy"] == []


def test_a_plain_suite_collected_with_the_plugin_imports_no_grpc(plain):
    result = plain.runpytest_subprocess("--collect-only")
    assert result.ret == pytest.ExitCode.OK
    assert recorded(plain) == {"chaos_loaded": True, "heavy": []}
    assert chaos_lines(result) == []


def test_importing_the_package_and_its_public_names_stays_cheap_until_one_is_used(plain):
    plain.makepyfile(test_public="""
        import sys

        def test_names():
            import pytest_chaos
            assert "grpc" not in sys.modules and "pytest_chaos.fixture" not in sys.modules
            from pytest_chaos import ChaosError, Target
            assert ChaosError.__module__ == "pytest_chaos.errors" and Target.__module__ == "pytest_chaos.model"
            assert "grpc" not in sys.modules
            from pytest_chaos import ChaosFixture
            assert ChaosFixture.__module__ == "pytest_chaos.fixture"
    """)
    result = plain.runpytest_subprocess("test_public.py")
    result.assert_outcomes(passed=1)


def test_one_chaos_test_collected_shows_the_header_and_gives_it_alone_the_chaos_fixture(plain):
    plain.makepyfile(test_marked=MARKED)
    result = plain.runpytest_subprocess("--setup-plan")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["collected 5 items", "chaos: seed=* backend=local *"])
    # The marked test sets up the chaos fixture (which applies its marker); the plain ones do not.
    assert [line.strip() for line in chaos_lines(result) if "SETUP" in line] == ["SETUP    F chaos"]
    result.stdout.fnmatch_lines(["*SETUP    F chaos", "*test_marked.py::test_marked (fixtures used: chaos)"])
    assert "grpc" in recorded(plain)["heavy"]  # the marker was checked at collection


def test_a_chaos_option_shows_the_header_in_a_plain_suite(plain):
    result = plain.runpytest_subprocess("--chaos-seed=4242")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["chaos: seed=4242 backend=local *"])
    assert [line for line in result.outlines if line.startswith("chaos: seed=")] == [result.outlines[
        next(i for i, line in enumerate(result.outlines) if line.startswith("chaos: seed="))]]


def test_a_bad_chaos_option_is_a_usage_error_in_a_plain_suite(plain):
    result = plain.runpytest_subprocess("--chaos-daemon=10.0.0.1:31767")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--chaos-daemon=10.0.0.1:31767 is TCP, and TCP means mutual TLS*"])


def test_a_bad_marker_fails_collection_with_the_plugin_auto_loaded(plain):
    plain.makepyfile(test_bad="""
        import pytest

        @pytest.mark.chaos("nosuchkind", selector={"pids": [1]})
        def test_bad():
            raise AssertionError("must not run")
    """)
    result = plain.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_bad.py::test_bad: @pytest.mark.chaos kind: unknown kind 'nosuchkind'*"])
    assert "must not run" not in result.stdout.str()


def test_without_the_daemon_installed_a_local_chaos_test_says_how_to_get_one(pytester):
    pytester.makepyfile(sitecustomize=NO_DAEMON)
    pytester.makepyfile(test_user=f"""
        import pytest

        def test_the_daemon_is_refused_here():
            with pytest.raises(ImportError):
                import pytest_chaos_daemon

        @pytest.mark.chaos("helloworld", selector={{"pids": [{os.getpid()}]}})
        def test_marked():
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ChaosError: chaos experiment helloworld mode=one could not be applied: the local backend runs the chaos "
        "daemon on this machine, and it is not installed (no module pytest_chaos_daemon for *): "
        "pip install 'pytest-chaos[[]local[]]'; or use --chaos-backend=kubernetes, or --chaos-daemon=ADDRESS *",
    ])
    assert "must not run" not in result.stdout.str()
