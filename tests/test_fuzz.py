"""A bounded, seeded fuzz of every RPC and field against a real daemon.

2,000 requests of every shape: random, malformed and valid
container ids of each runtime, injection ids, leases, sources, garbage bytes
for a message, unknown methods, health and reflection, deadlines from 1 ms.
The daemon must answer each with a proper status (never UNKNOWN), stay up,
and leak no fd or child, nor start threads beyond its pools' sizes. Its RSS before and after is reported.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import string

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pytest_chaos_daemon.api.v1 import chaos_daemon_pb2 as pb
from pytest_chaos_daemon.runtimes.resolver import RUNTIME_POOL_SIZE

from tests.support.targets import wait_for

SEED = 20261126
REQUESTS = 2000
PARALLEL = 16
METHOD = "/pytest_chaos.daemon.v1.ChaosDaemon/ExecHelloWorldChaos"
# Runtime lookup pools (one per runtime prefix) and asyncio's default executor.
POOL_THREADS = RUNTIME_POOL_SIZE * 4 + min(32, (os.cpu_count() or 1) + 4)


def resources(pid: int) -> dict[str, int]:
    children = [c for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task")),
            "children": len(children), "rss_kb": rss_kb}


class Fuzzer:
    def __init__(self, daemon, valid_ids: list[str], rng: random.Random) -> None:
        self.daemon = daemon
        self.valid_ids = valid_ids
        self.rng = rng
        self.raw = daemon.channel.unary_unary(METHOD)  # bytes in, bytes out
        self.unknown = daemon.channel.unary_unary("/pytest_chaos.daemon.v1.ChaosDaemon/NoSuchMethod")
        self.health = health_pb2_grpc.HealthStub(daemon.channel)
        self.reflection = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)

    def text(self, max_len: int) -> str:
        alphabet = self.rng.choice([string.ascii_letters + string.digits + "-_.:", string.printable,
                                    "".join(map(chr, range(0, 0x250)))])
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, max_len)))

    def container_id(self) -> str:
        r = self.rng.random()
        if r < 0.10:
            return self.rng.choice(self.valid_ids)
        if r < 0.25:
            pid = self.rng.choice([0, 1, 2, -5, os.getpid(), self.daemon.process.pid, 2**31, 4194304, 999999,
                                   self.rng.randint(-10, 5000000)])
            return f"pid://{pid}"
        prefix = self.rng.choice(["containerd://", "docker://", "cri-o://", "pid://", "podman://", "", "://", "docker:/"])
        return prefix + self.text(self.rng.choice([8, 64, 300, 700]))

    def request(self) -> pb.ExecHelloWorldRequest:
        lease = duration_pb2.Duration(seconds=self.rng.choice([0, 1, 30, -1, 10**12, -(10**12)]),
                                      nanos=self.rng.choice([0, 5, -1, 10**9, 999_999_999]))
        return pb.ExecHelloWorldRequest(
            container_id=self.container_id(),
            injection=pb.Injection(id=self.text(150), lease=lease),
            source=self.rng.choice([0, 1, 2, 2, 3, -1, 2**31 - 1]),
        )

    def one(self) -> str:
        """Send one request; return the status code's name."""
        timeout = self.rng.choice([0.001, 0.05, 2, 10, 30])
        kind = self.rng.random()
        try:
            if kind < 0.70:
                self.daemon.stub.ExecHelloWorldChaos(self.request(), timeout=timeout)
            elif kind < 0.80:
                self.raw(self.rng.randbytes(self.rng.randint(0, 2000)), timeout=timeout)
            elif kind < 0.85:
                self.unknown(b"", timeout=timeout)
            elif kind < 0.95:
                self.health.Check(health_pb2.HealthCheckRequest(service=self.text(40)), timeout=timeout)
            else:
                request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=self.text(60))
                list(self.reflection.ServerReflectionInfo(iter([request]), timeout=timeout))
        except grpc.RpcError as err:
            return err.code().name
        return "OK"


def run(fuzzer: Fuzzer, count: int) -> collections.Counter[str]:
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return collections.Counter(pool.map(lambda _: fuzzer.one(), range(count)))


def test_fuzz_every_rpc_and_field(daemon, targets, capsys):
    valid = [f"pid://{targets.process('sleep', '4400')}", f"pid://{targets.process('sleep', '4401')}",
             f"containerd://{targets.containerd('sleep', '4402')}"]
    fuzzer = Fuzzer(daemon, valid, random.Random(SEED))
    start = resources(daemon.process.pid)
    # The first half also brings thread pools and channels to their working
    # size; a leak shows as growth during the second half.
    codes = run(fuzzer, REQUESTS // 2)
    settle(daemon)
    half = resources(daemon.process.pid)
    codes += run(fuzzer, REQUESTS - REQUESTS // 2)
    assert daemon.process.poll() is None, daemon.log()[-3000:]
    assert "UNKNOWN" not in codes, codes
    assert codes["OK"] > 0 and codes["INVALID_ARGUMENT"] > 0  # both paths were exercised
    settle(daemon, half["fds"])
    end = resources(daemon.process.pid)
    with capsys.disabled():
        print(f"\nfuzz: {sum(codes.values())} requests (seed {SEED}), codes {dict(sorted(codes.items()))}; "
              f"at start {start}, after half {half}, at end {end}; "
              f"RSS growth {(end['rss_kb'] - start['rss_kb']) / 1024:+.1f} MB")
    assert end["fds"] <= half["fds"]
    # Worker threads start lazily up to their pools' sizes; a leak would pass that.
    assert end["threads"] <= start["threads"] + POOL_THREADS
    assert end["children"] == 0


def settle(daemon, fds: int | None = None) -> None:
    """Wait for requests cut by their deadlines to finish: no child left, fds back to ``fds``."""
    wait_for(lambda: resources(daemon.process.pid)["children"] == 0, "the daemon's children to finish", 15)
    if fds is not None:
        wait_for(lambda: resources(daemon.process.pid)["fds"] <= fds, "the daemon's fds to settle", 15)
