#!/bin/sh
# The VM lane's guest side (scripts/vm-lane.sh boots the VM and runs this in the share): install the
# project from the host-built wheels, then run the lane's tests twice over, the daemon placed both ways,
# and measure netem against the packet queue. Results go to results/ in the share.
#   sh scripts/vm-lane-guest.sh              # the lane
#   sh scripts/vm-lane-guest.sh PYTEST_ARGS  # only these, with pod-placed daemons
set -u
pip install -q --disable-pip-version-check --no-deps --no-index wheels/*.whl || exit 1
mkdir -p results
export CI=true  # no test may skip: a missing runtime is a failure
status=0

run() {  # run NAME PYTEST_ARGS...: one pytest run; its JUnit XML and summary line go to results/
    name=$1
    shift
    started=$(date +%s)
    python -m pytest -p no:cacheprovider -q -rfE --junitxml="results/$name.xml" "$@"
    code=$?
    [ $code -eq 0 ] || status=1
    echo "vm lane: $name: exit $code after $(($(date +%s) - started)) s" >>"results/$name.summary"
}

echo "==> the guest: $(uname -r), cgroup: $(cat /sys/fs/cgroup/cgroup.controllers), containerd $(ctr version 2>/dev/null | awk '/Version/ {print $2; exit}')"
if [ $# -gt 0 ]; then
    PYTEST_CHAOS_TEST_DAEMON_PLACEMENT=pod run custom "$@"
    exit $status
fi

# The proxy kinds (tcp-*, http-*) run here by their mechanism's tests (redirect, proxy in the target's cgroups,
# restart); their precision and flood tests, and the HTTP parser's own, do not depend on the platform and run on
# the host. No Docker Engine and no CRI-O in the VM: their tests stay on the host's lanes; nor the repository's git
# history (only tests/ is copied in): tests that extract an older daemon from it stay there too.
ONLY_HERE="not docker and not cri and not git_history"

echo "==> (b) each test's daemon placed as a DaemonSet pod on a cgroup v2 node (own cgroup, private cgroup namespace)"
PYTEST_CHAOS_TEST_DAEMON_PLACEMENT=pod run pod-placed \
    tests/test_cgroup_namespace.py tests/test_tracking.py \
    "tests/test_daemon.py::test_process_list_of_an_isolated_process" \
    "tests/test_daemon.py::test_containerd_container_resolves_and_lists_its_processes" \
    "tests/test_confinement.py::test_probe_in_a_container_has_the_containers_credentials_cgroups_and_no_new_privs" \
    "tests/test_confinement.py::test_native_listing_matches_ps_on_each_target_type" \
    tests/test_pause.py tests/test_kill_faults.py tests/test_stress.py tests/test_stress_options.py \
    tests/test_network_faults.py tests/test_network_netem.py tests/test_time.py \
    "tests/test_tcp_toxics.py::test_latency_is_added_never_less_than_asked" \
    "tests/test_tcp_toxics.py::test_down_refuses_new_connections_and_resets_open_ones" \
    "tests/test_tcp_toxics.py::test_a_connection_opened_before_the_fault_is_reset" \
    "tests/test_tcp_toxics.py::test_a_restarted_daemon_resumes_the_proxy_and_recovers" \
    "tests/test_tcp_toxics.py::test_a_proxy_that_dies_ends_the_fault_failed_and_undone" \
    "tests/test_http_faults.py::test_http_replace_gives_the_replaced_code_and_body_to_matching_paths_and_methods_only" \
    "tests/test_http_faults.py::test_http_abort_closes_matching_requests_without_a_response" \
    "tests/test_http_faults.py::test_a_daemon_sigkilled_and_restarted_resumes_the_proxy_and_recovers" \
    "tests/test_lifecycle.py::test_runner_sigkilled_mid_test_with_an_external_daemon_is_recovered_when_its_lease_runs_out" \
    "tests/test_lifecycle.py::test_a_fault_whose_lease_still_runs_is_kept_by_the_next_daemon_until_the_lease_ends" \
    -k "$ONLY_HERE and not marker and not collection and not usage_error and not go_program"

echo "==> (a) the plugin's embedded daemon, through the marker"
run embedded \
    "tests/test_plugin.py::test_marker_captures_each_targets_process_list" \
    "tests/test_lifecycle.py::test_runner_sigkilled_mid_test_with_the_embedded_daemon_puts_the_target_back_at_once" \
    tests/test_pause.py tests/test_stress.py tests/test_network_faults.py tests/test_kill_faults.py \
    -k "$ONLY_HERE and (marker or captures or embedded_daemon)"

echo "==> netem against the packet queue: TCP throughput under a 20 ms delay"
python benchmarks/netem_throughput.py --quick >results/netem-throughput.summary 2>&1 || status=1
cat results/netem-throughput.summary
exit $status
